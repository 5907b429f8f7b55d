"""Rules: one per op, with every fact about it (DESIGN.md sections 1 and 2; see :class:`Rule`).

A rule receives the evaluation context ``ev`` and the op's arguments, where every input-dependent
tensor has become a lifted value and every parameter or buffer a reference. It builds the lifted op
from the primitives of ``ev``, which the algebra of each pass defines
(:mod:`pathmetric.core.algebras`), so the same rule serves the L_q path-norm pass and the (A, D)
path-metric pass:

- ``ev.param(fn, *refs)``: the lifted parameter ``|fn(*refs)|^q`` (``|ref|^q`` when ``fn`` is
  None), as the pass carries it,
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
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from ...errors import UnsupportedModelError
from ..ir import Buffer, Param, Value, fact
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
    """Every fact about one op (DESIGN.md section 2). ``None`` means "not stated": an analysis that
    needs the fact refuses a model using the op (:func:`~pathmetric.core.ir.fact`), it never assumes a default.

    - ``lift(ev, *args, **kwargs)``: the op's image in the lifted network (the only required fact);
    - ``check(*args, **kwargs)``: reason for refusing a call at capture time, or None;
    - ``layers``: neuron layers the op adds to the DAG description (depth ``D`` of the reports);
    - ``max_pool``: inputs of its largest max-pooling neuron (``K``): 0 when it has none, an int,
      or ``max_pool(graph, node) -> int``;
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
      in any other role.
    """
    name: str
    funcs: tuple
    lift: object
    check: object = None
    layers: int | None = None
    max_pool: object = None
    affine: bool | None = None
    weighted: bool | None = None
    homogeneous: bool | None = None
    channels: str | None = None
    transforms_through: bool | None = None
    channel_params: dict | None = None
    channel_dim: int | None = None
    channel_affine: bool | None = None
    param_views: tuple = ()
    _signature: object = field(default=None, init=False, repr=False, compare=False)

    def bind(self, args, kwargs) -> dict:
        """The recorded arguments bound to the names of :attr:`lift` (defaults filled in): the
        argument roles (``x``, ``weight``, ``bias``, ``groups``, ...) kept on the node."""
        if self._signature is None:
            self._signature = inspect.signature(self.lift)
        bound = self._signature.bind_partial(None, *args, **kwargs)
        bound.apply_defaults()
        roles = dict(bound.arguments)
        for name, parameter in self._signature.parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                roles.pop(name, None)
        roles.pop(next(iter(self._signature.parameters)), None)   # ev
        roles.pop("func", None)
        return roles

    def max_pool_kernel(self, graph, node) -> int:
        """Inputs of the largest max-pooling neuron of ``node`` (0: none)."""
        kernel = fact(node, "max_pool", "the max-pooling neurons it adds")
        return kernel(graph, node) if callable(kernel) else kernel


RULES: dict = {}
_BY_FUNC: dict = {}


def rule(name, *funcs, check=None, **facts):
    """Register ``lift`` as the rule of ``funcs`` with the facts of :class:`Rule`."""
    def register(lift):
        entry = Rule(name, funcs, lift, check, **facts)
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
    """How many entries a reduction over ``dim`` (None: all) sums into each result entry."""
    if dim is None:
        return math.prod(shape)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return math.prod(shape[d] for d in dims)


# The op families; importing them registers their rules.
from . import activations, linear, pooling, arithmetic, structure, heads  # noqa: E402,F401
from . import quantization, aten  # noqa: E402,F401  (deployed models, exported programs)
from .heads import HEAD_NOTE, set_aside_head  # noqa: E402,F401
from .linear import batch_norm_scale, batch_norm_shift  # noqa: E402,F401
from .activations import prelu  # noqa: E402,F401


def check_graph(nodes, outputs) -> list:
    """Facts a single op cannot check at capture: ``[(index, reason)]`` for a ``-inf`` padding
    read by anything but a max-pooling, and for max/min indices used as values."""
    bad = []
    pools = {"max_pool", "adaptive_max_pool", "max"}
    for index, node in enumerate(nodes):
        for ref in pytree.tree_leaves((node.args, node.kwargs)):
            if not is_traced(ref):
                continue
            source = nodes[ref.node]
            if source.rule == "pad" and _pads_minus_infinity(source) and (
                    node.rule not in pools or ref is not node.args[0]):
                bad.append((ref.node, "-inf padding is only a missing entry before a max-pooling"))
            if source.rule in ("max", "min") and ref.item == 1:
                bad.append((ref.node, "max/min indices are not a value of the network"))
    for ref in outputs:
        source = nodes[ref.node]
        if source.rule == "pad" and _pads_minus_infinity(source) or \
                source.rule in ("max", "min") and ref.item == 1:
            bad.append((ref.node, "a model output that is not a value of the network"))
    return bad


def _pads_minus_infinity(node) -> bool:
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    return value == -math.inf
