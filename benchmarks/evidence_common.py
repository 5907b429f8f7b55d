"""Shared pieces of the evidence benchmarks (pruning curves, quantization ranking, certificate
tightness) on real data shipped with scikit-learn: the digits CNN of :mod:`pathmetric.app.digits`, and
a small MLP on the breast-cancer table.

Baselines are written here, not in the engine, and computed as their authors do:

- **SynFlow** (Tanaka et al. 2020, ``Pruners/pruners.py`` of ganguli-lab/Synaptic-Flow): put the
  model in eval mode, replace every state-dict entry by its absolute value (BN running statistics
  included), feed one all-ones input, back-propagate ``sum(R(1))`` through the *masked* network and
  score ``|dR/dw * w|``; prune globally and iterate ``rounds`` times on the exponential schedule
  ``density_k = density ** (k / rounds)``. Max-pooling stays max-pooling, ReLUs stay ReLUs.
- **Magnitude**: global ``|w|`` (Han et al. 2015); channel-wise the L1 norm of a channel's
  incoming weights, the same share in every layer (Li et al. 2017). **Random**: uniform scores
  from a seeded generator, global.
- **HAWQ-style Hessian trace** (Dong et al. 2020, HAWQ-V2): ``Omega_l = Tr(H_l) / n_l *
  ||Q(W_l) - W_l||_2^2`` where ``Tr(H_l)`` is the Hutchinson estimate ``mean_v v^T H_l v`` (Rademacher
  ``v``) of the training cross-entropy's Hessian on a data batch.
- **OBD-style**: ``0.5 * sum_i F_ii dw_i^2`` with ``F_ii`` the *empirical Fisher* diagonal
  (mean over samples of the squared per-sample gradient of the cross-entropy), the usual stand-in
  for OBD's Hessian diagonal.

Everything runs on one CPU thread (the CNN is tiny; more threads only contend).
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pathmetric as pm
from pathmetric import calibration
from pathmetric.app import digits

RESULTS = Path(__file__).resolve().parent / "results"


class TabularMLP(nn.Module):
    """``Linear(d, 64)+ReLU -> Linear(64, 64)+ReLU -> Linear(64, 32)+ReLU -> Linear(32, classes)``."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.net(x)


