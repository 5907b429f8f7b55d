"""The engine's graph: nodes, the values and references they read, the graph and its structure.

A :class:`Graph` is what :mod:`pathmetric.core.capture` records; every analysis reads it. Node
arguments are kept as recorded (``args``, ``kwargs``), with every input-dependent tensor replaced
by a :class:`Value` and every parameter or buffer by a :class:`Param` or :class:`Buffer`
reference; ``roles`` holds the same arguments bound once, at capture, to the names of the node's
rule (``x``, ``weight``, ``bias``, ``groups``, ...), so no analysis reads argument positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class Value:
    """Output ``item`` (None for a single tensor) of graph node ``node``."""
    node: int
    item: int | None = None


@dataclass(frozen=True)
class Param:
    """A model parameter, by ``named_parameters()`` name."""
    name: str


@dataclass(frozen=True)
class Buffer:
    """A model buffer, by ``named_buffers()`` name."""
    name: str


@dataclass(frozen=True)
class Derived(Buffer):
    """A tensor computed in forward from buffers (and constants) only, e.g. ``s.view(1, -1, 1, 1)``:
    ``Graph.derived[name]`` says how; it is recomputed from the buffers of the model evaluated."""


# ---------------------------------------------------------------- parameters rearranged in forward

@dataclass(frozen=True)
class ParamView:
    """The parameter ``name`` passed in forward through ops that only select, reorder or
    broadcast its entries (``gamma.view(1, -1, 1, 1)``, ``gamma[:, None, None]``, ``W.T``): every
    entry of the result is one entry of the parameter, so it is a parameter coordinate still.
    ``ops`` are the recorded calls ``(function, args, kwargs, item)`` in order (``item``: the
    output taken from a multi-output call such as ``chunk``, else None)."""
    name: str
    ops: tuple

    def of(self, tensor):
        """The view applied to ``tensor``, a tensor of the parameter's shape: its value in one
        model, or its lifted image (an autograd leaf stays the leaf the gradient reaches)."""
        for func, args, kwargs, item in self.ops:
            tensor = func(tensor, *args, **kwargs)
            tensor = tensor if item is None else tensor[item]
        return tensor


@dataclass
class Node:
    rule: str          # rule name in ``rules.RULES`` ("input" for a model input)
    func: object       # the torch function that was called
    args: tuple
    kwargs: dict
    module: str        # path of the innermost module running when the call was made
    module_type: str
    shape: object      # output shape, or tuple of shapes for multi-output ops
    inplace: bool = False  # the call writes into its first argument
    roles: dict = field(default_factory=dict)  # arguments bound to the rule's names, at capture
    _flat: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def call(self, resolve):
        """``(args, kwargs)`` with every leaf replaced by ``resolve(leaf)`` (nested arguments are
        flattened once)."""
        if self._flat is None:
            nested = any(isinstance(x, (list, tuple, dict))
                         for x in list(self.args) + list(self.kwargs.values()))
            self._flat = pytree.tree_flatten((self.args, self.kwargs)) if nested else ()
        if not self._flat:
            return (tuple(resolve(x) for x in self.args),
                    {key: resolve(x) for key, x in self.kwargs.items()})
        leaves, spec = self._flat
        return pytree.tree_unflatten([resolve(x) for x in leaves], spec)


@dataclass
class Graph:
    nodes: list
    outputs: list                  # Values whose entries are summed into the path-norm
    input_shapes: tuple
    param_names: tuple             # parameters used, in order of first use
    uses: dict = field(default_factory=dict)  # parameter name -> number of nodes using it
    derived: dict = field(default_factory=dict)  # Derived name -> (Node over buffers, item)
    scratch: object = field(default=None, repr=False, compare=False)  # lifted.Scratch
    head: str | None = None        # 'softmax'/'log_softmax' set aside after the outputs (logits)
    head_outputs: tuple = ()       # what the model returns when a head is set aside
    _buffer_names: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def signature(self):
        """What two models must share for a path-metric between them to make sense."""
        return ([(n.rule, n.module, n.shape, references(n.args, n.kwargs)) for n in self.nodes]
                + [(name, function_name(n.func), n.shape, references(n.args, n.kwargs), item)
                   for name, (n, item) in self.derived.items()])

    def with_derived(self, tensors: dict) -> dict:
        """``tensors`` (name -> tensor of one model) and the buffer-derived tensors computed
        from them, by their :class:`Derived` names."""
        memo: dict = {}
        out = dict(tensors)
        out.update({name: self.derive(Derived(name), tensors, memo) for name in self.derived})
        return out

    def derive(self, ref: "Derived", tensors: dict, memo: dict):
        """The value of the buffer-derived tensor ``ref`` computed from ``tensors`` (name ->
        tensor of one model); ``memo`` caches the values of one evaluation."""
        if ref.name not in memo:
            node, item = self.derived[ref.name]

            def resolve(x):
                if isinstance(x, Derived):
                    return self.derive(x, tensors, memo)
                return tensors[x.name] if isinstance(x, Buffer) else x
            args, kwargs = node.call(resolve)
            with torch.no_grad():
                out = node.func(*args, **kwargs)
            memo[ref.name] = out if item is None else out[item]
        return memo[ref.name]

    def buffer_names(self) -> tuple:
        """Buffers the operations read, in order of first use."""
        if self._buffer_names is None:
            self._buffer_names = tuple(dict.fromkeys(
                r.name for n in self.nodes + [d for d, _ in self.derived.values()]
                for r in references(n.args, n.kwargs)
                if isinstance(r, Buffer) and not isinstance(r, Derived)))
        return self._buffer_names

    def shape_of(self, value: "Value") -> tuple:
        """The shape of ``value`` (one output of a multi-output node, if ``value.item``)."""
        shape = self.nodes[value.node].shape
        return tuple(shape if value.item is None else shape[value.item])

    def shared_parameters(self) -> list:
        return sorted(name for name, count in self.uses.items() if count > 1)

    def users(self) -> dict:
        """Node index -> indices of the nodes that read its output."""
        out: dict = {i: [] for i in range(len(self.nodes))}
        for j, node in enumerate(self.nodes):
            for ref in pytree.tree_leaves((node.args, node.kwargs)):
                if isinstance(ref, Value) and j not in out[ref.node]:
                    out[ref.node].append(j)
        return out

    def layers(self) -> dict:
        """Conv, transposed conv and linear layers: layer name -> (node index, weight, bias names).

        A layer is named after its weight parameter without the ``.weight`` suffix, which is the
        module path for ``nn.Conv2d``/``nn.Linear`` and stays meaningful for functional calls.
        """
        out = {}
        for index, node in enumerate(self.nodes):
            if node.rule in ("conv", "conv_transpose", "linear") and \
                    isinstance(node.roles["weight"], Param):
                weight = node.roles["weight"].name
                bias = node.roles["bias"]
                name = weight[:-len(".weight")] if weight.endswith(".weight") else weight
                out[name] = (index, weight, bias.name if isinstance(bias, Param) else None)
        return out

    def refuse_matmul_weights(self, what: str):
        """Raise for parameters used as ``x @ W`` (rule ``matmul``): they are not in
        :meth:`layers` (their ``(in, out)`` layout has output channels along dim 1, which the
        per-channel quantizers and channel scores do not handle), so ``what`` would skip them."""
        found = [(node.rule, node.module, f"the parameter '{node.roles['weight'].name}' is used "
                  f"as x @ W, which {what} does not handle (its (in, out) layout); use nn.Linear "
                  "or F.linear with the weight transposed") for node in self.nodes
                 if node.rule == "matmul" and isinstance(node.roles["weight"], Param)]
        if found:
            raise UnsupportedModelError(
                f"{what}: {found[0][2]} (in '{found[0][1] or '<model>'}')", found)

    def rule_counts(self) -> dict:
        counts: dict = {}
        for node in self.nodes:
            if node.rule != "input":
                counts[node.rule] = counts.get(node.rule, 0) + 1
        return counts


def references(args, kwargs) -> tuple:
    """The parameter and buffer references among ``args`` and ``kwargs`` (nested too)."""
    return tuple(x for x in pytree.tree_leaves((args, kwargs))
                 if isinstance(x, (Param, Buffer, ParamView)))



def function_name(func) -> str:
    """The name a refusal gives a torch function: ``F.relu``, ``Tensor.add``, ``torch.cat``."""
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    name = getattr(func, "__name__", repr(func))
    if isinstance(owner, type) and owner in torch.Tensor.__mro__:
        return f"Tensor.{name}"
    module = getattr(func, "__module__", "") or ""
    if module.startswith(("torch.nn.functional", "torch._C._nn")):
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") else name
