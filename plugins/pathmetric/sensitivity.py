"""Data-free quantization sensitivity and certified mixed precision (docs/design.md, "Quantization").

Changing only layer ``l`` from ``theta`` to ``theta'`` moves the path-lifting by exactly
``sum_{i in l} |theta_i - theta'_i| * dN/d|theta_i|`` (gradient at theta): a path crosses a layer
once, so ``N`` is affine in the layer, and sign changes cost ``|theta_i| + |theta'_i|`` through
theta''. Hence one forward+backward certifies every layer at every bit-width. For several layers
at once, the gradient taken at the coordinate-wise maximum ``U`` of all candidates makes the same
sum an upper bound (``N`` has non-negative coefficients): a knapsack with a certified objective.

Activation bit-widths (``act_bits``) add quantization points at the input of conv/linear modules,
on per-tensor grids calibrated on the batch ``example_inputs`` (:func:`pathmetric.quantize.
activation_grid`). A point costs ``sum_v (s_v / 2) G(v)``, ``G`` the downstream path mass
(docs/deployed.md), and a W/A plan is certified as a whole by ``pm.deployment_report`` on the
fake-quantized model it produces: ``max(||x||_inf, 1) * d(theta, theta') + sum_t sum_v (s_v / 2)
G_theta'(v)`` for every ``x`` on which no point saturates.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .core.capture import as_tuple
from .core.ir import Inputs
from .core.scaled import to_float
from .deployed import DeploymentReport, deployment_report, has_quantization_points
from .metric import layer_weights, path_metric, round_up, sup_norms
from .quantize import activation_grid, fake_quantized, layer_input_ranges, quantizer
from .scores import PathMasses


class Sensitivity(dict):
    """``{(layer, bits): certified path-metric of quantizing that layer alone}``.

    ``activations[layer, bits]`` (when asked for with ``act_bits``) is the certified activation
    term ``sum_v (s_v / 2) G(v)`` of quantizing the input of ``layer`` alone at ``bits``; the
    bound of a layer at ``WbAa`` alone is ``max(||x||_inf, 1) * self[layer, b] +
    activations[layer, a]`` on every ``x`` that does not saturate its point. Prints as tables
    (layers by bit-widths) and plots with :meth:`plot`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.activations: dict = {}

    def layers(self):
        return list(dict.fromkeys(layer for layer, _ in self))

    def bits(self):
        return sorted({b for _, b in self})

    def __str__(self):
        text = _table(self, "layer")
        if self.activations:
            text += "\n" + _table(self.activations, "layer input (activation term)")
        return text

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


