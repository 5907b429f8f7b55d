"""Data-free quantization sensitivity and certified mixed precision (docs/design.md, "Quantization").

Changing only layer ``l`` from ``theta`` to ``theta'`` moves the path-lifting by exactly
``sum_{i in l} |theta_i - theta'_i| * dN/d|theta_i|`` (gradient at theta): a path crosses a layer
once, so ``N`` is affine in the layer, and sign changes cost ``|theta_i| + |theta'_i|`` through
theta''. Hence one forward+backward certifies every layer at every bit-width. For several layers
at once, the gradient taken at the coordinate-wise maximum ``U`` of all candidates makes the same
sum an upper bound (``N`` has non-negative coefficients): a knapsack with a certified objective.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .core.ir import Inputs
from .core.scaled import to_float
from .metric import layer_weights, path_metric, round_up
from .quantize import quantizer
from .scores import PathMasses


class Sensitivity(dict):
    """``{(layer, bits): certified path-metric of quantizing that layer alone}``.

    Prints as a table (layers by bit-widths) and plots with :meth:`plot`.
    """

    def layers(self):
        return list(dict.fromkeys(layer for layer, _ in self))

    def bits(self):
        return sorted({b for _, b in self})

    def __str__(self):
        bits = self.bits()
        width = max([5] + [len(layer) for layer in self.layers()])
        lines = [f"{'layer':<{width}}  " + "  ".join(f"{f'{b} bits':>10}" for b in bits)]
        for layer in self.layers():
            lines.append(f"{layer:<{width}}  " + "  ".join(f"{self[layer, b]:>10.3e}" for b in bits))
        return "\n".join(lines)

    def plot(self, path):
        """Certified path-metric of quantizing each layer alone (log scale), one line per
        bit-width, written to ``path`` (matplotlib, Agg backend); returns ``path``."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        layers = self.layers()
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layers)), 4))
        for b in self.bits():
            ax.semilogy(range(len(layers)), [max(self[layer, b], 1e-300) for layer in layers],
                        "o-", ms=3, label=f"{b} bits")
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set_ylabel("certified path-metric")
        ax.set_title("per-layer quantization sensitivity")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


#: ``_moved_mass`` forms its products by blocks of rows of at most this many entries, so a
#: 25088 x 4096 classifier never has a float64 copy of its own size.
BLOCK_ENTRIES = 1 << 22


