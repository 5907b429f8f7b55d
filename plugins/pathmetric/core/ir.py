"""The engine's graph: nodes, the values and references they read, the graph and its structure.

A :class:`Graph` is what :mod:`pathmetric.core.capture` records; every analysis reads it. Node
arguments are kept as recorded (``args``, ``kwargs``), with every input-dependent tensor replaced
by a :class:`Value` and every parameter or buffer by a :class:`Param` or :class:`Buffer`
reference; ``roles`` holds the same arguments bound once, at capture, to the names of the node's
rule (``x``, ``weight``, ``bias``, ``groups``, ...), so no analysis reads argument positions.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.utils import _pytree as pytree

from ..errors import UnsupportedModelError

#: a model's example inputs: a tensor or a tuple of tensors (only their shapes matter)
Inputs = torch.Tensor | tuple
#: what a model is compared with: a model of the same architecture, or replacement tensors
#: ``{parameter or buffer name: tensor}``
Other = torch.nn.Module | dict


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


class Part(enum.Enum):
    """What a lifted parameter that a rule computes from a module's tensors is (``part=`` of
    ``ev.param``): the key the score functions find it by (:class:`Computed`)."""
    SCALE = "scale"    # a frozen BatchNorm's s = gamma / sqrt(var + eps)
    SHIFT = "shift"    # its t = beta - mean * s
    SLOPE = "slope"    # PReLU's slopes, checked in [0, 1]


@dataclass(frozen=True)
class Computed:
    """Key of the lifted parameter ``part`` computed by the rule of the node in ``module``
    (``part`` None: a computed parameter that no analysis reads by name)."""
    module: str
    part: Part | None


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
    rule_name: str     # name of its rule in ``rules.RULES`` ("input" for a model input)
    func: object       # the torch function that was called
    args: tuple
    kwargs: dict
    module: str        # path of the innermost module running when the call was made
    module_type: str
    shape: object      # output shape, or tuple of shapes for multi-output ops
    inplace: bool = False  # the call writes into its first argument
    dtype: object = None   # output dtype, or tuple of dtypes for multi-output ops
    roles: dict = field(default_factory=dict)  # arguments bound to the rule's names, at capture
    rule: object = field(default=None, repr=False, compare=False)  # its rules.Rule (None: input)
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

    def signature(self) -> list:
        """What two models must share for a path-metric between them to make sense: per node
        (ops, then tensors derived from buffers), its op, module, output shape and dtype and
        every argument, constants included (:func:`constant_key`: numbers exactly, constant
        tensors by value), parameters and buffers by name."""
        return ([node_signature(n) for n in self.nodes]
                + [(name, item) + node_signature(n) for name, (n, item) in self.derived.items()])

    def difference(self, other: "Graph") -> str | None:
        """Where ``other`` (the graph of a second model) differs from this graph, in words naming
        the op, its module and the differing value (None when the signatures are equal)."""
        mine, theirs = self.signature(), other.signature()
        if mine == theirs:
            return None
        if len(self.nodes) != len(other.nodes) or len(mine) != len(theirs):
            return (f"{len(self.nodes)} vs {len(other.nodes)} operations "
                    f"({len(self.derived)} vs {len(other.derived)} tensors derived from buffers)")
        nodes = self.nodes + [n for n, _ in self.derived.values()]
        others = other.nodes + [n for n, _ in other.derived.values()]
        index, a, b = next((i, a, b) for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        node, twin = nodes[index], others[index]
        where = f"{function_name(node.func) if node.func else node.rule_name} in '{node.module or '<model>'}'"
        for what, k in (("op", -6), ("function", -5), ("module", -4), ("output shape", -3),
                        ("output dtype", -2)):
            if a[k] != b[k]:
                return f"{where}: {what} {a[k]!r} vs {b[k]!r}"
        roles = node.roles if node.roles.keys() == twin.roles.keys() else {}
        for role, value in roles.items():
            if arguments_key((value,), {}) != arguments_key((twin.roles[role],), {}):
                return f"{where}: its '{role}' is {_shown(value)} vs {_shown(twin.roles[role])}"
        return f"{where}: its arguments differ ({_shown(node.args)} vs {_shown(twin.args)})"

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

    def resolver(self, tensors: dict):
        """``resolve(ref)``: the value of a parameter, parameter view, buffer, buffer-derived
        tensor or constant of one model (``tensors``: its parameters and buffers by name); the
        derived tensors are computed once per resolver."""
        memo: dict = {}

        def resolve(ref):
            if isinstance(ref, Derived):
                return self.derive(ref, tensors, memo)
            if isinstance(ref, ParamView):
                return ref.of(tensors[ref.name])
            if isinstance(ref, (Param, Buffer)):
                return tensors[ref.name]
            return ref
        return resolve

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
            for ref in values_read(node):
                if j not in out[ref.node]:
                    out[ref.node].append(j)
        return out

    def last_reads(self, kept=()) -> dict:
        """Node index -> the nodes whose values it is the last to read (a value nothing reads:
        its own node): an evaluation may drop them once it has run (the outputs, head outputs
        and ``kept`` nodes excepted), so that memory is reused as in the model's own forward."""
        keep = {v.node for v in list(self.outputs) + list(self.head_outputs)} | set(kept)
        drops: dict = {}
        for i, readers in self.users().items():
            if i not in keep:
                drops.setdefault(max(readers, default=i), []).append(i)
        return drops

    @property
    def inputs(self) -> tuple:
        """Indices of the nodes that are model inputs, in order."""
        return tuple(i for i, node in enumerate(self.nodes) if node.rule_name == "input")

    def operations(self) -> list:
        """``(index, node)`` of every node that is an op (all but the model inputs), in order."""
        return [(i, node) for i, node in enumerate(self.nodes) if node.rule_name != "input"]

    def quantized(self) -> bool:
        """Whether a node is a quantization point (its rule's ``quantization`` is ``"point"``):
        the graph of a deployed model."""
        return any(node.rule.quantization == "point" for _, node in self.operations())

    def layers(self) -> dict:
        """Conv/linear-like layers with a parameter weight: layer name -> :class:`Layer`.

        A layer is a node whose rule is ``affine`` (conv, transposed conv, linear, ``x @ W``) and
        whose ``weight`` role is a parameter. It is named after the weight without the
        ``.weight`` suffix: the module path for ``nn.Conv2d``/``nn.Linear``, the parameter's name
        for ``x @ self.W``, meaningful for functional calls too.
        """
        out = {}
        for index, node in self.operations():
            if not fact(node, "affine", "whether it is a conv/linear-like layer") \
                    or not isinstance(node.roles["weight"], Param):
                continue
            weight = node.roles["weight"].name
            bias = node.roles.get("bias")
            name = weight[:-len(".weight")] if weight.endswith(".weight") else weight
            out[name] = Layer(index, weight, bias.name if isinstance(bias, Param) else None)
        return out

    def output_layers(self) -> set:
        """Names of the :meth:`layers` whose output is an output of the model."""
        outputs = {v.node for v in self.outputs}
        return {name for name, layer in self.layers().items() if layer.node in outputs}

    def batch_norm_after(self) -> dict:
        """Layer name -> index of the frozen BatchNorm node (a rule with ``channel_affine``) that
        reads the layer's output directly, for the :meth:`layers` that have one."""
        users = self.users()
        out = {}
        for name, layer in self.layers().items():
            for j in users[layer.node]:
                node = self.nodes[j]
                if fact(node, "channel_affine", "whether it is a frozen per-channel affine map") \
                        and node.roles["x"] == Value(layer.node):
                    out[name] = j
        return out

    def rule_counts(self) -> dict:
        counts: dict = {}
        for node in self.nodes:
            if node.rule_name != "input":
                counts[node.rule_name] = counts.get(node.rule_name, 0) + 1
        return counts