def load_breast_cancer_tensors(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's breast-cancer data (569 x 30, 2 classes) as ``(x_train, y_train, x_test,
    y_test)``, split per class by ``seed``, each feature min-max scaled to [0, 1] on the training
    split (test values may fall slightly outside)."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    x = torch.tensor(raw.data, dtype=torch.float32)
    y = torch.tensor(raw.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for label in y.unique():
        idx = (y == label).nonzero().flatten()
        test[idx[torch.randperm(len(idx), generator=g)][: round(test_fraction * len(idx))]] = True
    lo, hi = x[~test].amin(0), x[~test].amax(0)
    x = (x - lo) / (hi - lo)
    return x[~test], y[~test], x[test], y[test]


DATASETS = {"digits": "digits CNN (pathmetric.app.digits.pretrained, 8x8 images)",
            "breast_cancer": "breast-cancer MLP (30-64-64-32-2, trained here: 60 epochs, seed 0)"}


@functools.lru_cache(maxsize=None)
def _trained_mlp(seed: int) -> dict:
    """State dict of the breast-cancer MLP trained by ``digits.train`` (60 epochs), once per process."""
    data = load_breast_cancer_tensors(seed)
    torch.manual_seed(seed)
    return digits.train(TabularMLP(data[0].shape[1], 2), data, epochs=60, seed=seed).state_dict()


def setup(seed: int = 0, dataset: str = "digits"):
    """``(model, data, example)`` in eval mode: the shipped digits CNN on digits, or a
    :class:`TabularMLP` trained by ``digits.train`` on breast cancer; ``example`` = one input."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    if dataset == "digits":
        data = digits.load_digits_tensors(seed)
        model = digits.pretrained(data)
    elif dataset == "breast_cancer":
        data = load_breast_cancer_tensors(seed)
        model = TabularMLP(data[0].shape[1], 2)
        model.load_state_dict(_trained_mlp(seed))
    else:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    return model.eval(), data, data[0][:1]


# ----------------------------------------------------------------------------- masks and units

def prunable(model, example) -> list[str]:
    """Conv/linear module names on the graph, in order (the engine's ``prunable_layers``)."""
    return list(pm.prunable_layers(model, example))


def channel_units(model, example) -> dict[str, list[str]]:
    """Per prunable layer except the last, the parameters that together make one output channel:
    the layer's weight rows and bias, and a BatchNorm's weight and bias when the BatchNorm is the
    next module in definition order and has as many features. ``{layer: [param names]}``."""
    modules = list(model.named_modules())
    index = {name: i for i, (name, _) in enumerate(modules)}
    units = {}
    for layer in prunable(model, example)[:-1]:
        mod = dict(modules)[layer]
        names = [f"{layer}.weight"] + ([f"{layer}.bias"] if mod.bias is not None else [])
        nxt = modules[index[layer] + 1][1] if index[layer] + 1 < len(modules) else None
        if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == mod.weight.shape[0]:
            bn = modules[index[layer] + 1][0]
            names += [f"{bn}.weight", f"{bn}.bias"]
        units[layer] = names
    return units


def select(scores: dict[str, torch.Tensor], sparsity: float, cap: float = 1.0) -> dict[str, torch.Tensor]:
    """Global selection: keep-masks removing the ``sparsity`` share of all entries with the lowest
    scores (ties by position), never more than ``cap`` of one tensor's entries."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().double().flatten() for n in names])
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    budget = torch.tensor([math.floor(cap * scores[n].numel()) for n in names])
    order = torch.argsort(flat, stable=True)
    rank = torch.empty_like(order)
    for i in range(len(names)):
        mine = owner[order] == i
        rank[mine] = torch.arange(int(mine.sum()))
    eligible = order[rank < budget[owner[order]]]
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[eligible[: int(round(sparsity * flat.numel()))]] = False
    out, start = {}, 0
    for n in names:
        out[n] = keep[start:start + scores[n].numel()].view_as(scores[n])
        start += scores[n].numel()
    return out


def weight_masks(model, example, keep_units: dict[str, torch.Tensor], structured: bool):
    """Keep-masks on parameters: unstructured ``keep_units`` are already per weight
    (``{layer: mask like its weight}``); channel-wise ones (``{layer: bool[out]}``) are expanded
    to every parameter of the unit (:func:`channel_units`)."""
    named = dict(model.named_parameters())
    if not structured:
        return {f"{layer}.weight": m for layer, m in keep_units.items()}
    units = channel_units(model, example)
    return {p: keep_units[layer].view(-1, *[1] * (named[p].dim() - 1)).expand_as(named[p]).clone()
            for layer in keep_units for p in units[layer]}


def masked(model, masks):
    """A deep copy of ``model`` with the masked-out parameter entries set to zero."""
    out = copy.deepcopy(model)
    named = dict(out.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            named[n].mul_(m.to(named[n].dtype))
    return out.eval()


def _unit_scores(model, example, per_weight, structured):
    """Per-weight scores ``{layer: tensor like weight}`` -> units: weights, or the sum over a
    channel's incoming weights (and bias when scored)."""
    if not structured:
        return {l: per_weight[f"{l}.weight"] for l in prunable(model, example)}
    return {l: sum(per_weight[p].flatten(1).sum(1) if per_weight[p].dim() > 1 else per_weight[p]
                   for p in (f"{l}.weight", f"{l}.bias") if p in per_weight)
            for l in channel_units(model, example)}


def magnitude_masks(model, example, sparsity, structured=False, cap=0.95):
    """Magnitude: unstructured, global ``|w|`` (Han et al. 2015); channel-wise, the L1 norm of a
    channel's incoming weights with the same share removed in every layer (Li et al. 2017: filter
    norms are not comparable across layers)."""
    named = dict(model.named_parameters())
    scores = _unit_scores(model, example, {n: p.detach().abs() for n, p in named.items()
                                           if n.endswith(".weight")}, structured)
    if not structured:
        return weight_masks(model, example, select(scores, sparsity, cap), structured)
    keep = {l: select({l: s}, sparsity, cap)[l] for l, s in scores.items()}
    return weight_masks(model, example, keep, structured)


def random_masks(model, example, sparsity, structured=False, seed=0, cap=0.95):
    """Uniformly random global selection (seeded)."""
    g = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())
    shapes = ({l: named[f"{l}.weight"].shape for l in prunable(model, example)} if not structured
              else {l: named[f"{l}.weight"].shape[:1] for l in channel_units(model, example)})
    scores = {l: torch.rand(s, generator=g) for l, s in shapes.items()}
    return weight_masks(model, example, select(scores, sparsity, cap), structured)


def path_masks(model, example, sparsity, structured=False, rounds=1):
    """Path-magnitude: the engine's ``pm.prune`` (global scope, per-layer cap 0.95; ``rounds > 1``
    re-scores the pruned network on SynFlow's exponential schedule)."""
    return pm.prune(model, sparsity, example, structured=structured, rounds=rounds).masks


def synflow_scores(model, example, masks) -> dict[str, torch.Tensor]:
    """One SynFlow scoring pass on the masked network: ``|w * d sum(R_|theta|(1)) / dw|`` for
    every parameter, ``R_|theta|`` = the model in eval mode with all state-dict entries replaced
    by their absolute value, in float64, fed one all-ones input (the authors' ``SynFlow.score``)."""
    net = masked(model, masks).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    net.zero_grad()
    net(torch.ones((1, *example.shape[1:]), dtype=torch.float64)).sum().backward()
    return {n: (p.grad * p).detach().abs() for n, p in net.named_parameters()}


def synflow_masks(model, example, sparsity, structured=False, rounds=100, cap=1.0):
    """Iterative SynFlow: ``rounds`` scorings, each followed by global pruning to density
    ``(1 - sparsity) ** (k / rounds)``; channel-wise, a channel's score is the sum of its incoming
    weights' and bias' scores (the synaptic flow through the unit). No per-layer cap, as the
    authors (``cap=1``)."""
    masks = {}
    for k in range(1, rounds + 1):
        scores = _unit_scores(model, example, synflow_scores(model, example, masks), structured)
        target = 1.0 - (1.0 - sparsity) ** (k / rounds)
        masks = weight_masks(model, example, select(scores, target, cap), structured)
    return masks


CRITERIA = {"path-magnitude": path_masks, "magnitude": magnitude_masks,
            "SynFlow": synflow_masks, "random": random_masks}


# ----------------------------------------------------------------------------- output gaps

output_gap, adversarial_gap = calibration.output_gap, calibration.adversarial_gap


# ----------------------------------------------------------------------------- data-based proxies

def _loss_params(model, layers):
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    params = {l: dict(net.named_modules())[l].weight for l in layers}
    for p in params.values():
        p.requires_grad_(True)
    return net, params


def hessian_traces(model, layers, x, y, samples=32, seed=0) -> dict[str, float]:
    """HAWQ-style Hutchinson estimate of ``Tr(H_l)`` of the mean cross-entropy on ``(x, y)``, for
    the weight block of every layer: ``mean over samples of v^T H_ll v``, ``v`` Rademacher on that
    block only (as HAWQ, one block at a time: each term is >= 0 where the block is PSD).
    Cost: 1 forward and 1 backward (with graph) on the batch, then ``samples * len(layers)``
    Hessian-vector products (one double-backward each)."""
    net, params = _loss_params(model, layers)
    g = torch.Generator().manual_seed(seed)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(params.values()), create_graph=True)
    traces = {}
    for i, (l, p) in enumerate(params.items()):
        total = 0.0
        for _ in range(samples):
            v = torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1
            (hv,) = torch.autograd.grad(grads[i], p, grad_outputs=v, retain_graph=True)
            total += float((v * hv).sum())
        traces[l] = total / samples
    return traces


