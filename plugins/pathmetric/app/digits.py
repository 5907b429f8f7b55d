"""scikit-learn's digits as tensors, a small ReLU CNN for them, and train / fine-tune / eval loops.

Used by ``pathmetric demo``, the tests and the benchmarks. Real data, shipped with scikit-learn:
1797 grey-scale 8x8 images of handwritten digits (0..16 intensities, scaled here to [0, 1]).
Everything is deterministic given ``seed`` and runs in seconds on a CPU.
"""
from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 64 8x8 images: extra threads only cost synchronisation
    try:
        return _run_epochs(model, data, epochs, seed, lr, masks)
    finally:
        torch.set_num_threads(threads)


def _run_epochs(model, data, epochs, seed, lr, masks):
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


M = TypeVar("M", bound=nn.Module)


def train(model: M, data, epochs: int = 30, seed: int = 0, lr: float = 3e-3) -> M:
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
    """The :class:`DigitsCNN` shipped in ``pathmetric/app/data`` (trained by :func:`train` with
    ``epochs=30, seed=0`` on ``load_digits_tensors(0)``), in eval mode; trained anew if missing."""
    from importlib import resources

    model = DigitsCNN()
    path = resources.files("pathmetric.app") / "data" / CHECKPOINT
    if path.is_file():
        with resources.as_file(path) as file:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        return model.eval()
    if not train_if_missing:
        raise FileNotFoundError(f"no shipped checkpoint at {path}")
    return train(model, data if data is not None else load_digits_tensors(0), epochs=30, seed=0)


def _masked(model: nn.Module, masks: dict) -> nn.Module:
    import copy

    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            if name in masks:
                p.mul_(masks[name].to(p.dtype))
    return pruned.eval()