class Layer(NamedTuple):
    """A conv/linear-like layer of a :class:`Graph` (:meth:`Graph.layers`): the index of its
    node, the name of its weight parameter and of its bias parameter (None if it has none)."""
    node: int
    weight: str
    bias: str | None


def channel_view(node: Node, role: str, tensor: torch.Tensor, side: str = "out") -> torch.Tensor:
    """``tensor``, the value of parameter role ``role`` of ``node``, as a view ``(G, R, P, rest)``
    in which channel ``c`` is ``view[c // P, :, c % P, :]``: an output channel (``side="out"``)
    or, for the weight, an input channel (``side="in"``).

    The rule's ``channel_params[role]`` is the dim ``d`` of ``tensor`` holding output channels;
    a weight's input channels are along ``1 - d``. PyTorch keeps whole channels along dim 0
    (``G = R = 1``) and, with ``groups``, the ``P`` channels of each group along dim 1
    (``G = groups``, ``R = size(0) / groups``): conv and linear weights are ``(out, in / groups,
    ...)``, transposed convs ``(in, out / groups, ...)``, ``x @ W`` takes ``W`` as ``(in, out)``.
    """
    dims = fact(node, "channel_params", "which parameter slices belong to an output channel")
    if role not in dims or tensor.dim() <= (dims[role] if side == "out" else 1 - dims[role]):
        why = (f"its '{role}' of shape {tuple(tensor.shape)} has no {side}put channels "
               f"(channel_params {dims})")
        raise UnsupportedModelError(f"{node.rule_name} in '{node.module or '<model>'}': {why}",
                                    [(node.rule_name, node.module, why)])
    dim = dims[role] if side == "out" else 1 - dims[role]
    if dim == 0:
        return tensor.view(1, 1, tensor.shape[0], -1)
    groups = node.roles.get("groups", 1)
    return tensor.view(groups, tensor.shape[0] // groups, tensor.shape[1], -1)


def channel_count(view: torch.Tensor) -> int:
    """The number of channels of a :func:`channel_view`: ``G * P``."""
    return view.shape[0] * view.shape[2]


def broadcast_channels(values: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """``values``, one per channel of the :func:`channel_view` ``view`` in channel order, shaped
    ``(G, 1, P, 1)`` to broadcast over it (channel ``c`` at ``[c // P, :, c % P, :]``)."""
    return values.reshape(view.shape[0], 1, view.shape[2], 1)


def channel_sums(node: Node, role: str, tensor: torch.Tensor, side: str = "out") -> torch.Tensor:
    """The sum of ``tensor`` over each channel of :func:`channel_view` (a 1-D tensor)."""
    return channel_view(node, role, tensor, side).sum(dim=(1, 3)).reshape(-1)


def fact(node: Node, name: str, what: str):
    """The fact ``name`` of ``node``'s rule (see ``rules.Rule``), described by ``what`` for the
    error; an UnsupportedModelError naming the op when the rule does not state it."""
    value = getattr(node.rule, name, None)
    if value is None:
        why = f"the rule of {node.rule_name} does not state {what} ({name}), which this analysis needs"
        raise UnsupportedModelError(
            f"{node.rule_name} in '{node.module or '<model>'}': {why}; add it to the rule "
            "(pathmetric/core/rules)", [(node.rule_name, node.module, why)])
    return value


def leaves(tree) -> list:
    """``pytree.tree_leaves(tree)``, plain tuples, lists and dicts walked here: torch's walk asks
    every node for its pytree type (about a microsecond each, ten times the walk itself); any
    other container pytree knows (a named tuple, ``torch.Size``, a registered class) is its."""
    kind = type(tree)
    if kind is tuple or kind is list:
        return [leaf for item in tree for leaf in leaves(item)]
    if kind is dict:
        return [leaf for item in tree.values() for leaf in leaves(item)]
    if kind in pytree.SUPPORTED_NODES or isinstance(tree, tuple):
        return pytree.tree_leaves(tree)
    return [tree]


def mapped(function, tree):
    """``pytree.tree_map(function, tree)``, plain tuples, lists and dicts rebuilt here
    (:func:`leaves`)."""
    kind = type(tree)
    if kind is tuple or kind is list:
        return kind(mapped(function, item) for item in tree)
    if kind is dict:
        return {key: mapped(function, item) for key, item in tree.items()}
    if kind in pytree.SUPPORTED_NODES or isinstance(tree, tuple):
        return pytree.tree_map(function, tree)
    return function(tree)


def values_read(node: Node) -> list:
    """The :class:`Value` references among ``node``'s arguments (nested too): what it reads."""
    return [x for x in leaves((node.args, node.kwargs)) if isinstance(x, Value)]


def references(args, kwargs) -> tuple:
    """The parameter and buffer references among ``args`` and ``kwargs`` (nested too)."""
    return tuple(x for x in leaves((args, kwargs)) if isinstance(x, (Param, Buffer, ParamView)))



def constant_key(x):
    """``x`` in a form that compares equal exactly when two recorded arguments are the same: a
    constant tensor by dtype, shape and bytes, a number by its float bits (``-0.0`` and NaN too), a
    :class:`ParamView` by its name and rearranging calls; anything else as it is."""
    if isinstance(x, torch.Tensor):
        data = x.detach().cpu().contiguous()
        return ("tensor", data.dtype, tuple(data.shape),
                data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    if type(x) in (float, int):  # 0 and 0.0 are one coefficient (ReLU6 passes ints)
        return ("number", float(x).hex()) if type(x) is float or abs(x) < 2**53 else x
    if isinstance(x, ParamView):
        return ("view", x.name, tuple((function_name(f), arguments_key(a, k), item)
                                      for f, a, k, item in x.ops))
    if callable(x) and not isinstance(x, type):
        return ("function", function_name(x))
    return x


def _shown(value) -> str:
    """A short description of a recorded argument for an error message."""
    if isinstance(value, torch.Tensor):
        return (f"a constant tensor of shape {tuple(value.shape)} "
                f"{value.reshape(-1)[:4].tolist()}{'...' if value.numel() > 4 else ''}")
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def arguments_key(args, kwargs):
    """``(args, kwargs)`` with every leaf replaced by its :func:`constant_key`."""
    return mapped(constant_key, (tuple(args), dict(kwargs)))


def node_signature(node: Node) -> tuple:
    """One node as :meth:`Graph.signature` compares it."""
    return (node.rule_name, function_name(node.func) if node.func else None, node.module, node.shape,
            node.dtype, arguments_key(node.args, node.kwargs))


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
