"""The rule registry: :class:`Rule` (every fact about one op), :func:`rule` (registration, with
the family presets), :func:`lookup`, the helpers rules share and :func:`check_graph`.

The family modules (``activations``, ``linear``, ...) import this module and register their rules
when :mod:`pathmetric.core.rules` imports them; nothing here imports a family, so there is no
import cycle. See docs/design.md, "Rules", for what a rule is and the primitives of ``ev`` it
builds its lifted image from.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..ir import Value, fact, values_read
from ..scaled import Scaled

Tensor = torch.Tensor


#: how an op maps channels (dim 1 of its input to dim 1 of its output), for channel scores,
#: coupled groups, pruning and symmetry counts: "preserve" (output channel c reads input channel
#: c only), "mix" (every output channel reads every input channel of its group: conv, linear),
#: "reduce" (a sum or mean over the dims of its ``dim`` role: channels kept unless dim 1 is one),
#: "join" (a concatenation of its inputs along its ``dim`` role), "reindex" (other ops that move
#: entries across channels or positions: reshapes, permutations, padding)
CHANNEL_MAPS = ("preserve", "mix", "reduce", "join", "reindex")


@dataclass
class Rule:
    """Every fact about one op (docs/design.md, "Rules"). ``None`` means "not stated": an analysis
    that needs the fact refuses a model using the op (:func:`~pathmetric.core.ir.fact`), it never
    assumes a default. A family preset (:data:`ACTIVATION`, ...) states the facts its ops share.

    - ``lift(ev, *args, **kwargs)``: the op's image in the lifted network (the only required fact);
    - ``check(*args, **kwargs)``: reason for refusing a call at capture time, or None;
    - ``depth``: neuron layers the op adds to the DAG description (depth ``D`` of the reports);
    - ``max_pool``: inputs of its largest max-pooling neuron (``K``): 0 when it has none, an int,
      or ``max_pool(graph, node) -> int``;
    - ``max_pool_rank``: the ``k`` of its ``k``-max-pooling neurons (1: the largest input wins),
      read where ``max_pool`` is non-zero (the count ``P`` of distinct kinds);
    - ``affine``: a conv/linear-like layer (affine depth, and a layer of the width);
    - ``weighted``: a layer of neurons with their own weights (conv, linear, frozen BatchNorm),
      counted in the width;
    - ``homogeneous``: positively homogeneous and channel-preserving, so a rescaled channel may
      cross it (random rescaling);
    - ``channels``: how it maps channels, one of :data:`CHANNEL_MAPS`;
    - ``transforms_through``: a joint permutation or positive rescaling of the channels of all
      its inputs comes out as the same transform of its output channels, with nothing to absorb
      it (the symmetry counts let a channel group cross it; a residual ``add`` ties the groups
      of its inputs);
    - ``channel_params``: the parameter roles whose slices belong to one output channel, role ->
      the dim of that parameter indexing output channels (``{}``: none): conv and linear
      ``{"weight": 0, "bias": 0}``, a transposed conv's weight (in, out / groups, ...) and the
      ``W`` of ``x @ W`` (in, out) ``1``, frozen BatchNorm's ``weight`` and ``bias``, PReLU's
      slopes. Pruning channel ``c`` removes these slices; for a ``weighted`` op, multiplying
      them by ``lambda > 0`` multiplies output channel ``c`` by ``lambda`` (random rescaling);
      a layer's input channels are along ``1 - dim`` of its weight
      (:func:`~pathmetric.core.ir.channel_view`);
    - ``channel_dim``: the dim of its output holding channels: ``1`` for ``(N, C, ...)`` tensors
      (convolutions and channel-wise ops), ``-1`` for features last (linear, ``x @ W``);
    - ``channel_affine``: a frozen per-channel affine map ``s * x + t`` along dim 1 (BatchNorm,
      instance norm with running statistics), ``s`` and ``t`` computed from its roles
      ``running_mean``, ``running_var``, ``weight``, ``bias`` and ``eps`` by
      :func:`batch_norm_scale` and :func:`batch_norm_shift` (folded into the layer before it);
    - ``param_views``: roles that may hold a parameter rearranged in forward
      (:class:`~pathmetric.core.ir.ParamView`, ``gamma.view(1, -1, 1, 1)``); capture refuses one
      in any other role;
    - ``skips_missing``: a max over windows of its ``x``, so a ``-inf`` entry of ``x`` (a missing
      entry, see ``missing_entries``) never wins and starts no path; ``False`` (the default, the
      safe side): :func:`check_graph` refuses a missing entry read by it;
    - ``missing_entries(node) -> bool``: whether the node's output holds ``-inf`` entries that
      stand for missing entries (``F.pad`` with value ``-inf`` before a max-pooling); None: never;
    - ``index_outputs``: the items of its output that are indices, not values of the network
      (``torch.max(x, dim)``'s second item): :func:`check_graph` refuses their use;
    - ``moves_entries``: its op only copies or moves the entries of its first argument (views,
      reshapes, indexing), so a parameter passed through it in forward stays a parameter
      coordinate (a :class:`~pathmetric.core.ir.ParamView`, read by capture);
    - ``quantization``: its part in a deployed model's quantization (``"point"``: a quantize or
      fake-quantize, whose node records a grid; ``"dequantize"``; ``"qparams"``: a dynamic
      point's grid computed from the activation; ``"cast"``: a dtype change, a rounding point
      where it rounds to a narrower floating dtype, :func:`~pathmetric.core.rules.structure.rounding`);
      None for every other op;
    - ``identity``: its op is the identity map of the function analysed (dropout in eval mode),
      so an export or a backend may drop it: two graphs of one function are compared without it
      (the deployed model against the float one);
    - ``head``: the output head it is when it ends the network (``"softmax"``, ``"log_softmax"``),
      set aside at capture (:func:`~pathmetric.core.rules.heads.set_aside_head`); None for every
      other op.
    """
    name: str
    funcs: tuple
    lift: Callable
    check: Callable | None = None
    depth: int | None = None
    max_pool: object = None
    max_pool_rank: int | None = None
    affine: bool | None = None
    weighted: bool | None = None
    homogeneous: bool | None = None
    channels: str | None = None
    transforms_through: bool | None = None
    channel_params: dict | None = None
    channel_dim: int | None = None
    channel_affine: bool | None = None
    param_views: tuple = ()
    skips_missing: bool = False
    missing_entries: object = None
    index_outputs: tuple = ()
    moves_entries: bool = False
    quantization: str | None = None
    identity: bool = False
    head: str | None = None
    _signature: inspect.Signature | None = field(default=None, init=False, repr=False,
                                                 compare=False)

    def bind(self, args, kwargs) -> dict:
        """The recorded arguments bound to the names of :attr:`lift` (defaults filled in): the
        argument roles (``x``, ``weight``, ``bias``, ``groups``, ...) kept on the node."""
        if self._signature is None:
            self._signature = inspect.signature(self.lift)
        signature = self._signature
        bound = signature.bind_partial(None, *args, **kwargs)
        bound.apply_defaults()
        roles = dict(bound.arguments)
        for name, parameter in signature.parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                roles.pop(name, None)
        roles.pop(next(iter(signature.parameters)), None)   # ev
        roles.pop("func", None)
        return roles

    def max_pool_kernel(self, graph, node) -> int:
        """Inputs of the largest max-pooling neuron of ``node`` (0: none)."""
        kernel = fact(node, "max_pool", "the max-pooling neurons it adds")
        return kernel(graph, node) if callable(kernel) else kernel


RULES: dict = {}
_BY_FUNC: dict = {}


# ---------------------------------------------------------------- family presets
#
# The facts an op family shares; a rule names its family and states what is particular to it
# (a fact it states overrides the preset's). A fact a preset leaves out (``max_pool`` of
# MAX_NEURONS) is one every rule of the family must state.

#: no parameter slices, no max-pooling neurons, not a conv/linear layer, channels along dim 1
PARAMETER_FREE = dict(max_pool=0, max_pool_rank=1, affine=False, weighted=False,
                      channel_params={}, channel_dim=1, channel_affine=False)

#: positively homogeneous activations that keep each channel apart (ReLU and its kin, identity
#: maps in eval mode, casts): ``f(lambda x) = lambda f(x)`` for ``lambda > 0``, per channel
ACTIVATION = dict(PARAMETER_FREE, depth=0, homogeneous=True, channels="preserve",
                  transforms_through=True)

#: clipped activations ``clamp(v, a, b) = a + relu(v - a) - relu(v - b)``: an identity output
#: neuron fed by one layer of ReLU neurons, with constant biases (so not homogeneous)
CLIPPED = dict(PARAMETER_FREE, depth=2, homogeneous=False, channels="preserve",
               transforms_through=False)

#: max and min neurons over several activations or entries (``max_pool`` stated by each rule)
MAX_NEURONS = dict(PARAMETER_FREE, depth=1, homogeneous=False, channels="preserve",
                   transforms_through=False, max_pool=None)

#: one layer of neurons per window, with fixed non-negative (or resampling) coefficients:
#: poolings and interpolation, positively homogeneous and channel-preserving
POOLING = dict(PARAMETER_FREE, depth=1, homogeneous=True, channels="preserve",
               transforms_through=True)

#: sums and means over the dims of their ``dim`` role
REDUCTION = dict(PARAMETER_FREE, depth=1, homogeneous=False, channels="reduce",
                 transforms_through=False)

#: conv/linear-like layers: weights ``(out, in, ...)`` and bias sliced along dim 0 per output
#: channel, every output channel reading every input channel of its group
WEIGHTED_LAYER = dict(depth=1, max_pool=0, max_pool_rank=1, affine=True, weighted=True,
                      homogeneous=False, channels="mix", transforms_through=False,
                      channel_params={"weight": 0, "bias": 0}, channel_dim=1,
                      channel_affine=False)

#: sums and scalings of activations (add, sub, neg, mul, div): entrywise, channels kept
ARITHMETIC = dict(PARAMETER_FREE, depth=1, homogeneous=False, channels="preserve",
                  transforms_through=True)

#: ops that copy or move entries (coefficients one, no neurons): reshapes, padding, concatenation
STRUCTURE = dict(PARAMETER_FREE, depth=0, homogeneous=False, channels="reindex",
                 transforms_through=True)


def rule(name, *funcs, family=None, check=None, **facts):
    """Register ``lift`` as the rule of ``funcs`` with the facts of :class:`Rule`: those of the
    preset ``family`` (a dict such as :data:`ACTIVATION`), then ``facts`` over them."""
    stated = {key: dict(value) if isinstance(value, dict) else value
              for key, value in {**(family or {}), **facts}.items()}

    def register(lift):
        entry = Rule(name, funcs, lift, check, **stated)
        RULES[name] = entry
        for f in funcs:
            _BY_FUNC[f] = entry
        return lift
    return register


def unregister(name):
    """Remove the rule ``name`` and its functions from the registry."""
    entry = RULES.pop(name)
    for f in entry.funcs:
        _BY_FUNC.pop(f, None)


def lookup(func):
    """The :class:`Rule` registered for the torch function ``func``, or None."""
    try:
        return _BY_FUNC.get(func)
    except TypeError:  # unhashable callables are never ours
        return None


_QUERY_NAMES = {"size", "dim", "numel", "__len__", "is_contiguous", "is_floating_point",
                "element_size", "nelement", "ndimension", "__get__", "get_device", "stride",
                "__format__", "__hash__", "data_ptr", "storage_offset", "__repr__"}


def is_query(func) -> bool:
    """Calls that read shapes, dtypes or devices, not values."""
    return getattr(func, "__name__", "") in _QUERY_NAMES


# Refused ops that deserve a precise reason (anything unknown is refused as well).
REFUSED = {name: why for names, why in [
    (("F.hardswish", "F.hardswish_"),
     "hardswish is x * hardsigmoid(x), a product of two activations: no path-lifting exists"),
    (("F.gelu", "F.silu", "F.mish", "F.elu", "F.selu", "F.celu", "F.softplus", "torch.sigmoid",
      "Tensor.sigmoid", "F.sigmoid", "torch.tanh", "Tensor.tanh", "F.tanh", "F.logsigmoid"),
     "a smooth activation is not ReLU-like: no path-lifting exists for it"),
    (("F.softmin",), "softmax is not piecewise linear"),
    (("F.layer_norm", "F.group_norm", "F.local_response_norm", "F.normalize",
      "F.rms_norm"), "a data-dependent normalisation is not in the path-lifting model"),
    (("F.scaled_dot_product_attention", "F.multi_head_attention_forward", "torch.bmm",
      "torch.einsum"),
     "attention and products of two activations are not in the path-lifting model"),
]  for name in names}


def is_constant(value):
    """A fixed coefficient given as a number or a constant tensor."""
    return isinstance(value, (int, float)) or isinstance(value, Tensor)


def is_traced(x) -> bool:
    """At capture: whether ``x`` is input-dependent (a value of the graph, not a parameter)."""
    return isinstance(x, Value)


def is_lifted_value(x) -> bool:
    """At evaluation: whether ``x`` is a lifted value (a tuple of scaled tensors)."""
    return isinstance(x, tuple) and bool(x) and isinstance(x[0], Scaled)


def abs_pow(value, q):
    """``|value|^q`` of a number or a tensor (a fixed coefficient lifted)."""
    return abs(value) ** q if isinstance(value, (int, float)) else value.abs() ** q


def spatial_dims(shape):
    """The spatial sizes of an ``(N, C, *spatial)`` shape."""
    return tuple(shape[2:])


def offset(ev, value, spread=None):
    """Paths that start at an additive constant or parameter ``value`` (a bias; a constant is a
    parameter coordinate both models share): lifted ``|value|^q``, broadcast by ``spread``."""
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value), dtype=torch.float64)
    return ev.bias(ev.param(None, value), spread or (lambda p: p))


def ntuple(value, n):
    """``value`` as an ``n``-tuple (a kernel size, stride or padding given as one int or per dim)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def reduced_count(shape, dim):
    """How many entries a reduction over ``dim`` (None or ``()``: all) sums into each result
    entry."""
    if dim is None or isinstance(dim, (tuple, list)) and not dim:  # dim=(): every dim, as torch
        return math.prod(shape)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return math.prod(shape[d] for d in dims)


def check_graph(nodes, outputs) -> list:
    """Facts a single op cannot check at capture: ``[(index, reason)]`` for a missing (``-inf``)
    entry read by anything but the ``x`` of a rule that ``skips_missing``, and for an item of
    ``index_outputs`` (max/min indices) used as a value or returned."""
    def missing(source):
        return source.rule is not None and source.rule.missing_entries is not None and \
            source.rule.missing_entries(source)

    def indices(source, ref):
        return source.rule is not None and ref.item in source.rule.index_outputs

    bad = []
    for node in nodes:
        for ref in values_read(node):
            source = nodes[ref.node]
            if missing(source) and not (node.rule.skips_missing and ref is node.roles.get("x")):
                bad.append((ref.node, "-inf padding is only a missing entry before a max-pooling"))
            if indices(source, ref):
                bad.append((ref.node, "max/min indices are not a value of the network"))
    for ref in outputs:
        source = nodes[ref.node]
        if missing(source) or indices(source, ref):
            bad.append((ref.node, "a model output that is not a value of the network"))
    return bad
