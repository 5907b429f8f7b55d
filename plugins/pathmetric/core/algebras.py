"""Algebras: what a parameter becomes and what the primitives of the rules mean, once per pass.

A rule (:mod:`pathmetric.core.rules`) builds its op's lifted image from the primitives of ``ev``;
the interpreter (:class:`~pathmetric.core.interpreter.Interpreter`) walks the graph and the
algebra gives the primitives their meaning:

- :class:`NormLifting` (one value per neuron): every parameter ``w`` becomes ``|w|^q``; with an
  all-ones input the sum of the outputs is ``||Phi(theta)||_q^q``. Optionally the lifted
  parameters are autograd leaves, so one backward gives ``dN/d|theta|`` for every parameter.
- :class:`PairLifting` (two values per neuron): with ``U = max(|theta|, |theta'|)`` and
  ``L = min(...)``, it carries ``A`` (mass under U) and ``D`` (mass under U minus mass under L)
  through ``A' = U A``, ``D' = (U - L) A + L D`` for parametrised maps and ``op(.)`` for fixed ones,
  so the sum of the ``D`` outputs is ``N(U) - N(L)`` without cancellation.

Every lifted value is a tuple of :class:`~pathmetric.core.scaled.Scaled` components (one or two).
Every primitive that sums adds to the interpreter's ``summed_terms`` the most terms one entry of
its result sums: ``add`` and ``affine`` count their own operands, ``fixed`` and ``linear`` take
the count of the map they apply as a required keyword, so no sum of a rule goes uncounted.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .interpreter import Interpreter, named_tensors
from .ir import Buffer, Computed, Param, ParamView
from .scaled import (ZERO_EXPONENT, Scaled, aligned, common_exponent, scaled_affine, scaled_sum,
                     scaled_total)


class Lifting(Interpreter):
    """The primitives both passes share: maps applied to every component of a lifted value."""

    q = 1.0

    def fixed(self, x, fn, *, terms):
        """``fn`` of every component: a fixed map whose coefficients are already lifted
        (``|c|^q``), each entry of its result a sum of at most ``terms`` products (0: ``fn`` only
        moves or copies entries). Fixed maps change magnitudes by bounded factors: the next
        parametrised op or sum renormalises, which saves a reduction per op."""
        self.summed_terms += terms
        outs = [fn(c.m) for c in x]
        if isinstance(outs[0], torch.Tensor):
            return tuple(Scaled(o, c.e) for o, c in zip(outs, x))
        return [tuple(Scaled(o[k], c.e) for o, c in zip(outs, x)) for k in range(len(outs[0]))]

    def add(self, values):
        """The sum of lifted values (edges of coefficient one): ``len(values)`` terms an entry."""
        self.summed_terms += len(values)
        return tuple(scaled_sum(parts) for parts in zip(*values))

    def join(self, values, fn):
        """Concatenate or stack lifted values with ``fn`` after aligning their exponents (exact:
        nothing is summed)."""
        out = []
        for parts in zip(*values):
            exponent = common_exponent(parts)
            out.append(Scaled(fn(aligned(parts, exponent)), exponent))
        return tuple(out)


class NormLifting(Lifting):
    """Lifted network for ``||Phi(theta)||_q^q``: parameters ``|w|^q``, all-ones input.

    ``overrides`` replaces named parameters or buffers by other signed tensors (a quantised copy,
    say) without building a model; ``track`` makes each lifted parameter of a named tensor an
    autograd leaf, collected in ``self.leaves`` by name (derived ones, such as a folded BatchNorm
    scale, under :class:`~pathmetric.core.ir.Computed` keys ``(module path, part)``).
    """

    def __init__(self, graph, model, q=1.0, dtype=torch.float64, overrides=None, track=False):
        tensors = named_tensors(model)
        super().__init__(graph, dtype, next(iter(tensors.values())).device, scratch=not track)
        self.q = float(q)
        tensors.update(overrides or {})
        self.tensors = (tensors,)
        self.leaves = {} if track else None

    def inputs(self, shape):
        return (Scaled(torch.ones(shape, dtype=self.dtype, device=self.device), 0),)

    def param(self, fn, *refs, part=None) -> Scaled:
        """``|fn(*refs)|^q`` as a scaled tensor (``|w|^q`` can leave float64's range for large
        ``q`` even where ``|w|`` does not). A parameter view is the parameter lifted in its own
        shape, then viewed (so a tracked leaf is the parameter's own lifted image)."""
        if fn is None and isinstance(refs[0], ParamView):
            value = self.param(None, Param(refs[0].name))
            return Scaled(refs[0].of(value.m), value.e)
        value = scaled_power(self.magnitude(fn, refs), self.q)
        if self.leaves is not None and isinstance(refs[0], (Param, Buffer)):
            value.m = value.m.detach().requires_grad_()
            key = refs[0].name if fn is None else Computed(self.node.module, part)
            self.leaves[key] = value.m
        return value

    def linear(self, x, fn, p, *, terms, stack_dim=None):
        """``fn(x, |w|^q)``, each entry a sum of at most ``terms`` products."""
        self.summed_terms += terms
        y = fn(x[0].m, p.m)
        if self.q != 1.0 and bool(((y == 0) & (fn((x[0].m > 0).to(y.dtype), (p.m > 0).to(y.dtype)) > 0)).any()):
            raise ValueError(f"q = {self.q} is too large for this model: products of |w|^q "
                             f"underflow in '{self.node.module or '<model>'}'; use a smaller q")
        return (Scaled.normalized(y, x[0].e + p.e),)

    def bias(self, p, fn):
        """Paths that start at the lifted parameter ``p``, broadcast by ``fn`` (exact)."""
        return (Scaled.normalized(fn(p.m), p.e),)

    def affine(self, x, s, t):
        """``s x + t`` per channel (dim 1): two terms an entry, counted as three since ``s`` is a
        computed coefficient (a frozen BatchNorm's fold)."""
        self.summed_terms += 3
        return (scaled_affine([(Scaled(x[0].m, x[0].e + s.e), s.m)], t),)


def scaled_power(value: torch.Tensor, q: float) -> Scaled:
    """``value ** q`` (``value >= 0``) as ``m * 2**e``: the plain power where every non-zero entry
    stays well inside the precision's normal range, else ``2**(q log2 value - e)`` computed in
    float64 with ``e`` the largest entry's exponent (so ``q = 700`` gives a finite log
    path-norm). Raises ValueError when a non-zero entry would leave the normal range even so:
    its paths could not be evaluated exactly."""
    if q == 1.0:
        return Scaled(value, 0)
    powered = value ** q
    limit = 900 if value.dtype == torch.float64 else 100
    positive = powered[value > 0]
    if not positive.numel() or (float(positive.amax()) < 2.0**limit
                                and float(positive.amin()) > 2.0**-limit):
        return Scaled(powered, 0)
    logs = torch.log2(value.double()).mul_(q)
    exponent = math.floor(float(logs.amax())) + 1
    mantissa = torch.exp2(logs.sub_(exponent)).to(value.dtype)
    if bool(((mantissa < torch.finfo(value.dtype).tiny) & (value > 0)).any()):
        raise ValueError(
            f"q = {q} is too large for this model: |w|^q of one tensor spans more than the "
            f"{value.dtype} range (largest/smallest non-zero |w| = "
            f"{float(value.amax()) / float(value[value > 0].amin()):.3g}), so paths through its "
            "small entries would vanish; use a smaller q")
    return Scaled(mantissa, exponent)


class PairLifting(Lifting):
    """Lifted (A, D) pair for ``N(U) - N(L)`` between two parameter sets of one graph.

    ``stage`` selects the pair of the sign rule (docs/design.md): ``'direct'`` compares theta with theta'
    and records in ``self.conflicts`` whether a coordinate changes sign; ``'to_mid'`` compares
    theta with theta'' (theta with the sign-conflicting coordinates zeroed) and ``'from_mid'``
    theta'' with theta'. ``d(theta, theta') <= d(theta, theta'') + d(theta'', theta')``, each of
    them exact for a same-orthant pair.
    """

    def __init__(self, graph, tensors_a: dict, tensors_b: dict, stage="direct", dtype=torch.float64):
        device = next(iter(tensors_a.values())).device
        super().__init__(graph, dtype, device)
        self.tensors = (tensors_a, tensors_b)
        self.stage = stage
        self.conflicts = 0

    def inputs(self, shape):
        ones = torch.ones(shape, dtype=self.dtype, device=self.device)
        return (Scaled(ones, 0), Scaled(torch.zeros_like(ones), ZERO_EXPONENT))

    def param(self, fn, *refs, part=None) -> "PairParam":
        """``U``, ``U - L`` and ``L`` of the lifted parameter (``U - L`` None where both models
        agree); ``U`` and ``U - L`` are the two halves of one tensor stacked along dim 0."""
        if all(self.raw(r, 0) is self.raw(r, 1) or torch.equal(self.raw(r, 0), self.raw(r, 1))
               for r in refs):
            upper = self.magnitude(fn, refs)
            return PairParam(upper, None, upper)
        # signs, magnitudes, max and min are exact in the parameters' own precision
        a, b = self.computed(fn, refs, 0, cast=False), self.computed(fn, refs, 1, cast=False)
        if a.shape != b.shape:
            raise ValueError(f"'{self.node.module}' has parameters of shape {tuple(a.shape)} and "
                             f"{tuple(b.shape)} in the two models")
        product = torch.mul(a, b, out=self.empty(a.shape, a.dtype))
        conflict = product.lt_(0) if product.numel() and float(product.amin()) < 0 else None
        conflicts = 0 if conflict is None else int(torch.count_nonzero(conflict))
        self.conflicts += conflicts
        if self.stage == "to_mid":  # theta versus theta'': they differ only where signs conflict
            if not conflicts:
                upper = self.absolute(a)
                return PairParam(upper, None, upper)
            b = torch.where(conflict.bool(), torch.zeros_like(a), a)
        elif conflicts and self.stage == "from_mid":
            a = torch.where(conflict.bool(), torch.zeros_like(a), a)
        stacked = self.empty((2 * a.shape[0],) + a.shape[1:] if a.dim() else (2,))
        upper, gap = stacked.chunk(2) if a.dim() else stacked.unbind()
        lower = self.empty(a.shape)
        a, b = (torch.abs(v, out=self.empty(v.shape, v.dtype)) for v in (a, b))
        if a.dtype == self.dtype:
            torch.maximum(a, b, out=upper)
            torch.minimum(a, b, out=lower)
        else:  # in the parameters' precision, then converted (mixed-precision out= is slower)
            upper.copy_(torch.maximum(a, b, out=self.empty(a.shape, a.dtype)))
            lower.copy_(torch.minimum(a, b, out=a))
        torch.sub(upper, lower, out=gap)
        return PairParam(upper, gap, lower, stacked)

    def linear(self, x, fn, p, *, terms, stack_dim=None):
        """``A' = fn(A, U)``, ``D' = fn(A, U - L) + fn(D, L)``, each entry of ``fn`` a sum of at
        most ``terms`` products (``terms + 1`` for ``D'``, which adds two of them). Where both
        models agree, ``A`` and ``D`` go through one call as a batch of two; otherwise ``U`` and
        ``U - L`` go through one call stacked along the output dimension ``stack_dim`` when the op
        allows it. An all-zero ``D`` (no change upstream) is not run through the op."""
        a, d = x
        self.summed_terms += terms + 1
        no_change_yet = d.e == ZERO_EXPONENT
        if p.gap is None:
            if no_change_yet:
                y_upper = fn(a.m, p.upper)
                return (Scaled.normalized(y_upper, a.e),
                        Scaled(torch.zeros_like(y_upper), ZERO_EXPONENT))
            both = fn(torch.cat([a.m, d.m]), p.upper)
            n = a.m.shape[0]
            return Scaled.normalized(both[:n], a.e), Scaled.normalized(both[n:], d.e)
        if stack_dim is None:
            y_upper, y_gap = fn(a.m, p.upper), fn(a.m, p.gap)
        else:
            y_upper, y_gap = fn(a.m, p.stacked).chunk(2, dim=stack_dim)
        if no_change_yet:
            return Scaled.normalized(y_upper, a.e), Scaled.normalized(y_gap, a.e)
        y_lower = fn(d.m, p.lower)
        return (Scaled.normalized(y_upper, a.e),
                scaled_sum([Scaled(y_gap, a.e), Scaled(y_lower, d.e)], owned=True).renormalized())

    def bias(self, p, fn):
        """Paths that start at the lifted parameter: ``A' = fn(U)``, ``D' = fn(U - L)`` (exact)."""
        y = Scaled.normalized(fn(p.upper), 0)
        if p.gap is None:
            return y, Scaled(torch.zeros_like(y.m), ZERO_EXPONENT)
        return y, Scaled.normalized(fn(p.gap), 0)

    def affine(self, x, s, t):
        """``A' = U_s A + U_t``, ``D' = L_s D + (U_s - L_s) A + (U_t - L_t)``: three terms."""
        self.summed_terms += 3
        a, d = x
        d_terms = [(d, s.lower)] + ([(a, s.gap)] if s.gap is not None else [])
        return scaled_affine([(a, s.upper)], t.upper), scaled_affine(d_terms, t.gap)


class PairParam(NamedTuple):
    """A lifted parameter in the pair pass: ``upper`` = U, ``gap`` = U - L (None where the two
    models agree), ``lower`` = L, and ``stacked`` = ``cat([U, U - L])`` (whose halves they are)."""
    upper: torch.Tensor
    gap: torch.Tensor | None
    lower: torch.Tensor
    stacked: torch.Tensor | None = None


def total_of(outputs, component=0) -> Scaled:
    """Sum of every entry of every output tensor (component 0: A or N; 1: D)."""
    return scaled_total([out[component] for out in outputs])
