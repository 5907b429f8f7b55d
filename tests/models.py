"""Models several test files share (tests/ is on the path: ``from models import ...``)."""
import copy

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def mobilenet_v2(width_mult=1.0):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10,
                                            width_mult=width_mult).eval()
    with torch.no_grad():   # non-trivial running statistics, some negative BatchNorm scales
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.4)
                m.bias.normal_(0, 0.2)
    return model


class QuickstartNet(nn.Module):
    """NNI's pruning quickstart model (LeNet-style, ends in log_softmax)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, 1)
        self.conv2 = nn.Conv2d(6, 16, 5, 1)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def deep_mlp(depth=300, width=8, scale=12.0):
    """A ReLU MLP whose path-metrics overflow float64 (weights scaled x12 at 300 layers)."""
    torch.manual_seed(0)
    layers = [nn.Linear(4, width)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, 3)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


class AtW(nn.Module):
    """A hidden layer written ``x @ self.W`` (W laid out (in, out)), then a linear head."""
    def __init__(self, weight):
        super().__init__()
        self.W = nn.Parameter(weight.clone())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(x @ self.W))


class LinearW(nn.Module):
    """The same network with the hidden layer an ``nn.Linear`` holding ``W.T``."""
    def __init__(self, at_w):
        super().__init__()
        self.W = nn.Linear(4, 6, bias=False)
        self.head = copy.deepcopy(at_w.head)
        with torch.no_grad():
            self.W.weight.copy_(at_w.W.T)

    def forward(self, x):
        return self.head(torch.relu(self.W(x)))


def _at_w_pair():
    torch.manual_seed(0)
    at_w = AtW(torch.randn(4, 6)).double().eval()
    return at_w, LinearW(at_w).double().eval(), torch.randn(2, 4, dtype=torch.float64)


class MatmulNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.proj = nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        return torch.relu(self.fc(x)) @ self.proj


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Linear(4 * 5 * 5, 2)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.relu(self.pw(x)))).flatten(1))


def _with(model, **tensors):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(other, name).copy_(value)
    return other
