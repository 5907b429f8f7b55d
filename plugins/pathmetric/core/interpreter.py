"""Interpreter: walks a captured graph through its lifted network, in scaled arithmetic.

At every node the rule of its op (:mod:`pathmetric.core.rules`) builds the lifted value from the
primitives of ``ev``, whose meaning an algebra gives (:mod:`pathmetric.core.algebras`: the
path-norm pass and the pair pass). The interpreter holds what both passes share: the walk, scratch
memory for lifted parameters, the signed values of parameters, buffers and tensors derived from
them in either model, and the accounting of the rounding errors of the algebra's sums.
"""
from __future__ import annotations

import math
import threading
from typing import Any

import torch

from ..errors import UnsupportedModelError
from . import rules
from .ir import Buffer, Derived, Graph, Param, ParamView, Value


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
        self.grown = 0   # how many times the buffer was replaced
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

    def mark(self):
        """Where the next view starts; :meth:`rewind` hands the memory after it out again."""
        return self.grown, self.used

    def rewind(self, mark):
        """Forget the views handed out since ``mark`` (they must be dead): a loop over blocks of
        one op reuses one block's memory. A buffer replaced since then holds only such views."""
        grown, used = mark
        self.used = used if grown == self.grown else 0

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
            self.grown += 1
            start = 0
        self.used = start + size
        return self.buffer[start:start + size].view(dtype).view(shape)

    def owns(self, tensor) -> bool:
        return tensor.untyped_storage().data_ptr() == self.buffer.untyped_storage().data_ptr()


class Interpreter:
    """One lifted evaluation of ``graph``: the walk and its bookkeeping; a subclass (an algebra)
    says what a parameter becomes and how the primitives act on lifted values.

    ``summed_terms`` adds up, over every sum the algebra's primitives perform, the most terms one
    entry of it sums; :meth:`relative_error` turns it into a rounding-error bound.
    """

    def __init__(self, graph: Graph, dtype=torch.float64, device=None, scratch=True):
        self.graph = graph
        self.dtype = dtype
        self.device = device
        self.node: Any = None   # the node being evaluated (None between runs)
        self.summed_terms = 0
        self.uses_scratch = scratch
        self.scratch: Any = None   # the Scratch acquired for a run
        self.derived_memo: tuple[dict, dict] = ({}, {})  # per model: buffer-derived tensors of this evaluation

    # -- what rules read of the op being evaluated
    def shape(self, x):
        return tuple(x[0].m.shape)

    def out_shape(self):
        return self.node.shape

    def param_shape(self, ref):
        return tuple(self.raw(ref, 0).shape)

    def unsupported(self, why):
        return UnsupportedModelError(
            f"{self.node.rule_name} in '{self.node.module or '<model>'}' ({self.node.module_type}): {why}",
            [(self.node.rule_name, self.node.module, why)])

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

    def _check_precision(self):
        """An evaluation precision coarser than a parameter's dtype would round the parameter
        before any certified sum (a float64 difference of 1e-12 vanishes in float32): refused."""
        if self.dtype == torch.float64:
            return
        for tensors in self.tensors:
            for name in self.graph.param_names + self.graph.buffer_names():
                dtype = tensors[name].dtype
                if dtype.is_floating_point and torch.finfo(dtype).eps < torch.finfo(self.dtype).eps:
                    raise ValueError(
                        f"precision={str(self.dtype).replace('torch.', '')!r} is coarser than "
                        f"'{name}' ({dtype}): its values would be rounded before the certified "
                        "sums; use precision='float64'")

    # -- evaluation
    def inputs(self, shape):
        """The lifted value of an input of ``shape`` (the algebra's)."""
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
        self._check_precision()
        self._check_buffers()
        self.derived_memo = ({}, {})
        values: list = []
        kept = {}
        drops = self.graph.last_reads(keep)   # the live values only, as the model's forward

        def resolve(x):
            if isinstance(x, Value):
                v = values[x.node]
                return v if x.item is None else v[x.item]
            return x  # parameters and buffers stay references, read by ev.param

        for index, node in enumerate(self.graph.nodes):
            self.node = node
            if node.rule_name == "input":
                values.append(self.inputs(node.shape))
                continue
            args, kwargs = node.call(resolve)
            if self.scratch is not None:
                self.scratch.reset()
            try:
                out = rules.RULES[node.rule_name].lift(self, *args, func=node.func, **kwargs)
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
            for i in drops.get(index, ()):
                values[i] = None
        self.node = None
        outputs = [values[v.node] if v.item is None else values[v.node][v.item]
                   for v in self.graph.outputs]
        return outputs, kept

    # -- rounding-error accounting
    def relative_error(self) -> float:
        """A priori bound on the relative rounding error of a sum of lifted outputs.

        Every computed entry is a sum of at most ``n`` non-negative products, so it carries a
        relative error at most ``gamma_n = n u / (1 - n u)`` (u the unit roundoff); errors compose
        multiplicatively along paths, hence ``exp(sum of gamma) - 1`` over all ops bounds the total;
        the final sum of every output entry (:func:`~pathmetric.core.algebras.total_of`) counts
        its terms too. The step ``-ln(1 - g) <= 2 g`` needs ``g <= 1/2``, that is ``n u <= 1/3``:
        beyond it the bound is ``inf`` (docs/design.md, "Rounding").
        """
        u = torch.finfo(self.dtype).eps / 2
        n = self.summed_terms + 2 * len(self.graph.nodes) + self._output_entries() + 16
        if 3 * n * u > 1:
            return math.inf
        return math.expm1(2.0 * n * u / (1.0 - n * u))

    def _output_entries(self) -> int:
        """Entries of the analysed outputs (one sample), the terms of their final sum."""
        total = 0
        for v in self.graph.outputs:
            shape = self.graph.nodes[v.node].shape
            shape = shape[v.item] if v.item is not None else shape
            total += math.prod(shape)
        return total
