"""Lifted evaluation: run a captured graph through its lifted network, in scaled arithmetic.

Two evaluations share the rules:

- :class:`NormLifting` (one value per neuron): every parameter ``w`` becomes ``|w|^q``; with an
  all-ones input the sum of the outputs is ``||Phi(theta)||_q^q``. Optionally the lifted
  parameters are autograd leaves, so one backward gives ``dN/d|theta|`` for every parameter.
- :class:`PairLifting` (two values per neuron): with ``U = max(|theta|, |theta'|)`` and
  ``L = min(...)``, it carries ``A`` (mass under U) and ``D`` (mass under U minus mass under L)
  through ``A' = U A``, ``D' = (U - L) A + L D`` for parametrised maps and ``op(.)`` for fixed ones,
  so the sum of the ``D`` outputs is ``N(U) - N(L)`` without cancellation.

Every lifted value is a tuple of :class:`~pathmetric.core.scaled.Scaled` components (one or two).
"""
from __future__ import annotations

import math
import threading
from typing import NamedTuple

import torch

from . import rules
from .ir import Buffer, Derived, Graph, Param, ParamView, Value
from ..errors import UnsupportedModelError
from .scaled import (ZERO_EXPONENT, Scaled, aligned, common_exponent, scaled_affine, scaled_sum,
                     scaled_total)


def precision_dtype(precision) -> torch.dtype:
    """The dtype of a ``precision`` argument: ``'float64'`` (default of every analysis) or ``'float32'``."""
    if precision in ("float64", torch.float64, "double"):
        return torch.float64
    if precision in ("float32", torch.float32, "float"):
        return torch.float32
    raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")


def named_tensors(model) -> dict:
    """Parameters and buffers of ``model`` by name."""
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    return named


