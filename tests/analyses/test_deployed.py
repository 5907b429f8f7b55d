"""Deployed integer models (issue 22): exported programs, quantization points, the activation
term and the certificate of a model whose activations are quantized."""
import math

import pytest
import torch
import torchvision
from bruteforce import Dag, _module, build
from torch import nn

import pathmetric as pm

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_exported_resnet18_gives_the_eager_numbers(resnet):
    exported = torch.export.export(resnet, (X,)).module()
    report = pm.check_support(exported, X)
    assert report.ok, str(report)
    assert report.ops["aten.conv2d.default"] == 20 and report.ops["aten.batch_norm.default"] == 20
    assert pm.path_norm(exported, X) == pm.path_norm(resnet, X)
    assert pm.log_path_norm(exported, X, q=2.0) == pm.log_path_norm(resnet, X, q=2.0)
    scores, eager = pm.weight_scores(exported, X), pm.weight_scores(resnet, X)
    assert scores.keys() == eager.keys()
    assert all(torch.equal(scores[k], eager[k]) for k in eager)


# ---------------------------------------------------------------- the activation term

class WithPoints(nn.Module):
    """``seq`` with a fake-quantization point (per tensor, scale ``scales[i]``, a grid too wide
    to saturate) before layer ``i`` (0: the model input)."""

    def __init__(self, seq, scales):
        super().__init__()
        self.seq, self.scales = seq, scales

    def forward(self, x):
        for i, layer in enumerate(self.seq):
            if i in self.scales:
                x = torch.fake_quantize_per_tensor_affine(x, self.scales[i], 0, -2**31, 2**31 - 1)
            x = layer(x)
        return x


def _enumerated_downstream_mass(dag, v) -> float:
    """``sum over paths p from v to an output of prod |c_e|``, path by path."""
    out_edges = [[] for _ in dag.edges]
    for w, incoming in enumerate(dag.edges):
        for u, c in incoming:
            out_edges[u].append((w, c))
    outputs, masses = set(dag.outputs), []

    def walk(u, value):
        if u in outputs:
            masses.append(value)
        for w, c in out_edges[u]:
            walk(w, value * abs(c))
    walk(v, 1.0)
    return math.fsum(masses)


SPECS = [
    [("conv", 2, 3, 1, 1, 1, 1, True), ("relu",), ("maxpool", 2, 2, 0, 1, False),
     ("conv", 2, 1, 1, 0, 1, 1, True)],
    [("conv", 2, 3, 1, 1, 1, 1, False), ("bn",), ("relu",),
     ("res", [("conv", 2, 3, 1, 1, 1, 1, True), ("relu",)]), ("avgpool", 2, 2, 0, False, True)],
]


@pytest.mark.parametrize("specs", SPECS)
def test_activation_term_equals_enumerated_downstream_masses(specs):
    channels, length = 2, 6
    seq = build(specs, channels, length, 2, torch.Generator().manual_seed(1))
    scales = {i: 0.01 * (i + 1) for i in range(len(seq))}
    deployed = WithPoints(seq, scales)
    x = torch.randn(3, channels, length, dtype=torch.float64)
    report = pm.deployment_report(seq, deployed, x)
    dag = Dag()
    ids = torch.tensor([dag.neuron([]) for _ in range(channels * length)]).reshape(channels, length)
    dag.inputs, shape, boundary = ids.reshape(-1).tolist(), (channels, length), []
    for layer in seq:
        boundary.append(ids)
        ids, shape = _module(dag, layer, ids, shape)
    dag.outputs = ids.reshape(-1).tolist()
    expected = {i: scales[i] / 2 * math.fsum(_enumerated_downstream_mass(dag, int(v))
                                              for v in boundary[i].reshape(-1))
                for i in scales}
    assert report.weight_term == 0.0 and report.saturated_count == 0
    got = list(report.activation_terms.values())
    assert len(got) == len(expected)
    for value, want in zip(got, expected.values()):
        assert want <= value <= want * (1 + 1e-9)
    masses = pm.downstream_masses(deployed, x)
    first = next(iter(masses.values()))
    assert first.shape == (channels, length)
    assert torch.allclose(first.reshape(-1), torch.tensor(
        [_enumerated_downstream_mass(dag, int(v)) for v in boundary[0].reshape(-1)],
        dtype=torch.float64), rtol=1e-9)
    assert torch.all(report.bound >= report.activation_term)


class SmallNet(nn.Module):
    """conv-BN-ReLU, a residual conv-ReLU, global average pooling and a linear head; with
    ``points``, 8-bit fake-quantization of the input (signed, range about [-2.6, 2.5]) and of
    the ReLU outputs (unsigned): weights as they are, activations quantized."""

    def __init__(self, points=False):
        super().__init__()
        self.points = points
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def q(self, x, scale, low):
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, low, low + 255) if self.points \
            else x

    def forward(self, x):
        y = self.q(torch.relu(self.b1(self.c1(self.q(x, 0.02, -128)))), 0.01, 0)
        y = self.q(torch.relu(self.c2(y)), 0.01, 0) + y
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def small_pair():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.b1.running_mean.uniform_(-0.2, 0.2)
        model.b1.running_var.uniform_(0.5, 2.0)
    deployed = SmallNet(points=True).eval()
    deployed.load_state_dict(model.state_dict())
    return model, deployed


def test_activations_only_quantized_model_gets_a_positive_bound_that_holds(small_pair):
    model, deployed = small_pair
    x = 0.8 * torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    report = pm.deployment_report(model, deployed, x)
    assert report.weight_term == 0.0 and report.activation_term > 0.0
    assert report.activation_share == 1.0 and len(report.activation_terms) == 3
    assert "exact" in report.arithmetic
    bound = pm.output_bound(model, deployed, x)
    assert torch.equal(bound, report.bound)
    with torch.no_grad():
        gap = (model(x) - deployed(x)).abs().sum(dim=1).double()
    # samples beyond the input grid's range [-2.57, 2.55] saturate: not certified, and counted
    outside = (x.flatten(1).amax(1) > 2.55) | (x.flatten(1).amin(1) < -2.57)
    assert torch.equal(report.saturated, outside) and 0 < report.saturated_count < len(x)
    assert torch.isinf(bound[outside]).all() and torch.isfinite(bound[~outside]).all()
    assert (gap[~outside] <= bound[~outside]).all()
    assert report.saturated_points["0:input"] == report.saturated_count


def test_gradient_ascent_on_the_gap_stays_below_the_bound(small_pair):
    model, deployed = small_pair
    x = 0.5 * torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    gap, worst = pm.adversarial_gap(model, deployed, x, radius=1.0, starts=8, steps=30)
    bound = pm.output_bound(model, deployed, worst.unsqueeze(0).float())
    assert torch.isfinite(bound).all() and gap <= float(bound[0])