def _table(entries: dict, title: str) -> str:
    layers = list(dict.fromkeys(layer for layer, _ in entries))
    bits = sorted({b for _, b in entries})
    width = max([len(title)] + [len(layer) for layer in layers])
    lines = [f"{title:<{width}}  " + "  ".join(f"{f'{b} bits':>10}" for b in bits)]
    for layer in layers:
        lines.append(f"{layer:<{width}}  " + "  ".join(
            f"{entries[layer, b]:>10.3e}" if (layer, b) in entries else f"{'-':>10}"
            for b in bits))
    return "\n".join(lines)


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
                      precision: str = "float64", act_bits: Sequence[int] = (),
                      act_ranges: Mapping[str, tuple] | None = None) -> Sensitivity:
    """Certified path-metric of quantizing each layer's weights alone at each bit-width, and
    with ``act_bits`` the activation term of quantizing each layer's input alone.

    Entry ``(layer, b)`` is ``sum_i |theta_i - q_b(theta_i)| * dN/d|theta_i|`` (exact, docs/design.md),
    rounded up; ``q_b`` is :func:`pathmetric.quantize_weights` with the given scheme. One forward
    and one backward for the whole table.

    ``act_bits`` (activation bit-widths, e.g. ``(4, 8)``): ``example_inputs`` is then the
    calibration batch (its values matter). The activation point of a layer is the input of its
    conv/linear module, on the unsigned per-tensor grid that ``MinMaxObserver`` calibrates on that
    batch (:func:`pathmetric.quantize.activation_grid`); ``result.activations[layer, a]`` is its
    term ``sum_v (s_v / 2) G(v)`` in the float weights, rounded up: the activation term of
    ``pm.deployment_report`` on the model with that point alone fake-quantized (one report per
    bit-width gives every layer's, as a point's term does not depend on the others').
    ``act_ranges={layer: (min, max)}`` gives the ranges instead (an observer's ``min_val`` /
    ``max_val`` of a prepared model, say), for every layer.
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
    del masses
    ranges = _act_ranges(model, example_inputs, list(weights), act_ranges) if act_bits else {}
    for a in sorted(set(int(a) for a in act_bits)):
        grids = {layer: activation_grid(low, high, a) for layer, (low, high) in ranges.items()}
        report = deployment_report(model, fake_quantized(model, {}, grids), example_inputs)
        for layer, term in _layer_terms(grids, report).items():
            out.activations[layer, a] = term
    return out


def _layer_terms(grids: dict, report: DeploymentReport) -> dict:
    """``{layer: activation term}`` of a fake-quantized model whose only points are ``grids``
    (layer inputs, in the order the layers run, which is the order of the report's points)."""
    terms = list(report.activation_terms.values())
    if len(terms) != len(grids):
        raise RuntimeError(f"the fake-quantized model has {len(terms)} quantization points for "
                           f"{len(grids)} activation points")
    return dict(zip(grids, terms))


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

    ``bits``: layer -> weight bit-width; ``certified_bound``: the exact two-pass path-metric
    ``d(theta, theta')`` between the model and its weights quantized under the plan (rounded up);
    ``additive_bound``: the knapsack objective that the plan minimises (an upper bound of
    ``certified_bound``); ``avg_bits``: the parameter-weighted average weight bit-width.

    With activation bits: ``act_bits`` (layer -> bits of its input point), ``act_grids`` (layer
    -> :class:`pathmetric.quantize.ActivationGrid` calibrated on the batch), ``activation_bound``
    (``sum_t sum_v (s_v / 2) G_theta'(v)``, rounded up; ``activation_terms`` per layer) and
    ``report``, ``pm.deployment_report`` of the plan's model (:meth:`deployed`) on the calibration
    batch. The plan certifies ``||R(x) - Rq(x)||_1 <= max(||x||_inf, 1) * certified_bound +
    activation_bound`` (:meth:`bound`) on every ``x`` on which no point saturates; a sample that
    saturates a point is not certified (``report.saturated``, ``saturated_count``; for other
    inputs, ``pm.deployment_report(model, plan.deployed(model, x), x)`` says which).
    ``weight_options``: the weight quantizer's scheme, granularity and group size.
    """
    bits: dict
    certified_bound: float
    additive_bound: float
    avg_bits: float
    candidates: dict = field(default_factory=dict, repr=False)
    act_bits: dict = field(default_factory=dict)
    act_grids: dict = field(default_factory=dict, repr=False)
    activation_bound: float = 0.0
    activation_terms: dict = field(default_factory=dict, repr=False)
    report: DeploymentReport | None = field(default=None, repr=False)
    weight_options: dict = field(default_factory=lambda: {
        "scheme": "symmetric", "granularity": "per_channel", "group_size": None}, repr=False)

    @property
    def saturated_count(self) -> int:
        """Calibration samples on which some activation point saturates (not certified)."""
        return 0 if self.report is None else self.report.saturated_count

    def bound(self, sup_norm: float) -> float:
        """``max(sup_norm, 1) * certified_bound + activation_bound``, rounded up: the certified
        ``||R(x) - Rq(x)||_1`` of an input with ``||x||_inf = sup_norm`` that saturates no
        point."""
        weight = math.nextafter(max(float(sup_norm), 1.0) * self.certified_bound, math.inf)
        return math.nextafter(weight + self.activation_bound, math.inf)

    def deployed(self, model: torch.nn.Module, example_inputs: Inputs) -> torch.nn.Module:
        """The model the plan produces: a copy of ``model`` with every planned layer's weight
        quantized at its bit-width and, with activation bits, the input of each ``act_bits``
        layer fake-quantized on its grid (``torch.fake_quantize_per_tensor_affine``)."""
        weights = layer_weights(model, example_inputs, list(self.bits))
        return fake_quantized(model, _quantized(weights, self.bits, self.weight_options),
                              self.act_grids)

    def __str__(self):
        width = max(len(layer) for layer in self.bits)
        lines = [f"{layer:<{width}}  {b} bits" + (f", input {self.act_bits[layer]} bits"
                                                 if layer in self.act_bits else "")
                 for layer, b in self.bits.items()]
        lines += [f"{layer:<{width}}  float weights, input {a} bits"
                  for layer, a in self.act_bits.items() if layer not in self.bits]
        lines.append(f"average {self.avg_bits:.3f} bits, certified path-metric "
                     f"{self.certified_bound:.4e} (additive bound {self.additive_bound:.4e})")
        if self.act_bits:
            n = 0 if self.report is None else len(self.report.saturated)
            lines.append(f"activation term {self.activation_bound:.4e}: ||R(x) - Rq(x)||_1 <= "
                         f"max(||x||_inf, 1) * {self.certified_bound:.4e} + "
                         f"{self.activation_bound:.4e} where no point saturates; "
                         f"{self.saturated_count} of {n} calibration samples saturate a point "
                         "(not certified)")
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
                         layers: Sequence[str] | None = None, precision: str = "float64",
                         act_bits: int | Mapping[str, int | None] | None = None,
                         act_ranges: Mapping[str, tuple] | None = None) -> Plan:
    """Per-layer bit-widths minimising the certified additive bound under a size budget.

    Budget: ``sum_l n_l * b_l <= avg_bits * sum_l n_l`` (or ``<= size_bits``), ``n_l`` the
    layer's weight count. Cost of ``b`` on layer ``l``: ``sum_i |theta_i - q_b(theta_i)| *
    dN/d|theta_i|`` at ``U = max(|theta|, |q_b(theta)| over all b)`` (an additive upper bound).
    The chosen plan is then re-certified exactly by two passes; where a uniform plan at
    ``avg_bits`` fits the budget and certifies lower, it is returned instead (so a plan is never
    worse than uniform quantization at the same size).

    ``act_bits`` quantizes activations too, so that a plan such as "W4A8 except these layers"
    is certified as a whole: ``8`` puts an 8-bit point at the input of every planned layer (the
    conv/linear module's input, the model input included for the first layer), a dict
    ``{layer: bits or None}`` at the inputs of the layers it names (any conv/linear module of the
    model). ``example_inputs`` is then the calibration batch: each point's unsigned per-tensor
    grid is calibrated on it like ``MinMaxObserver`` (:func:`pathmetric.quantize.activation_grid`),
    or on ``act_ranges={layer: (min, max)}`` where given (an observer's ``min_val`` /
    ``max_val``, say; then for every point).
    Activation bits are given, not searched; the weight bits are chosen as above, and each
    candidate plan is certified by ``pm.deployment_report`` on the model it produces, the one
    with the lower ``max(||x||_inf, 1) * d + activation term`` at the batch's largest sup-norm
    kept. The plan's ``report`` counts the calibration samples that saturate a point.
    """
    weights = layer_weights(model, example_inputs, layers)
    bits = sorted(set(int(b) for b in bits))
    act_plan = _act_bits(model, example_inputs, act_bits, list(weights))
    grids = _act_grids(model, example_inputs, act_plan, act_ranges)
    sup = float(sup_norms(as_tuple(example_inputs)).clamp(min=1.0).max())

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
    options = {"scheme": scheme, "granularity": granularity, "group_size": group_size}
    for plan in candidates.values():   # one quantized copy of the weights at a time
        found = _certified(model, example_inputs, weights, plan, act_plan, grids, options,
                           precision)
        found.additive_bound = to_float(sum(costs[names.index(l)][bits.index(b)]
                                            for l, b in plan.items()), exponent)
        if best is None or found.bound(sup) < best.bound(sup):
            best = found
    assert best is not None  # candidates holds the knapsack's plan at least
    best.candidates = candidates
    return best


def certify_plan(model: torch.nn.Module, example_inputs: Inputs, bits: Mapping[str, int],
                 act_bits: int | Mapping[str, int | None] | None = None,
                 act_ranges: Mapping[str, tuple] | None = None, scheme: str = "symmetric",
                 granularity: str = "per_channel", group_size: int | None = None,
                 precision: str = "float64") -> Plan:
    """The certificate of a given assignment, e.g. "W4A8 except these layers":
    ``bits={layer: weight bits}`` (layers left out keep float weights) and ``act_bits`` as in
    :func:`mixed_precision_plan` (an int: a point at the input of every layer of ``bits``;
    ``example_inputs`` is the calibration batch, or ``act_ranges`` gives the ranges). The plan's
    ``certified_bound`` is the two-pass path-metric of its weights, ``activation_bound`` and
    ``report`` come from ``pm.deployment_report`` on the model the plan produces
    (:meth:`Plan.deployed`); ``additive_bound`` is nan (no knapsack ran)."""
    weights = layer_weights(model, example_inputs, list(bits))
    plan = {layer: int(bits[layer]) for layer in weights}
    act_plan = _act_bits(model, example_inputs, act_bits, list(plan))
    options = {"scheme": scheme, "granularity": granularity, "group_size": group_size}
    return _certified(model, example_inputs, weights, plan, act_plan,
                      _act_grids(model, example_inputs, act_plan, act_ranges), options,
                      precision)


def _certified(model, example_inputs, weights, plan, act_plan, grids, options,
               precision) -> Plan:
    """:class:`Plan` of the weight bits ``plan`` and activation ``grids`` (bits ``act_plan``):
    the path-metric of the quantized weights and, with grids, ``pm.deployment_report`` of the
    deployed model on the calibration batch (``additive_bound`` nan: the knapsack's, when one
    ran, is set by it)."""
    replaced = _quantized(weights, plan, options)
    certified = path_metric(model, replaced, example_inputs, precision)
    counts = {layer: weights[layer][1].numel() for layer in plan}
    average = (sum(counts[layer] * b for layer, b in plan.items()) / sum(counts.values())
               if plan else 32.0)
    found = Plan(dict(plan), certified, math.nan, average,
                 act_bits={layer: act_plan[layer] for layer in grids},
                 act_grids=grids, weight_options=dict(options))
    if grids:
        report = deployment_report(model, fake_quantized(model, replaced, grids), example_inputs)
        found.report, found.activation_bound = report, report.activation_term
        found.activation_terms = _layer_terms(grids, report)
    return found


def _quantized(weights: dict, plan: dict, options: dict) -> dict:
    """``{weight name: quantized weight}`` of the layers of ``plan`` at their bit-widths."""
    return {weights[layer][0]: quantizer(weights[layer][1], options["scheme"],
                                         options["granularity"], options["group_size"],
                                         weights[layer][2])(b) for layer, b in plan.items()}


def _act_grids(model, example_inputs, act_plan: dict, act_ranges=None) -> dict:
    """``{layer: ActivationGrid}`` calibrated on the batch (or on ``act_ranges``), in the order
    the layers run."""
    if not act_plan:
        return {}
    ranges = _act_ranges(model, example_inputs, list(act_plan), act_ranges)
    return {layer: activation_grid(low, high, act_plan[layer])
            for layer, (low, high) in ranges.items()}


def _act_ranges(model, example_inputs, layers, given=None) -> dict:
    """``{layer: (min, max)}`` of the layers' inputs on the calibration batch, or the ``given``
    ranges (the batch still gives the order the layers run), for a float model (one without
    quantization points of its own)."""
    if has_quantization_points(model, example_inputs):
        raise ValueError("the model quantizes activations itself (it has quantization points in "
                         "its forward): activation bits are for the float model; certify a "
                         "deployed model with pm.deployment_report(float_model, deployed, x)")
    ranges = layer_input_ranges(model, example_inputs, layers)
    if given is None:
        return ranges
    missing = [layer for layer in ranges if layer not in given]
    if missing:
        raise KeyError(f"act_ranges has no range for the activation points of {missing}")
    return {layer: tuple(float(v) for v in given[layer]) for layer in ranges}


def _act_bits(model, example_inputs, act_bits, planned) -> dict:
    """``{layer: activation bits}`` from ``act_bits`` (None, one width for every planned layer,
    or a dict over any of the model's layers, None meaning a float input)."""
    if act_bits is None:
        return {}
    if isinstance(act_bits, Mapping):
        chosen = {layer: int(b) for layer, b in act_bits.items() if b is not None}
        layer_weights(model, example_inputs, list(chosen))   # unknown layers: a KeyError
    else:
        chosen = dict.fromkeys(planned, int(act_bits))
    for layer, b in chosen.items():
        if not 2 <= b <= 16:
            raise ValueError(f"activation bits of '{layer}' must be between 2 and 16, got {b}")
    return chosen