@torch.no_grad()
def max_output_change(model: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    """``max over samples of ||R(x) - R'(x)||_1`` (both models in eval mode)."""
    return float((model.eval()(x) - other.eval()(x)).abs().sum(1).max())


def run_demo(sparsities=(0.5, 0.7, 0.8, 0.9), epochs: int = 2, seed: int = 0, plot=None,
             quiet: bool = False, avg_bits: float = 4.0) -> dict:
    """Magnitude vs path-magnitude pruning of a randomly rescaled digits CNN (arXiv 2405.15006).

    1. Load the shipped :class:`DigitsCNN` (or train it); ``pm.random_rescale`` it (neuron-wise
       factors ``2^k``, ``|k| <= 3``: the function is unchanged, checked on the test set).
    2. For each sparsity, on the original and on the rescaled network, global unstructured
       magnitude pruning (:func:`magnitude_masks`) and path-magnitude pruning (``pm.prune``) of
       the conv/linear weights; accuracy right after pruning, then after ``epochs`` of fine-tuning.
       Pruning commutes with rescaling (a pruned rescaled network is the rescaled pruned one),
       so the fine-tune starts from the pruned network written in the original parametrisation:
       the comparison isolates the choice of mask (gradient descent itself is not
       rescaling-invariant).
    3. Certificates: ``pm.prune``'s certified bound and a ``pm.mixed_precision_plan`` at
       ``avg_bits``, each against the measured ``max ||R(x) - R'(x)||_1`` on the test set
       (inputs lie in [0, 1], so the bound is the path-metric itself).

    Prints the tables unless ``quiet``; writes the figure to ``plot`` if given; returns all
    numbers as a dict.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # everything here is tiny: extra threads only cost synchronisation
    try:
        return _demo(sparsities, epochs, seed, plot, quiet, avg_bits)
    finally:
        torch.set_num_threads(threads)


def _demo(sparsities, epochs, seed, plot, quiet, avg_bits) -> dict:
    from tqdm import tqdm

    import pathmetric as pm

    say = (lambda *a: None) if quiet else print
    data = load_digits_tensors(0)
    x_test, y_test = data[2], data[3]
    example = torch.zeros(1, 1, 8, 8)
    model = pretrained(data)
    base = accuracy(model, x_test, y_test)
    support = pm.check_support(model, example)
    rescaled = pm.random_rescale(model, example, seed=seed)
    with torch.no_grad():
        rescale_change = float((model(x_test) - rescaled(x_test)).abs().max())
    ratios = [float(b.detach().abs().max() / a.detach().abs().max()) for a, b in
              zip(model.parameters(), rescaled.parameters()) if a.abs().max() > 0]
    names = [f"{layer}.weight" for layer in pm.prunable_layers(model, example)]
    say(f"digits CNN: test accuracy {base:.4f} ({len(y_test)} test images); randomly rescaled copy: "
        f"max |output change| {rescale_change:.2e}, per-tensor max |w| ratio in "
        f"[{min(ratios):.3g}, {max(ratios):.3g}]")
    methods = {"magnitude": lambda net, s: magnitude_masks(net, s, names),
               "path-magnitude": lambda net, s: pm.prune(net, s, example).masks}
    rows, points = [], []
    runs = [(s, m, n) for s in sparsities for m in methods for n in ("original", "rescaled")]
    for sparsity, method, which in tqdm(runs, desc="demo", disable=True if quiet else None,
                                        leave=False):
        net = model if which == "original" else rescaled
        masks = methods[method](net, sparsity)
        pruned = _masked(net, masks)
        row = {"sparsity": sparsity, "method": method, "network": which,
               "pruned_accuracy": accuracy(pruned, x_test, y_test),
               "emptied_layers": sum(not bool(m.any()) for m in masks.values())}
        if method == "path-magnitude":
            row["certified_bound"] = pm.path_metric(net, pruned, example)
            row["measured_change"] = max_output_change(net, pruned, x_test)
            if which == "original":
                points.append((f"prune {sparsity:g}", row["certified_bound"], row["measured_change"]))
        tuned = finetune(_masked(model, masks), data, masks, epochs=epochs, seed=0)
        row["accuracy"] = accuracy(tuned, x_test, y_test)
        row["masks_equal_original"] = None
        rows.append((row, masks))
    table = [r for r, _ in rows]
    for (row, masks), (other, other_masks) in zip(rows[1::2], rows[0::2]):
        same = all(torch.equal(masks[n], other_masks[n]) for n in names)
        row["masks_equal_original"] = other["masks_equal_original"] = same

    plan = pm.mixed_precision_plan(model, example, bits=(2, 4, 8), avg_bits=avg_bits)
    modules = dict(model.named_modules())
    quantized = _masked(model, {})
    with torch.no_grad():
        for layer, b in plan.bits.items():
            dict(quantized.named_modules())[layer].weight.copy_(
                pm.quantize_weights(modules[layer].weight.detach(), b))
    quant = {"bits": plan.bits, "avg_bits": plan.avg_bits, "certified_bound": plan.certified_bound,
             "measured_change": max_output_change(model, quantized, x_test),
             "accuracy": accuracy(quantized, x_test, y_test)}
    points.append((f"{avg_bits:g}-bit plan", quant["certified_bound"], quant["measured_change"]))

    curves = {f"{m} ({n})": [r["accuracy"] for r in table if r["method"] == m and r["network"] == n]
              for m in methods for n in ("original", "rescaled")}
    say("")
    say("test accuracy after pruning -> after %d fine-tuning epoch(s)" % epochs)
    header = ["sparsity"] + list(curves)
    lines = [[f"{s:g}"] + [f"{r['pruned_accuracy']:.3f} -> {r['accuracy']:.3f}"
                           for r in table if r["sparsity"] == s] for s in sparsities]
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    say("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for line in lines:
        say("  ".join(c.rjust(w) for c, w in zip(line, widths)))
    say("path-magnitude masks identical with and without rescaling: "
        f"{all(r['masks_equal_original'] for r in table if r['method'] == 'path-magnitude')}; "
        "magnitude masks identical: "
        f"{all(r['masks_equal_original'] for r in table if r['method'] == 'magnitude')}")
    say("")
    say("certified vs measured max ||R(x) - R'(x)||_1 on the test set")
    for label, certificate, measured in points:
        say(f"  {label:>14}: certificate {certificate:.4e}  measured {measured:.4e}")
    say(f"mixed-precision plan (bits 2/4/8, budget {avg_bits:g} bits/weight): "
        + ", ".join(f"{l}={b}" for l, b in plan.bits.items())
        + f"; average {plan.avg_bits:.3f} bits; test accuracy {quant['accuracy']:.4f}")
    if plot:
        from .plots import demo_plot
        demo_plot(list(sparsities), curves, points, plot, chance=0.1)
        say(f"figure written to {plot}")
    return {"base_accuracy": base, "rescale_max_output_change": rescale_change,
            "rows": table, "quantization": quant, "plot": plot,
            "head": support.head, "notes": support.notes}
