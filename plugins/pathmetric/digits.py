"""scikit-learn's digits as tensors, a small ReLU CNN for them, and train / fine-tune / eval loops.

Used by ``pathmetric demo``, the tests and the benchmarks. Real data, shipped with scikit-learn:
1797 grey-scale 8x8 images of handwritten digits (0..16 intensities, scaled here to [0, 1]).
Everything is deterministic given ``seed`` and runs in seconds on a CPU.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def load_digits_tensors(seed: int = 0, test_fraction: float = 0.25):
    """``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)`` in [0, 1], labels ``int64``.

    The split is stratified per class and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for label in y.unique():
        idx = (y == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test[idx[: round(test_fraction * len(idx))]] = True
    return x[~test], y[~test], x[test], y[test]


class DigitsCNN(nn.Module):
    """conv3x3(1->16)+BN+ReLU+maxpool2 -> conv3x3(16->32)+BN+ReLU+maxpool2 -> linear(128->64)+ReLU
    -> linear(64->10). Input ``(N, 1, 8, 8)``; about 15k parameters."""

    def __init__(self, width: int = 16, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width * 2 * 2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _epochs(model, data, epochs, seed, lr, masks=None):
    x_train, y_train = data[0], data[1]
    named = dict(model.named_parameters())
    keep = {name: mask.to(named[name].dtype) for name, mask in (masks or {}).items()}
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
            with torch.no_grad():
                for name, mask in keep.items():
                    named[name].mul_(mask)
    model.eval()
    return model


def train(model: nn.Module, data, epochs: int = 30, seed: int = 0, lr: float = 3e-3) -> nn.Module:
    """Train ``model`` in place with Adam (batch 64, cross-entropy) on ``data[:2]``; eval mode after."""
    torch.manual_seed(seed)
    return _epochs(model, data, epochs, seed, lr)


def finetune(model: nn.Module, data, masks: dict, epochs: int = 3, seed: int = 0,
             lr: float = 1e-3) -> nn.Module:
    """Fine-tune in place, keeping pruned weights at zero.

    ``masks``: ``{parameter name: bool keep-mask}`` (as in ``pm.prune(...).masks``); masked
    entries are zeroed before training and after every optimizer step.
    """
    named = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(named))
    if unknown:
        raise KeyError(f"masks name parameters the model does not have: {unknown}")
    with torch.no_grad():
        for name, mask in masks.items():
            named[name].mul_(mask.to(named[name].dtype))
    return _epochs(model, data, epochs, seed, lr, masks)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def magnitude_masks(model: nn.Module, sparsity: float, names) -> dict:
    """Global magnitude pruning: keep-masks removing the ``sparsity`` share of smallest ``|w|``
    among the weights ``names`` (ties broken by position), as ``{name: bool mask}``."""
    named = dict(model.named_parameters())
    flat = torch.cat([named[n].detach().abs().flatten() for n in names])
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    masks, start = {}, 0
    for n in names:
        size = named[n].numel()
        masks[n] = keep[start:start + size].view_as(named[n])
        start += size
    return masks


CHECKPOINT = "digits_cnn.pt"


def pretrained(data=None, train_if_missing: bool = True) -> DigitsCNN:
    """The :class:`DigitsCNN` shipped in ``pathmetric/data`` (trained by :func:`train` with
    ``epochs=30, seed=0`` on ``load_digits_tensors(0)``), in eval mode; trained anew if missing."""
    from importlib import resources

    model = DigitsCNN()
    path = resources.files("pathmetric") / "data" / CHECKPOINT
    if path.is_file():
        with resources.as_file(path) as file:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        return model.eval()
    if not train_if_missing:
        raise FileNotFoundError(f"no shipped checkpoint at {path}")
    return train(model, data if data is not None else load_digits_tensors(0), epochs=30, seed=0)