class Scratch:
    """Memory for lifted parameters, reused from one op to the next and from call to call.

    Lifted parameters are as large as the model, and a freshly allocated large tensor costs a
    page fault per page on its first write, which doubles the elementwise work on them. Views of
    one growing buffer, handed out again from the start at every op, avoid that. A view is valid
    until the next op; ``owns`` tells whether a tensor uses the buffer. Each captured graph keeps
    one (up to ``KEEP_BYTES``) for its next evaluation; a concurrent evaluation of the same graph
    gets a private one.
    """

    KEEP_BYTES = 256 * 2**20

    def __init__(self):
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self.used = 0
        self.lock = threading.Lock()

    def acquire(self) -> "Scratch":
        return self if self.lock.acquire(blocking=False) else Scratch()

    def release(self):
        if self.buffer.numel() > self.KEEP_BYTES:
            self.buffer = torch.empty(0, dtype=torch.uint8)
        if self.lock.locked():
            self.lock.release()

    def reset(self):
        self.used = 0

    def empty(self, shape, dtype, device) -> torch.Tensor:
        shape = tuple(shape)
        size = math.prod(shape) * dtype.itemsize
        start = -(-self.used // 64) * 64
        if start + size > self.buffer.numel() or self.buffer.device != torch.device(device):
            # Views handed out earlier in this op keep the old buffer alive, so growth doubles
            # (amortised) only up to KEEP_BYTES; past it a buffer is the exact request, as a
            # plain allocation would be (a 25088 x 4096 float64 classifier must not ask for
            # twice its lifted size).
            grown = 2 * self.buffer.numel()
            self.buffer = torch.empty(max(grown if grown <= self.KEEP_BYTES else 0, size),
                                      dtype=torch.uint8, device=device)
            start = 0
        self.used = start + size
        return self.buffer[start:start + size].view(dtype).view(shape)

    def owns(self, tensor) -> bool:
        return tensor.untyped_storage().data_ptr() == self.buffer.untyped_storage().data_ptr()


class Lifting:
    """The primitives rules are written in; subclasses say what a parameter becomes."""

    q = 1.0

    def __init__(self, graph: Graph, dtype=torch.float64, device=None, scratch=True):
        self.graph = graph
        self.dtype = dtype
        self.device = device
        self.node = None
        self.summed_terms = 0
        self.uses_scratch = scratch
        self.scratch = None
        self.derived_memo = ({}, {})  # per model: buffer-derived tensors of this evaluation

    # -- primitives used by rules
    def fixed(self, x, fn):
        """Fixed ops change magnitudes by bounded factors: the next parametrised op or sum
        renormalises, which saves a reduction per op."""
        outs = [fn(c.m) for c in x]
        if isinstance(outs[0], torch.Tensor):
            return tuple(Scaled(o, c.e) for o, c in zip(outs, x))
        return [tuple(Scaled(o[k], c.e) for o, c in zip(outs, x)) for k in range(len(outs[0]))]

    def add(self, values):
        return tuple(scaled_sum(parts) for parts in zip(*values))

    def join(self, values, fn):
        """Concatenate or stack lifted values with ``fn`` after aligning their exponents."""
        out = []
        for parts in zip(*values):
            exponent = common_exponent(parts)
            out.append(Scaled(fn(aligned(parts, exponent)), exponent))
        return tuple(out)

    def terms(self, n):
        self.summed_terms += n

    def shape(self, x):
        return tuple(x[0].m.shape)

    def out_shape(self):
        return self.node.shape

    def param_shape(self, ref):
        return tuple(self.raw(ref, 0).shape)

    def unsupported(self, why):
        return UnsupportedModelError(
            f"{self.node.rule} in '{self.node.module or '<model>'}' ({self.node.module_type}): {why}",
            [(self.node.rule, self.node.module, why)])

    # -- parameters
    def raw(self, ref, which):
        """The signed value of ``ref`` (parameter, buffer, buffer-derived tensor or constant) in
        model ``which``."""
        if isinstance(ref, Derived):
            return self.graph.derive(ref, self.tensors[which], self.derived_memo[which])
        if isinstance(ref, ParamView):
            return ref.of(self.tensors[which][ref.name])
        if isinstance(ref, (Param, Buffer)):
            return self.tensors[which][ref.name]
        return ref

    def computed(self, fn, refs, which, cast=True):
        """``fn`` of the referenced tensors of model ``which`` (in the evaluation precision, or
        in their own floating precision with ``cast=False`` when ``fn`` is the identity)."""
        values = [self.raw(r, which).detach() for r in refs]
        if cast or fn is not None or not all(v.is_floating_point() for v in values):
            values = [v.to(self.device, self.dtype) for v in values]
        return values[0] if fn is None else fn(*values)

    def magnitude(self, fn, refs, which=0) -> torch.Tensor:
        """``|fn(*refs)|`` (``|ref|`` when ``fn`` is None) of model ``which``, in the evaluation
        precision."""
        if fn is None:
            return self.absolute(self.raw(refs[0], which).detach())
        return self.computed(fn, refs, which).abs()

    def empty(self, shape, dtype=None) -> torch.Tensor:
        """A new tensor for a lifted parameter (scratch memory, valid during the current op)."""
        dtype = dtype or self.dtype
        if self.scratch is None:
            return torch.empty(shape, dtype=dtype, device=self.device)
        return self.scratch.empty(shape, dtype, self.device)

    def absolute(self, tensor) -> torch.Tensor:
        """``|tensor|`` in the evaluation precision, never the tensor itself."""
        out = self.empty(tensor.shape)
        if tensor.dtype == out.dtype and tensor.device == out.device:
            return torch.abs(tensor, out=out)
        return out.copy_(tensor).abs_()

    def _non_finite_parameter(self):
        """A clear error naming the NaN or infinite parameter behind a non-finite lifted value."""
        for tensors in self.tensors:
            for name in self.graph.param_names + self.graph.buffer_names():
                tensor = tensors[name]
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return ValueError(f"'{name}' holds NaN or infinite values")
        return None

    def _check_buffers(self):
        """Buffers must be finite: an infinite running variance would silently zero a BatchNorm
        scale (a NaN or infinite parameter shows up as a non-finite lifted value instead)."""
        for tensors in self.tensors:
            floating = [tensors[name].detach().reshape(-1).double()
                        for name in self.graph.buffer_names() if tensors[name].is_floating_point()]
            if floating and not torch.isfinite(torch.cat(floating)).all():
                raise self._non_finite_parameter()

    # -- evaluation
    def inputs(self, shape):
        raise NotImplementedError

    def run(self, keep=()):
        """Evaluate the graph; return the lifted outputs (and the values of ``keep`` nodes)."""
        if self.uses_scratch and self.graph.scratch is None:
            self.graph.scratch = Scratch()
        self.scratch = self.graph.scratch.acquire() if self.uses_scratch else None
        try:
            return self._run(keep)
        finally:
            if self.scratch is not None:
                self.scratch.release()
            self.scratch = None

    def _run(self, keep):
        self._check_buffers()
        self.derived_memo = ({}, {})
        values: list = []
        kept = {}

        def resolve(x):
            if isinstance(x, Value):
                v = values[x.node]
                return v if x.item is None else v[x.item]
            return x  # parameters and buffers stay references, read by ev.param

        for index, node in enumerate(self.graph.nodes):
            self.node = node
            if node.rule == "input":
                values.append(self.inputs(node.shape))
                continue
            args, kwargs = node.call(resolve)
            if self.scratch is not None:
                self.scratch.reset()
            try:
                out = rules.RULES[node.rule].lift(self, *args, func=node.func, **kwargs)
            except FloatingPointError as exc:
                raise self._non_finite_parameter() or exc
            if self.scratch is not None:
                for value in (out if isinstance(out, list) else [out]):
                    for part in value:
                        if self.scratch.owns(part.m):  # e.g. a bias broadcast as it is
                            part.m = part.m.clone()
            values.append(out)
            if index in keep:
                kept[index] = out
        self.node = None
        outputs = [values[v.node] if v.item is None else values[v.node][v.item]
                   for v in self.graph.outputs]
        return outputs, kept

    def relative_error(self) -> float:
        """A priori bound on the relative rounding error of a sum of lifted outputs.

        Every computed entry is a sum of at most ``n`` non-negative products, so it carries a
        relative error at most ``gamma_n = n u / (1 - n u)`` (u the unit roundoff); errors compose
        multiplicatively along paths, hence ``exp(sum of gamma) - 1`` over all ops bounds the total.
        """
        u = torch.finfo(self.dtype).eps / 2
        n = self.summed_terms + 2 * len(self.graph.nodes) + 16
        if n * u >= 0.5:
            return math.inf
        return math.expm1(2.0 * n * u / (1.0 - n * u))


class NormLifting(Lifting):
    """Lifted network for ``||Phi(theta)||_q^q``: parameters ``|w|^q``, all-ones input.

    ``overrides`` replaces named parameters or buffers by other signed tensors (a quantised copy,
    say) without building a model; ``track`` makes each lifted parameter of a named tensor an
    autograd leaf, collected in ``self.leaves`` by name (derived ones, such as a folded BatchNorm
    scale, under ``module path + '.scale'`` / ``'.shift'``).
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

    def param(self, fn, *refs) -> Scaled:
        """``|fn(*refs)|^q`` as a scaled tensor (``|w|^q`` can leave float64's range for large
        ``q`` even where ``|w|`` does not). A parameter view is the parameter lifted in its own
        shape, then viewed (so a tracked leaf is the parameter's own lifted image)."""
        if fn is None and isinstance(refs[0], ParamView):
            value = self.param(None, Param(refs[0].name))
            return Scaled(refs[0].of(value.m), value.e)
        value = scaled_power(self.magnitude(fn, refs), self.q)
        if self.leaves is not None and isinstance(refs[0], (Param, Buffer)):
            value.m = value.m.detach().requires_grad_()
            self.leaves[_leaf_key(fn, refs, self.node)] = value.m
        return value

    def linear(self, x, fn, p, stack_dim=None):
        y = fn(x[0].m, p.m)
        if self.q != 1.0 and bool(((y == 0) & (fn((x[0].m > 0).to(y.dtype), (p.m > 0).to(y.dtype)) > 0)).any()):
            raise ValueError(f"q = {self.q} is too large for this model: products of |w|^q "
                             f"underflow in '{self.node.module or '<model>'}'; use a smaller q")
        return (Scaled.normalized(y, x[0].e + p.e),)

    def bias(self, p, fn):
        return (Scaled.normalized(fn(p.m), p.e),)

    def affine(self, x, s, t):
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


def _leaf_key(fn, refs, node):
    if fn is None:
        return refs[0].name
    return f"{node.module}.{fn.__name__}" if node.module else fn.__name__


class PairLifting(Lifting):
    """Lifted (A, D) pair for ``N(U) - N(L)`` between two parameter sets of one graph.

    ``stage`` selects the pair of DESIGN.md's sign rule: ``'direct'`` compares theta with theta'
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

    def param(self, fn, *refs) -> "PairParam":
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

    def linear(self, x, fn, p, stack_dim=None):
        """``A' = fn(A, U)``, ``D' = fn(A, U - L) + fn(D, L)``. Where both models agree, ``A`` and
        ``D`` go through one call as a batch of two; otherwise ``U`` and ``U - L`` go through one
        call stacked along the output dimension ``stack_dim`` when the op allows it. An all-zero
        ``D`` (no change upstream) is not run through the op."""
        a, d = x
        self.terms(1)
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
        y = Scaled.normalized(fn(p.upper), 0)
        if p.gap is None:
            return y, Scaled(torch.zeros_like(y.m), ZERO_EXPONENT)
        return y, Scaled.normalized(fn(p.gap), 0)

    def affine(self, x, s, t):
        """``A' = U_s A + U_t``, ``D' = L_s D + (U_s - L_s) A + (U_t - L_t)``."""
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