def fisher_diagonals(model, layers, x, y) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal ``F_ii = mean_n (d loss_n / d w_i)^2`` of the cross-entropy for
    every layer's weight, from per-sample gradients (``torch.func.vmap``): cost one forward and one
    backward over the batch, per sample."""
    net, params = _loss_params(model, layers)
    names = {l: f"{l}.weight" for l in layers}
    fixed = {n: p.detach() for n, p in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def loss(ws, xi, yi):
        state = dict(fixed, **{names[l]: w for l, w in ws.items()}, **buffers)
        return F.cross_entropy(torch.func.functional_call(net, state, (xi[None],)), yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        {l: p.detach() for l, p in params.items()}, x, y)
    return {l: (g ** 2).mean(0) for l, g in per_sample.items()}


# ----------------------------------------------------------------------------- calibrated estimate

# ----------------------------------------------------------------------------- helpers

def quantized(model, layers, bits, scheme="symmetric", granularity="per_channel"):
    """A copy of ``model`` whose ``layers``' weights are RTN-quantized by ``pm.quantize_weights``."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for l in layers:
            w = mods[l].weight
            w.copy_(pm.quantize_weights(w, bits, scheme=scheme, granularity=granularity))
    return out.eval()


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def markdown_table(header, rows) -> str:
    """A GitHub markdown table; floats printed with 4 significant digits."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def command_line(doc: str, tiny_help: str = "seconds, for tests") -> argparse.Namespace:
    """The arguments every evidence benchmark takes: ``--tiny`` (a run of seconds, for the
    tests) and ``--out`` (the results folder)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def save_figure(fig, path, dpi: int) -> None:
    """Lay ``fig`` out, write it to ``path`` and free it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
