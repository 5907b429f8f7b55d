"""Rules: one per op, with every fact about it (docs/design.md, "Rules"; see :class:`Rule`).

A rule receives the evaluation context ``ev`` and the op's arguments, where every input-dependent
tensor has become a lifted value and every parameter or buffer a reference. It builds the lifted op
from the primitives of ``ev``, which the algebra of each pass defines
(:mod:`pathmetric.core.algebras`), so the same rule serves the L_q path-norm pass and the (A, D)
path-metric pass:

- ``ev.param(fn, *refs, part=None)``: the lifted parameter ``|fn(*refs)|^q`` (``|ref|^q`` when
  ``fn`` is None), as the pass carries it; ``part`` (a :class:`~pathmetric.core.ir.Part`) names
  a computed one the score functions read (a BatchNorm's scale and shift, PReLU's slopes),
- ``ev.fixed(x, fn, terms=n)``: a fixed map whose coefficients are already lifted (``|c|**q``),
- ``ev.linear(x, fn, p, terms=n)``: a map whose coefficients are the parameter ``p`` (lifted by
  ``ev.param``),
- ``ev.bias(p, fn)``: paths that start at the bias ``p`` (``fn`` broadcasts it),
- ``ev.add(values)``: a sum of incoming edges of coefficient one,
- ``ev.affine(x, s, t)``: ``s * x + t`` with lifted per-channel (dim 1) parameters ``s`` and
  ``t``, the image of a frozen BatchNorm, in one pass,
- ``ev.join(values, fn)``: a concatenation or stack (``fn``) of lifted values.

``terms=n``, required, states that every entry of the map's result sums at most ``n`` products
(0 for a map that only moves or copies entries); ``add`` and ``affine`` count their own terms.
The interpreter adds them up into the a priori bound on the floating-point error that
certificates are rounded up by.

The registry (:class:`Rule`, :func:`rule`, :func:`lookup`, the family presets, the helpers) is
:mod:`.registry`, re-exported here; the op families are one module each (``activations``,
``linear``, ``pooling``, ``arithmetic``, ``structure``, ``heads``), imported below to register
their rules. A new family is a new module importing :mod:`.registry`, added to that import.
"""
from __future__ import annotations

# the registry first: a family module may import its names from this package
from .registry import (
    ACTIVATION,
    ARITHMETIC,
    CHANNEL_MAPS,
    CLIPPED,
    MAX_NEURONS,
    PARAMETER_FREE,
    POOLING,
    REDUCTION,
    REFUSED,
    RULES,
    STRUCTURE,
    WEIGHTED_LAYER,
    Rule,
    Tensor,
    abs_pow,
    check_graph,
    is_constant,
    is_lifted_value,
    is_query,
    is_traced,
    lookup,
    ntuple,
    offset,
    reduced_count,
    rule,
    spatial_dims,
    unregister,
)

# isort: split
from . import activations, arithmetic, heads, linear, pooling, structure  # registers the rules

# isort: split
from . import aten, quantization  # deployed models, exported programs (aliases of the above)

# isort: split
from .heads import HEAD_NOTE, set_aside_head
from .linear import batch_norm_scale, batch_norm_shift

__all__ = ["ACTIVATION", "ARITHMETIC", "CHANNEL_MAPS", "CLIPPED", "HEAD_NOTE", "MAX_NEURONS",
           "PARAMETER_FREE", "POOLING", "REDUCTION", "REFUSED", "RULES", "STRUCTURE",
           "WEIGHTED_LAYER", "Rule", "Tensor", "abs_pow", "activations", "arithmetic", "aten",
           "batch_norm_scale", "batch_norm_shift", "check_graph", "heads", "is_constant",
           "is_lifted_value", "is_query", "is_traced", "linear", "lookup", "ntuple", "offset",
           "pooling", "quantization", "reduced_count", "rule", "set_aside_head", "spatial_dims", "structure",
           "unregister"]