def _moved_mass(w, q, grad) -> float:
    """``sum_i |w_i - q_i| * g_i`` for a round-to-nearest ``q`` of ``w``.

    ``w - q`` is exact in ``w``'s precision (at least float32): ``q`` is 0 or lies within
    ``[w/2, 2w]`` (Sterbenz). The products are formed in ``grad``'s precision and summed per row
    there, then across rows in float64: relative error at most ``(1 + row length) * eps`` plus
    ``rows * eps64`` (:func:`_moved_mass_error`). Rows go by blocks of ``BLOCK_ENTRIES``.
    """
    shape = (w.shape[0], -1) if w.dim() > 1 else (1, -1)
    w, q, grad = w.reshape(shape), q.reshape(shape), grad.reshape(shape)
    step = max(1, BLOCK_ENTRIES // max(1, w.shape[1]))
    sums = []
    for k in range(0, w.shape[0], step):
        rows = slice(k, k + step)
        if w.dtype in (torch.float32, torch.float64):
            diff = torch.sub(w[rows], q[rows])
        else:
            diff = torch.sub(w[rows].float(), q[rows].float())
        sums.append(diff.abs_().to(grad.dtype).mul_(grad[rows]).sum(dim=1))
    return float(torch.cat(sums).double().sum())


def _moved_mass_error(w, dtype) -> float:
    rows = w.shape[0] if w.dim() > 1 else 1
    return (1 + w.numel() // max(rows, 1)) * torch.finfo(dtype).eps + \
        rows * torch.finfo(torch.float64).eps


def layer_sensitivity(model: torch.nn.Module, example_inputs: Inputs,
                      bits: Sequence[int] = (2, 3, 4, 8), scheme: str = "symmetric",
                      granularity: str = "per_channel", group_size: int | None = None,
                      layers: Sequence[str] | None = None,
                      precision: str = "float64") -> Sensitivity:
    """Certified path-metric of quantizing each layer's weights alone at each bit-width.

    Entry ``(layer, b)`` is ``sum_i |theta_i - q_b(theta_i)| * dN/d|theta_i|`` (exact, docs/design.md),
    rounded up; ``q_b`` is :func:`pathmetric.quantize_weights` with the given scheme. One forward
    and one backward for the whole table.
    """
    weights = layer_weights(model, example_inputs, layers)
    masses = PathMasses(model, example_inputs, precision, gradients_only=True)
    out = Sensitivity()
    for layer, (name, w, dim) in weights.items():
        grad = masses.gradient(name)
        error = 2 * masses.relative_error + _moved_mass_error(w, grad.dtype)
        quantize = quantizer(w, scheme, granularity, group_size, dim)
        for b in bits:
            value = _moved_mass(w, quantize(b), grad)
            out[layer, b] = round_up(to_float(value, masses.exponent), error)
    return out


class _Upper(Mapping):
    """``weight name -> U = max(|w|, |q_b(w)| for every b)``, formed when read (one layer at a
    time: the lifted walk turns it into its float64 leaf and moves on; the last one read is
    kept for the walk's next look-up of the same name)."""

    def __init__(self, weights: dict, bits, options):
        self.weights, self.bits, self.options = weights, bits, options
        self.last = (None, None)

    def __getitem__(self, name):
        if self.last[0] != name:
            w, dim = self.weights[name]
            quantize = quantizer(w, *self.options, dim)
            top = w.abs()
            for b in self.bits:
                top = torch.maximum(top, quantize(b).abs_(), out=top)
            self.last = (name, top)
        return self.last[1]

    def __iter__(self):
        return iter(self.weights)

    def __len__(self):
        return len(self.weights)


@dataclass
class Plan:
    """A mixed-precision assignment and its certificate.

    ``bits``: layer -> bit-width; ``certified_bound``: the exact two-pass path-metric between the
    model and its quantization under the plan (rounded up); ``additive_bound``: the knapsack
    objective that the plan minimises (an upper bound of ``certified_bound``); ``avg_bits``:
    the parameter-weighted average bit-width.
    """
    bits: dict
    certified_bound: float
    additive_bound: float
    avg_bits: float
    candidates: dict = field(default_factory=dict, repr=False)

    def __str__(self):
        width = max(len(layer) for layer in self.bits)
        lines = [f"{layer:<{width}}  {b} bits" for layer, b in self.bits.items()]
        lines.append(f"average {self.avg_bits:.3f} bits, certified path-metric "
                     f"{self.certified_bound:.4e} (additive bound {self.additive_bound:.4e})")
        return "\n".join(lines)


def _knapsack(costs, sizes, budget, resolution=100_000):
    """Multiple-choice knapsack: pick one option per layer, ``sum size <= budget``, minimal cost.

    Each layer's sizes are taken relative to its smallest option, and these extra sizes are
    rounded *up* to a grid of at most ``resolution`` steps (exact when the grid step divides them
    all), so every returned plan fits the true budget, and whenever some plan fits (the smallest
    options, with no extra size, fit the grid) one is returned. Returns the chosen option index
    per layer, or None if no plan fits.
    """
    base = [min(layer_sizes) for layer_sizes in sizes]
    spare = budget - sum(base)
    if spare < 0:
        return None
    extras = [[s - b for s in layer_sizes] for layer_sizes, b in zip(sizes, base)]
    divisor = math.gcd(*[e for layer in extras for e in layer]) or 1
    step = max(1, math.ceil(spare / resolution))
    step = divisor if divisor >= step else step
    cap = spare // step
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    choice = []
    for layer_costs, layer_extras in zip(costs, extras):
        new = np.full(cap + 1, np.inf)
        pick = np.full(cap + 1, -1, dtype=np.int64)
        for k, (c, s) in enumerate(zip(layer_costs, layer_extras)):
            units = -(-s // step)
            if units > cap:
                continue
            shifted = np.full(cap + 1, np.inf)
            shifted[units:] = best[:cap + 1 - units] + c
            better = shifted < new
            new[better], pick[better] = shifted[better], k
        best = new
        choice.append(pick)
    used = int(np.argmin(best))
    picks = []
    for pick, layer_extras in zip(reversed(choice), reversed(extras)):
        k = int(pick[used])
        picks.append(k)
        used -= -(-layer_extras[k] // step)
    return picks[::-1]


def mixed_precision_plan(model: torch.nn.Module, example_inputs: Inputs,
                         bits: Sequence[int] = (2, 4, 8), avg_bits: float = 4.0,
                         size_bits: float | None = None, scheme: str = "symmetric",
                         granularity: str = "per_channel", group_size: int | None = None,
                         layers: Sequence[str] | None = None, precision: str = "float64") -> Plan:
    """Per-layer bit-widths minimising the certified additive bound under a size budget.

    Budget: ``sum_l n_l * b_l <= avg_bits * sum_l n_l`` (or ``<= size_bits``), ``n_l`` the
    layer's weight count. Cost of ``b`` on layer ``l``: ``sum_i |theta_i - q_b(theta_i)| *
    dN/d|theta_i|`` at ``U = max(|theta|, |q_b(theta)| over all b)`` (an additive upper bound).
    The chosen plan is then re-certified exactly by two passes; where a uniform plan at
    ``avg_bits`` fits the budget and certifies lower, it is returned instead (so a plan is never
    worse than uniform quantization at the same size).
    """
    weights = layer_weights(model, example_inputs, layers)
    bits = sorted(set(int(b) for b in bits))

    def quantize(layer, b):
        _, w, dim = weights[layer]
        return quantizer(w, scheme, granularity, group_size, dim)(b)

    upper = _Upper({name: (w, dim) for name, w, dim in weights.values()}, bits,
                   (scheme, granularity, group_size))
    masses = PathMasses(model, example_inputs, precision, overrides=upper,
                        gradients_only=True)
    del upper
    names = list(weights)
    costs = []
    for l in names:
        name, w, dim = weights[l]
        quantize_layer = quantizer(w, scheme, granularity, group_size, dim)
        costs.append([_moved_mass(w, quantize_layer(b), masses.gradient(name)) for b in bits])
    exponent = masses.exponent
    del masses   # the certificates below run the pair pass, which needs none of it
    counts = [weights[l][1].numel() for l in names]
    sizes = [[n * b for b in bits] for n in counts]
    budget = int(size_bits if size_bits is not None else math.floor(avg_bits * sum(counts)))
    picks = _knapsack(costs, sizes, budget)
    if picks is None:
        raise ValueError(f"no assignment from bits {bits} fits the budget of {budget} bits "
                         f"({budget / sum(counts):.2f} bits per weight)")
    candidates = {"knapsack": {l: bits[k] for l, k in zip(names, picks)}}
    if size_bits is None and int(avg_bits) == avg_bits and int(avg_bits) in bits:
        candidates["uniform"] = {l: int(avg_bits) for l in names}
    best: Plan | None = None
    for plan in candidates.values():   # one quantized copy of the weights at a time
        certified = path_metric(model, {weights[l][0]: quantize(l, b) for l, b in plan.items()},
                                example_inputs, precision)
        additive = to_float(sum(costs[names.index(l)][bits.index(b)] for l, b in plan.items()),
                            exponent)
        if best is None or certified < best.certified_bound:
            average = sum(n * plan[l] for l, n in zip(names, counts)) / sum(counts)
            best = Plan(plan, certified, additive, average)
    assert best is not None  # candidates holds the knapsack's plan at least
    best.candidates = candidates
    return best
