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
from collections import ChainMap
from typing import NamedTuple

import torch

from .interpreter import Interpreter, named_tensors
from .ir import Buffer, Computed, Param, ParamView
from .scaled import (
    ZERO_EXPONENT,
    Scaled,
    aligned,
    common_exponent,
    scaled_affine,
    scaled_sum,
    scaled_total,
)


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

    ``overrides`` (a mapping, read when the walk reaches each name) replaces named parameters or
    buffers by other signed tensors (a quantised copy, say) without building a model; ``track``
    makes each lifted parameter of a named tensor an autograd leaf, collected in ``self.leaves``
    by name (derived ones, such as a folded BatchNorm scale, under
    :class:`~pathmetric.core.ir.Computed` keys ``(module path, part)``).
    """

    def __init__(self, graph, model, q=1.0, dtype=torch.float64, overrides=None, track=False):
        tensors = named_tensors(model)
        super().__init__(graph, dtype, next(iter(tensors.values())).device, scratch=not track)
        self.q = float(q)
        # looked up, never copied: a mapping that forms its tensors when read stays lazy
        self.tensors = (ChainMap(overrides, tensors) if overrides else tensors,)
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

    #: a parameter of more entries is applied by blocks of output channels of at most this many
    #: entries where the op allows it (:meth:`_images`): a classifier of 25088 x 4096 weights
    #: then never holds its U, U - L and L whole (five float64 copies of the layer).
    BLOCK_ENTRIES = 1 << 22

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
        """The lifted parameter's ``U``, ``U - L`` and ``L`` (``U - L`` None where both models
        agree), formed when an op reads them: whole, or by blocks of rows in :meth:`linear`.
        Counts the sign-conflicting coordinates now (in blocks, so without a copy)."""
        a = self.computed(fn, refs, 0, cast=False)
        if all(self.raw(r, 0) is self.raw(r, 1) or torch.equal(self.raw(r, 0), self.raw(r, 1))
               for r in refs):
            return PairParam(self, a)
        # signs, magnitudes, max and min are exact in the parameters' own precision
        b = self.computed(fn, refs, 1, cast=False)
        if a.shape != b.shape:
            raise ValueError(f"'{self.node.module}' has parameters of shape {tuple(a.shape)} and "
                             f"{tuple(b.shape)} in the two models")
        conflicts = 0
        for rows in PairParam.blocks(a, self.BLOCK_ENTRIES):
            mark = self.scratch.mark()
            conflicts += int(torch.count_nonzero(PairParam.sign_conflicts(self, a[rows], b[rows])))
            self.scratch.rewind(mark)
        self.conflicts += conflicts
        if self.stage == "to_mid" and not conflicts:  # theta versus theta'': equal here
            return PairParam(self, a)
        return PairParam(self, a, b, zero_conflicts=bool(conflicts) and self.stage != "direct")

    def _images(self, p, stack_dim, apply):
        """``apply(parts)`` of the whole lifted parameter ``p``, or, for a large ``p`` of an op
        whose output dim ``stack_dim`` follows the parameter's dim 0 (the output channels),
        ``apply`` of blocks of its rows concatenated along ``stack_dim``: only one block's
        ``U``, ``U - L`` and ``L`` exist at a time (each output entry is computed as a whole)."""
        if stack_dim is None:
            return apply(p.whole())
        blocks = PairParam.blocks(p.a, self.BLOCK_ENTRIES)
        if len(blocks) == 1:
            return apply(p.whole())
        images = []
        for rows in blocks:
            mark = self.scratch.mark()
            images.append(apply(p.parts(rows)))
            self.scratch.rewind(mark)
        return [torch.cat(column, dim=stack_dim) for column in zip(*images)]

    def linear(self, x, fn, p, *, terms, stack_dim=None):
        """``A' = fn(A, U)``, ``D' = fn(A, U - L) + fn(D, L)``, each entry of ``fn`` a sum of at
        most ``terms`` products (``terms + 1`` for ``D'``, which adds two of them). Where both
        models agree, ``A`` and ``D`` go through one call as a batch of two; otherwise ``U`` and
        ``U - L`` go through one call stacked along the output dimension ``stack_dim`` when the op
        allows it (and a large parameter by blocks of output channels, see :meth:`_images`). An
        all-zero ``D`` (no change upstream) is not run through the op."""
        a, d = x
        self.summed_terms += terms + 1
        no_change_yet = d.e == ZERO_EXPONENT
        if p.agree:
            if no_change_yet:
                (y_upper,) = self._images(p, stack_dim, lambda q: (fn(a.m, q.upper),))
                return (Scaled.normalized(y_upper, a.e),
                        Scaled(torch.zeros_like(y_upper), ZERO_EXPONENT))
            batch = torch.cat([a.m, d.m])
            (both,) = self._images(p, stack_dim, lambda q: (fn(batch, q.upper),))
            n = a.m.shape[0]
            return Scaled.normalized(both[:n], a.e), Scaled.normalized(both[n:], d.e)

        def images(q):
            if stack_dim is None:
                ups = fn(a.m, q.upper), fn(a.m, q.gap)
            else:
                ups = fn(a.m, q.stacked).chunk(2, dim=stack_dim)
            return ups if no_change_yet else (*ups, fn(d.m, q.lower))
        found = self._images(p, stack_dim, images)
        if no_change_yet:
            return Scaled.normalized(found[0], a.e), Scaled.normalized(found[1], a.e)
        y_upper, y_gap, y_lower = found
        return (Scaled.normalized(y_upper, a.e),
                scaled_sum([Scaled(y_gap, a.e), Scaled(y_lower, d.e)], owned=True).renormalized())

    def bias(self, p, fn):
        """Paths that start at the lifted parameter: ``A' = fn(U)``, ``D' = fn(U - L)`` (exact)."""
        q = p.whole()
        y = Scaled.normalized(fn(q.upper), 0)
        if q.gap is None:
            return y, Scaled(torch.zeros_like(y.m), ZERO_EXPONENT)
        return y, Scaled.normalized(fn(q.gap), 0)

    def affine(self, x, s, t):
        """``A' = U_s A + U_t``, ``D' = L_s D + (U_s - L_s) A + (U_t - L_t)``: three terms."""
        self.summed_terms += 3
        a, d = x
        s, t = s.whole(), t.whole()
        d_terms = [(d, s.lower)] + ([(a, s.gap)] if s.gap is not None else [])
        return scaled_affine([(a, s.upper)], t.upper), scaled_affine(d_terms, t.gap)


class Bounds(NamedTuple):
    """``upper`` = U, ``gap`` = U - L (None where the two models agree), ``lower`` = L, and
    ``stacked`` = ``cat([U, U - L])`` (whose halves they are), of a lifted parameter or a block
    of its rows, in scratch memory."""
    upper: torch.Tensor
    gap: torch.Tensor | None
    lower: torch.Tensor
    stacked: torch.Tensor | None = None


class PairParam:
    """A lifted parameter of the pair pass: the signed tensors ``a`` (model 0) and ``b``
    (model 1; None where they agree) in their own precision, and the sign rule of the pass
    (``zero_conflicts``: theta'' replaces theta (stage ``'from_mid'``) or theta'
    (``'to_mid'``), the sign-conflicting coordinates zeroed). Its :class:`Bounds` are formed
    when an op reads them, whole (:meth:`whole`) or for a block of rows (:meth:`parts`)."""

    def __init__(self, ev, a, b=None, zero_conflicts=False):
        self.ev, self.a, self.b, self.zero_conflicts = ev, a, b, zero_conflicts
        self._whole = None

    @property
    def agree(self) -> bool:
        return self.b is None

    @staticmethod
    def blocks(tensor, entries) -> list:
        """Indices of blocks of rows (dim 0) of ``tensor`` with at most ``entries`` entries
        each (at least one row; ``...``, the whole tensor, when it is small or 0-dim)."""
        if tensor.dim() == 0 or tensor.numel() <= entries:
            return [...]
        rows = max(1, entries // max(1, tensor[0].numel()))
        return [slice(k, k + rows) for k in range(0, tensor.shape[0], rows)]

    @staticmethod
    def sign_conflicts(ev, a, b) -> torch.Tensor:
        """Where ``a`` and ``b`` have strictly opposite signs: ``sign(a) * b < 0`` (nonzero
        there, in ``ev``'s scratch memory). Exact: ``a * b`` would underflow to 0 for entries as
        small as 1e-30 in float32 and hide the conflict."""
        return torch.sign(a, out=ev.empty(a.shape, a.dtype)).mul_(b).lt_(0)

    def whole(self) -> Bounds:
        if self._whole is None:
            self._whole = self.parts(...)
        return self._whole

    def parts(self, rows) -> Bounds:
        """U, U - L, L of the ``rows`` (an index of dim 0, ``...`` for all) of the lifted
        parameter, in the evaluation precision."""
        ev = self.ev
        a = self.a[rows]
        if self.b is None:
            upper = ev.absolute(a)
            return Bounds(upper, None, upper)
        b = self.b[rows]
        if self.zero_conflicts:
            conflict = self.sign_conflicts(ev, a, b).bool()
            if ev.stage == "to_mid":  # theta versus theta'': they differ only where signs conflict
                b = torch.where(conflict, torch.zeros_like(a), a)
            else:
                a = torch.where(conflict, torch.zeros_like(a), a)
        stacked = ev.empty((2 * a.shape[0],) + a.shape[1:] if a.dim() else (2,))
        upper, gap = stacked.chunk(2) if a.dim() else stacked.unbind()
        lower = ev.empty(a.shape)
        a, b = (torch.abs(v, out=ev.empty(v.shape, v.dtype)) for v in (a, b))
        if a.dtype == ev.dtype:
            torch.maximum(a, b, out=upper)
            torch.minimum(a, b, out=lower)
        else:  # in the parameters' precision, then converted (mixed-precision out= is slower)
            upper.copy_(torch.maximum(a, b, out=ev.empty(a.shape, a.dtype)))
            lower.copy_(torch.minimum(a, b, out=a))
        torch.sub(upper, lower, out=gap)
        return Bounds(upper, gap, lower, stacked)


def total_of(outputs, component=0) -> Scaled:
    """Sum of every entry of every output tensor (component 0: A or N; 1: D)."""
    return scaled_total([out[component] for out in outputs])
