"""Rules: one per op, with every fact about it (DESIGN.md sections 1 and 2; see :class:`Rule`).

A rule receives the evaluation context ``ev`` and the op's arguments, where every input-dependent
tensor has become a lifted value and every parameter or buffer a reference. It builds the lifted op
from the primitives of ``ev`` (see :class:`pathmetric.core.interpreter.Lifting`), so the same rule serves the L_q path-norm
pass and the (A, D) path-metric pass:

- ``ev.fixed(x, fn)``: a fixed map whose coefficients are already lifted (``|c|**q``),
- ``ev.linear(x, fn, p)``: a map whose coefficients are the parameter ``p`` (lifted by ``ev``),
- ``ev.bias(p, fn)``: paths that start at the bias ``p`` (``fn`` broadcasts it),
- ``ev.add(values)``: a sum of incoming edges of coefficient one.
- ``ev.affine(x, s, t)``: ``s * x + t`` with lifted per-channel (dim 1) parameters ``s`` and
  ``t``, the image of a frozen BatchNorm, in one pass.

``ev.terms(n)`` records that every entry of the result sums at most ``n`` terms, which bounds the
floating-point error that certificates are rounded up by.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from ...errors import UnsupportedModelError
from ..ir import Buffer, Param, ParamView, Value
from ..scaled import Scaled

Tensor = torch.Tensor


#: how an op maps channels (dim 1 of its input to dim 1 of its output), for channel scores,
#: coupled groups, pruning and symmetry counts: "preserve" (output channel c reads input channel
#: c only), "mix" (every output channel reads every input channel of its group: conv, linear),
#: "reindex" (entries move across channels or positions: reshapes, concatenation, reductions)
CHANNEL_MAPS = ("preserve", "mix", "reindex")


@dataclass
class Rule:
    """Every fact about one op (DESIGN.md section 2). ``None`` means "not stated": an analysis that
    needs the fact refuses a model using the op (:func:`fact`), it never assumes a default.

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
    - ``transforms_through``: a joint permutation or positive rescaling of its input channels
      comes out as the same transform of its output channels, with nothing to absorb it (the
      symmetry counts let a channel group cross it);
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


def fact(node, name: str, what: str):
    """The fact ``name`` of ``node``'s rule; UnsupportedModelError naming the op if not stated."""
    value = getattr(RULES[node.rule], name)
    if value is None:
        why = f"the rule of {node.rule} does not state {what} ({name}), which this analysis needs"
        raise UnsupportedModelError(
            f"{node.rule} in '{node.module or '<model>'}': {why}; add it to the rule "
            "(pathmetric/core/rules)", [(node.rule, node.module, why)])
    return value


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


def _const(value):
    """A fixed coefficient given as a number or a constant tensor."""
    return isinstance(value, (int, float)) or isinstance(value, Tensor)


def _lifted(x) -> bool:
    return isinstance(x, Value)


def _activation(x) -> bool:
    """At evaluation: whether ``x`` is a lifted value (a tuple of scaled tensors)."""
    return isinstance(x, tuple) and bool(x) and isinstance(x[0], Scaled)


def _abs_pow(value, q):
    return abs(value) ** q if isinstance(value, (int, float)) else value.abs() ** q


def _spatial(shape):
    return tuple(shape[2:])


# ---------------------------------------------------------------- inputs and outputs of neurons

@rule("relu", F.relu, torch.relu, Tensor.relu, F.relu_, torch.relu_, Tensor.relu_,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def relu(ev, x, *args, **kwargs):
    """ReLU neurons are identity neurons in the lifted network."""
    return x


@rule("dropout", F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
      F.feature_alpha_dropout,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def dropout(ev, x, *args, **kwargs):
    """Dropout is the identity in eval mode, which is the function analysed."""
    return x


def _check_slope(x, negative_slope=0.01, *args, **kwargs):
    if not 0.0 <= negative_slope <= 1.0:
        return f"LeakyReLU slope {negative_slope} is outside [0, 1]: max(x, a*x) needs 0 <= a <= 1"
    return None


@rule("leaky_relu", F.leaky_relu, F.leaky_relu_, check=_check_slope,
      layers=2, max_pool=2, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def leaky_relu(ev, x, negative_slope=0.01, inplace=False, *, func=None):
    """``max(x, a x)``: a max neuron over ``x`` and the identity neuron ``a x``; lifted
    ``x + |a|^q x``."""
    ev.terms(2)
    factor = 1.0 + abs(negative_slope) ** ev.q
    return ev.fixed(x, lambda m: m * factor)


@rule("prelu", F.prelu,
      layers=2, max_pool=2, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=True)
def prelu(ev, x, weight, *, func=None):
    """PReLU with learnt slopes ``a`` in [0, 1]: lifted ``x + |a|^q x`` (slopes are parameters)."""
    def slope(a):
        if a.numel() and (a.min() < 0 or a.max() > 1):
            raise ev.unsupported("PReLU slope outside [0, 1]: max(x, a*x) needs 0 <= a <= 1")
        return a
    shape = (-1,) + (1,) * (len(ev.shape(x)) - 2) if len(ev.shape(x)) > 1 else (-1,)
    a = ev.param(slope, weight)
    ev.terms(2)
    return ev.add([x, ev.linear(x, lambda m, p: m * p.reshape(shape), a)])


def _check_rrelu(x, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    if training:
        return "RReLU in training mode draws random slopes"
    return _check_slope(x, (lower + upper) / 2)


@rule("rrelu", F.rrelu, F.rrelu_, check=_check_rrelu,
      layers=2, max_pool=2, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def rrelu(ev, x, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False, *, func=None):
    """RReLU in eval mode is LeakyReLU with slope ``(lower + upper) / 2``."""
    return leaky_relu(ev, x, (lower + upper) / 2)


def _check_threshold(x, threshold, value, inplace=False):
    if threshold != 0 or value != 0:
        return (f"threshold({threshold}, {value}) jumps from {value} to {threshold} (a "
                "discontinuity): only Threshold(0, 0), which is ReLU, is piecewise linear")
    return None


@rule("threshold", F.threshold, F.threshold_, torch.threshold, torch.threshold_,
      check=_check_threshold,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def threshold(ev, x, *args, func=None, **kwargs):
    """``threshold(x, 0, 0)`` is ReLU: an identity neuron in the lifted network."""
    return x


# ---------------------------------------------------------------- clipped activations
#
# DESIGN.md section 1: with ``v`` the identity neuron holding the pre-activation,
# ``clamp(v, a, b) = a + relu(v - a) - relu(v - b)``, ``clamp(v, min=a) = a + relu(v - a)`` and
# ``clamp(v, max=b) = v - relu(v - b)``: ReLU copies read ``v`` through edges of coefficient one,
# and the constants are biases that both models share. Each form is an identity output neuron
# fed by one layer of ReLU neurons (two neuron layers), not positively homogeneous.

def offset(ev, value, spread=None):
    """Paths that start at an additive constant or parameter ``value`` (a bias; a constant is a
    parameter coordinate both models share): lifted ``|value|^q``, broadcast by ``spread``."""
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value), dtype=torch.float64)
    return ev.bias(ev.param(None, value), spread or (lambda p: p))


def clip(ev, x, low, high):
    """``clamp(v, low, high)`` as neurons: lifted ``copies * v`` (``copies`` = 1 with a lower
    bound only, else 2) plus the paths from the biases: ``|low|^q`` twice for a lower bound (the
    output bias and the first ReLU's), ``|high|^q`` once for an upper bound."""
    factor = 1.0 if high is None else 2.0
    biases = ([] if low is None else [low] * 2) + ([] if high is None else [high])
    ev.terms(len(biases) + 2)
    y = ev.fixed(x, lambda m: m * factor)
    return ev.add([y] + [offset(ev, b) for b in biases if b != 0])


def _scalar(value) -> bool:
    return value is None or isinstance(value, (int, float)) and math.isfinite(value)


def _check_bounds(low, high):
    if not (_scalar(low) and _scalar(high)):
        return ("a clamp bound that is a tensor (a parameter, a buffer or an activation) is not a "
                "fixed scalar bias; use scalar min/max")
    if low is not None and high is not None and low > high:
        return f"clamp with min {low} > max {high} is a constant, not a ReLU network"
    return None


def _check_hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
    if _scalar(min_val) and _scalar(max_val) and min_val >= max_val:
        return f"hardtanh needs min_val < max_val, got {min_val} and {max_val}"
    return _check_bounds(min_val, max_val)


@rule("hardtanh", F.hardtanh, F.hardtanh_, check=_check_hardtanh,
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def hardtanh(ev, x, min_val=-1.0, max_val=1.0, inplace=False, *, func=None):
    """``clamp(v, a, b) = a + relu(v - a) - relu(v - b)``: lifted ``2 v + 2 |a|^q + |b|^q``
    (``nn.ReLU6`` is ``hardtanh(v, 0, 6)``: ``2 v + 6^q``)."""
    return clip(ev, x, min_val, max_val)


@rule("relu6", F.relu6,
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def relu6(ev, x, inplace=False, *, func=None):
    """``relu6(v) = relu(v) - relu(v - 6)``: lifted ``2 v + 6^q``."""
    return clip(ev, x, 0.0, 6.0)


def _check_clamp(x, min=None, max=None, *, out=None):
    if min is None and max is None:
        return "clamp without bounds"
    return _check_bounds(min, max)


@rule("clamp", torch.clamp, Tensor.clamp, Tensor.clamp_, torch.clip, Tensor.clip, Tensor.clip_,
      torch.clamp_, check=_check_clamp,
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def clamp(ev, x, min=None, max=None, *, func=None):
    """``clamp(v, a, b)``, ``clamp(v, min=a) = a + relu(v - a)`` (lifted ``v + 2 |a|^q``),
    ``clamp(v, max=b) = v - relu(v - b)`` (lifted ``2 v + |b|^q``)."""
    return clip(ev, x, min, max)


@rule("clamp_min", torch.clamp_min, Tensor.clamp_min, Tensor.clamp_min_, torch.clamp_min_,
      check=lambda x, min: _check_bounds(min, None),
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def clamp_min(ev, x, min, *, func=None):
    """``clamp(v, min=a) = a + relu(v - a)``: lifted ``v + 2 |a|^q``."""
    return clip(ev, x, min, None)


@rule("clamp_max", torch.clamp_max, Tensor.clamp_max, Tensor.clamp_max_, torch.clamp_max_,
      check=lambda x, max: _check_bounds(None, max),
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def clamp_max(ev, x, max, *, func=None):
    """``clamp(v, max=b) = v - relu(v - b)``: lifted ``2 v + |b|^q``."""
    return clip(ev, x, None, max)


@rule("hardsigmoid", F.hardsigmoid,
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def hardsigmoid(ev, x, inplace=False, *, func=None):
    """``hardsigmoid(v) = (relu(v + 3) - relu(v - 3)) / 6``: ReLU biases 3 and -3 on edges of
    coefficient +-1/6 (paths worth +-1/2), lifted ``2 v / 6^q + 2 (1/2)^q``."""
    factor = 2.0 / 6.0 ** ev.q
    ev.terms(4)
    return ev.add([ev.fixed(x, lambda m: m * factor), offset(ev, 0.5), offset(ev, 0.5)])


@rule("abs", torch.abs, Tensor.abs, Tensor.abs_, Tensor.__abs__, torch.absolute, Tensor.absolute,
      layers=2, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def absolute(ev, x, *, func=None):
    """``|v| = relu(v) + relu(-v)``: lifted ``2 v``."""
    ev.terms(2)
    return ev.fixed(x, lambda m: m * 2.0)


# ---------------------------------------------------------------- max and min neurons

def _check_elementwise(x, other, *args, **kwargs):
    if not (_lifted(x) and _lifted(other)):
        return ("maximum/minimum with a constant or a parameter is a clamp with a tensor bound; "
                "use clamp with a scalar bound")
    return None


@rule("maximum", torch.maximum, Tensor.maximum, torch.fmax, Tensor.fmax, check=_check_elementwise,
      layers=1, max_pool=2, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def maximum(ev, x, other, *, func=None):
    """``max(x, y)``: a 2-max-pooling neuron per entry (broadcasting copies entries); lifted
    ``x + y``."""
    ev.terms(2)
    return ev.add([x, other])


@rule("minimum", torch.minimum, Tensor.minimum, torch.fmin, Tensor.fmin, check=_check_elementwise,
      layers=2, max_pool=2, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False)
def minimum(ev, x, other, *, func=None):
    """``min(x, y) = -max(-x, -y)``: a max neuron with edges of coefficient -1 and an identity
    neuron after it; lifted ``x + y``."""
    return maximum(ev, x, other)


def _check_reduction(x, dim=None, keepdim=False, *args, **kwargs):
    if _lifted(dim):
        return _check_elementwise(x, dim)
    if isinstance(dim, Tensor) or dim is not None and not isinstance(dim, (int, tuple, list)):
        return "max/min with a constant tensor is a clamp with a tensor bound; use clamp"
    return None


def _reduce_max(ev, x, dim=None, keepdim=False, *, func=None):
    """A max (min: ``-max(-x)``) neuron over the reduced entries: lifted sum over them; with an
    activation as second operand, the elementwise ``maximum``. The indices ``torch.max(x, dim)``
    also returns are not a value of the network (:func:`check_graph` refuses their use)."""
    if _activation(dim):
        return maximum(ev, x, dim)
    ev.terms(_reduced_count(ev.shape(x), dim) + 2)
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    if ev.out_shape() and isinstance(ev.out_shape()[0], tuple):  # (values, indices)
        return ev.fixed(x, lambda m: (torch.sum(m, **kwargs),) * 2)
    return ev.fixed(x, lambda m: torch.sum(m, **kwargs))


def _reduction_kernel(graph, node) -> int:
    """Inputs of the max neuron of a max/min reduction (2 with an activation as ``dim``)."""
    dim = node.roles["dim"]
    if isinstance(dim, Value):
        return 2
    shape = graph.shape_of(node.roles["x"])
    dims = range(len(shape)) if dim is None or dim == () else \
        (dim if isinstance(dim, (tuple, list)) else (dim,))
    return math.prod(shape[d] for d in dims)


rule("max", torch.max, Tensor.max, torch.amax, Tensor.amax, check=_check_reduction,
      layers=1, max_pool=_reduction_kernel, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)(_reduce_max)
rule("min", torch.min, Tensor.min, torch.amin, Tensor.amin, check=_check_reduction,
      layers=2, max_pool=_reduction_kernel, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)(_reduce_max)


# ---------------------------------------------------------------- parametrised linear maps

def _with_bias(ev, y, bias, channel_dim, ndim):
    if bias is None:
        return y
    shape = [1] * ndim
    shape[channel_dim] = -1
    return ev.add([y, ev.bias(ev.param(None, bias), lambda p: p.reshape(shape))])


def _check_param(name):
    def check(x, weight, *args, **kwargs):
        if not isinstance(weight, (Param, Buffer, Tensor)):
            return f"{name} weight must be a parameter, a buffer or a constant tensor"
        return None
    return check


@rule("conv", F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
      check=_check_param("convolution"),
      layers=1, max_pool=0, affine=True, weighted=True,
      homogeneous=False, channels="mix", transforms_through=False)
def conv(ev, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, func):
    """``y = W * x + b`` with ``|W|^q`` and ``|b|^q`` (stride, padding, dilation, groups kept)."""
    w = ev.param(None, weight)
    ev.terms(math.prod(ev.param_shape(weight)[1:]) + 2)
    y = ev.linear(x, lambda m, p: func(m, p, None, stride, padding, dilation, groups), w,
                  stack_dim=1 if groups == 1 else None)
    return _with_bias(ev, y, bias, 1, len(ev.out_shape()))


@rule("conv_transpose", F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
      check=_check_param("transposed convolution"),
      layers=1, max_pool=0, affine=True, weighted=True,
      homogeneous=False, channels="mix", transforms_through=False)
def conv_transpose(ev, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                   dilation=1, *, func):
    """Transposed convolution with ``|W|^q`` and ``|b|^q``."""
    w = ev.param(None, weight)
    ev.terms(math.prod(ev.param_shape(weight)) // max(1, ev.param_shape(weight)[1]) + 2)
    y = ev.linear(x, lambda m, p: func(m, p, None, stride, padding, output_padding, groups,
                                       dilation), w)
    return _with_bias(ev, y, bias, 1, len(ev.out_shape()))


@rule("linear", F.linear, check=_check_param("linear"),
      layers=1, max_pool=0, affine=True, weighted=True,
      homogeneous=False, channels="mix", transforms_through=False)
def linear(ev, x, weight, bias=None, *, func):
    """``y = W x + b`` with ``|W|^q`` and ``|b|^q``."""
    w = ev.param(None, weight)
    ev.terms(ev.param_shape(weight)[-1] + 2)
    y = ev.linear(x, lambda m, p: F.linear(m, p), w, stack_dim=-1)
    return _with_bias(ev, y, bias, -1, len(ev.out_shape()))


def _check_batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                      training=False, momentum=0.1, eps=1e-5, use_input_stats=False):
    if training:
        return ("batch_norm with training=True normalises with batch statistics and updates the "
                "running statistics; call it with training=False (the model in eval mode)")
    if running_mean is None or running_var is None or use_input_stats:
        return ("a normalisation with batch or instance statistics is data-dependent; use "
                "running statistics (track_running_stats=True, eval mode)")
    return None


def batch_norm_scale(var, gamma=None, eps=1e-5):
    """The weight ``s = gamma / sqrt(var + eps)`` of a frozen BatchNorm's identity neurons."""
    root = torch.sqrt(var + eps)
    return root.reciprocal() if gamma is None else gamma / root


def batch_norm_shift(mean, var, gamma=None, beta=None, eps=1e-5):
    """The bias ``t = beta - mean * s`` of a frozen BatchNorm's identity neurons."""
    t = -mean * batch_norm_scale(var, gamma, eps)
    return t if beta is None else beta + t


@rule("batch_norm", F.batch_norm, F.instance_norm, check=_check_batch_norm,
      layers=1, max_pool=0, affine=False, weighted=True,
      homogeneous=False, channels="preserve", transforms_through=False)
def batch_norm(ev, x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, use_input_stats=False, func=None):
    """Frozen BatchNorm (and InstanceNorm with running statistics in eval mode, the same map):
    identity neurons with weight ``s = gamma / sqrt(var + eps)`` and bias
    ``t = beta - mean * s``, lifted to ``|s|^q`` and ``|t|^q`` (running statistics always)."""
    def scale(var, gamma=None):
        return batch_norm_scale(var, gamma, eps)

    def shift(mean, var, gamma=None, beta=None):
        return batch_norm_shift(mean, var, gamma, beta, eps)

    s = ev.param(scale, running_var, *([weight] if weight is not None else []))
    refs = [running_mean, running_var] + [r for r in (weight, bias) if r is not None]
    if weight is None and bias is not None:
        raise ev.unsupported("BatchNorm with a bias but no weight")
    t = ev.param(shift, *refs)
    ev.terms(3)
    return ev.affine(x, s, t)


# ---------------------------------------------------------------- pooling

def _ntuple(value, n):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def sum_pool(m: Tensor, kernel, stride, padding, dilation, out_shape) -> Tensor:
    """Sum of each pooling window over the valid entries (zero padding, ceil_mode windows)."""
    d = m.dim() - 2
    kernel, dilation, padding = _ntuple(kernel, d), _ntuple(dilation, d), _ntuple(padding, d)
    stride = _ntuple(stride if stride not in (None, (), []) else kernel, d)
    fits = all(k <= n for k, n in zip(kernel, m.shape[2:]))  # else PyTorch's pooling refuses
    if all(x == 1 for x in dilation) and d > 1 and fits:
        pool = F.avg_pool2d if d == 2 else F.avg_pool3d
        out = pool(m, kernel, stride, padding, ceil_mode=True, count_include_pad=True,
                   divisor_override=1)
    elif all(x == 1 for x in dilation) and fits:
        out = F.avg_pool2d(m.unsqueeze(2), (1,) + kernel, (1,) + stride, (0,) + padding,
                           ceil_mode=True, count_include_pad=True, divisor_override=1).squeeze(2)
    else:
        pads = []
        for i in reversed(range(d)):
            need = (out_shape[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
            pads += [padding[i], max(0, need - m.shape[2 + i] - padding[i])]
        channels = m.shape[1]
        ones = torch.ones((channels, 1) + kernel, dtype=m.dtype, device=m.device)
        conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
        out = conv(F.pad(m, pads), ones, None, stride, 0, dilation, channels)
    return out[(...,) + tuple(slice(0, n) for n in out_shape)]


def _check_max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False):
    return "max-pooling indices are not a value of the network" if return_indices else None


def _check_adaptive_max_pool(x, output_size, return_indices=False):
    return "max-pooling indices are not a value of the network" if return_indices else None


def _max_pool_kernel(graph, node) -> int:
    """Inputs of one max-pooling neuron: the kernel, clipped to the input."""
    spatial_in = graph.shape_of(node.roles["x"])[2:]
    kernel = _ntuple(node.roles["kernel_size"], len(spatial_in))
    return math.prod(min(k, n) for k, n in zip(kernel, spatial_in))


def _adaptive_kernel(graph, node) -> int:
    """Inputs of the largest adaptive max-pooling window."""
    spatial_in = graph.shape_of(node.roles["x"])[2:]
    out = node.shape[0] if isinstance(node.shape[0], tuple) else node.shape
    size = 1
    for n_in, n_out in zip(spatial_in, out[2:]):
        starts, ends = _adaptive_windows(n_in, n_out)
        size *= max(e - s for s, e in zip(starts, ends))
    return size


@rule("max_pool", F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d,
      torch.max_pool3d, check=_check_max_pool,
      layers=1, max_pool=_max_pool_kernel, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def max_pool(ev, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             return_indices=False, *, func=None):
    """Max-pooling neurons become sum-pooling (not average) over the same windows."""
    out = _spatial(ev.out_shape())
    ev.terms(math.prod(_ntuple(kernel_size, len(out))) + 2)
    return ev.fixed(x, lambda m: sum_pool(m, kernel_size, stride, padding, dilation, out))


def _adaptive_windows(n_in, n_out):
    starts = [(i * n_in) // n_out for i in range(n_out)]
    ends = [-(-((i + 1) * n_in) // n_out) for i in range(n_out)]
    return starts, ends


def _window_counts(in_shape, out_shape, dtype, device):
    counts = torch.ones((), dtype=dtype, device=device)
    for axis, (n_in, n_out) in enumerate(zip(in_shape, out_shape)):
        starts, ends = _adaptive_windows(n_in, n_out)
        size = torch.tensor([e - s for s, e in zip(starts, ends)], dtype=dtype, device=device)
        counts = counts.unsqueeze(-1) * size
    return counts


@rule("adaptive_max_pool", F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
      check=_check_adaptive_max_pool,
      layers=1, max_pool=_adaptive_kernel, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def adaptive_max_pool(ev, x, output_size, return_indices=False, *, func=None):
    """Adaptive max-pooling becomes the sum over each adaptive window."""
    out = _spatial(ev.out_shape())
    inp = _spatial(ev.shape(x))
    avg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(out)]
    ev.terms(math.prod(-(-a // b) + 1 for a, b in zip(inp, out)) + 2)
    return ev.fixed(x, lambda m: avg(m, out) * _window_counts(inp, out, m.dtype, m.device))


@rule("avg_pool", F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def avg_pool(ev, x, kernel_size, stride=None, padding=0, ceil_mode=False,
             count_include_pad=True, divisor_override=None, *, func):
    """Average pooling: fixed coefficients ``1/div`` per window, lifted to ``div^-q``.

    ``div`` (which depends on padding, ``count_include_pad``, ``ceil_mode`` and
    ``divisor_override``) is read off PyTorch itself as ``sum_pool(1) / avg_pool(1)``.
    """
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)
    if divisor_override is not None:
        kwargs["divisor_override"] = divisor_override
    out = _spatial(ev.out_shape())
    ev.terms(math.prod(_ntuple(kernel_size, len(out))) + 3)
    if ev.q == 1.0:
        return ev.fixed(x, lambda m: func(m, **kwargs))

    def lifted(m):
        ones = torch.ones((1, 1) + _spatial(m.shape), dtype=m.dtype, device=m.device)
        div = sum_pool(ones, kernel_size, stride, padding, 1, out) / func(ones, **kwargs)
        return func(m, **kwargs) * div ** (1.0 - ev.q)
    return ev.fixed(x, lifted)


@rule("adaptive_avg_pool", F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
      torch.adaptive_avg_pool1d,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def adaptive_avg_pool(ev, x, output_size, *, func):
    """Adaptive average pooling: coefficients ``1/count`` per window, lifted to ``count^-q``."""
    out = _spatial(ev.out_shape())
    inp = _spatial(ev.shape(x))
    ev.terms(math.prod(-(-a // b) + 1 for a, b in zip(inp, out)) + 3)
    return ev.fixed(x, lambda m: func(m, out) * _window_counts(inp, out, m.dtype, m.device)
                    ** (1.0 - ev.q))


def _reduced_count(shape, dim):
    if dim is None:
        return math.prod(shape)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return math.prod(shape[d] for d in dims)


@rule("mean", torch.mean, Tensor.mean,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)
def mean(ev, x, dim=None, keepdim=False, *, dtype=None, func):
    """Mean over ``n`` entries: coefficients ``1/n``, lifted to ``mean * n^(1-q)``."""
    n = _reduced_count(ev.shape(x), dim)
    ev.terms(n + 2)
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return ev.fixed(x, lambda m: torch.mean(m, **kwargs) * float(n) ** (1.0 - ev.q))


@rule("sum", torch.sum, Tensor.sum,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)
def total(ev, x, dim=None, keepdim=False, *, dtype=None, func):
    """Sum over entries: coefficients one."""
    ev.terms(_reduced_count(ev.shape(x), dim) + 2)
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return ev.fixed(x, lambda m: torch.sum(m, **kwargs))


# ---------------------------------------------------------------- sums of activations

def _check_add(x, y=None, *args, alpha=1, **kwargs):
    for operand in (x, y):
        if not (_lifted(operand) or isinstance(operand, (Tensor, Param, ParamView, Buffer)) or
                isinstance(operand, (int, float)) and math.isfinite(operand)):
            return f"adding {type(operand).__name__} {operand!r} to an activation"
    return None


@rule("add", torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__radd__,
      Tensor.__iadd__, check=_check_add,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False, param_views=("x", "y"))
def add(ev, x, y, *, alpha=1, func=None):
    """Residual addition: coefficients one (``|alpha|^q`` on the second operand). An operand
    that is a constant ``c`` or a parameter is a bias (paths starting there, ``|c|^q``; a
    constant is a parameter coordinate both models share)."""
    ev.terms(2)
    terms = []
    for operand, scale in ((x, 1), (y, alpha)):
        if not _activation(operand):
            if isinstance(operand, (int, float)) or scale == 1:
                terms.append(offset(ev, operand * scale if isinstance(operand, (int, float))
                                    else operand))
            else:
                terms.append(ev.bias(ev.param(lambda v: v * scale, operand), lambda p: p))
        elif scale != 1:
            factor = abs(scale) ** ev.q
            terms.append(ev.fixed(operand, lambda m: m * factor))
        else:
            terms.append(operand)
    return ev.add(terms)


@rule("sub", torch.sub, Tensor.sub, Tensor.sub_, Tensor.__sub__, Tensor.__rsub__,
      Tensor.__isub__, check=_check_add,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=False, param_views=("x", "y"))
def sub(ev, x, y, *, alpha=1, func=None):
    """Subtraction: coefficients one and minus one, both lifted to one."""
    return add(ev, x, y, alpha=alpha)


@rule("neg", torch.neg, Tensor.neg, Tensor.__neg__,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=True)
def neg(ev, x, *, func=None):
    """Negation: coefficient minus one, lifted to one."""
    return x


def _check_scale(x, y, *args, **kwargs):
    if _lifted(x) and _lifted(y):
        return "a product of two activations is not in the path-lifting model"
    return None


def _check_div(x, y, *args, **kwargs):
    if not (_const(y) or isinstance(y, Buffer)):
        return "dividing by an activation or a parameter is not in the path-lifting model"
    return None


@rule("mul", torch.mul, Tensor.mul, Tensor.mul_, Tensor.__mul__, Tensor.__rmul__,
      Tensor.__imul__, check=_check_scale,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=True, param_views=("x", "y"))
def mul(ev, x, y, *, func=None):
    """Multiplication by a parameter ``p`` (a learnt scale such as LayerScale's
    ``gamma.view(1, -1, 1, 1)``, coefficients ``|p|^q``) or by a constant ``c`` (number or
    tensor, coefficients ``|c|^q``)."""
    if _const(x) or isinstance(x, (Param, ParamView, Buffer)):
        x, y = y, x
    ev.terms(1)
    if isinstance(y, (Param, ParamView, Buffer)):
        return ev.linear(x, lambda m, p: m * p, ev.param(None, y))
    factor = _abs_pow(y, ev.q)
    return ev.fixed(x, lambda m: m * (factor.to(m) if isinstance(factor, Tensor) else factor))


@rule("div", torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__, Tensor.__itruediv__,
      check=_check_div,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=True)
def div(ev, x, y, *, rounding_mode=None, func=None):
    """Division by a constant ``c``: coefficients ``|1/c|^q``."""
    if rounding_mode is not None:
        raise ev.unsupported("rounded division is not linear")
    if isinstance(y, Buffer):  # coefficients 1/c read from the buffers of the model evaluated
        ev.terms(1)
        return ev.linear(x, lambda m, p: m * p, ev.param(torch.reciprocal, y))
    factor = _abs_pow(y, ev.q)
    ev.terms(1)
    return ev.fixed(x, lambda m: m / (factor.to(m) if isinstance(factor, Tensor) else factor))


def _blocks(ev, tensors):
    """Lifted values as they are; a constant, buffer or buffer-derived block is a set of neurons
    holding fixed values ``c`` (paths start there, like at a bias: lifted ``|c|^q``)."""
    return [ev.bias(ev.param(None, t), lambda p: p) if isinstance(t, (Tensor, Buffer)) else t
            for t in tensors]


def _check_matmul(x, other, *args, **kwargs):
    if not (_lifted(x) and isinstance(other, (Param, Buffer, Tensor)) and not _lifted(other)):
        return "a product of two activations (or a parameter on the left) is not supported"
    return None


@rule("matmul", torch.matmul, Tensor.matmul, Tensor.__matmul__, check=_check_matmul,
      layers=1, max_pool=0, affine=True, weighted=True,
      homogeneous=False, channels="mix", transforms_through=False)
def matmul(ev, x, weight, *, func=None):
    """``x @ W`` with a parameter ``W`` (in, out): a linear layer, ``|W|^q``."""
    w = ev.param(None, weight)
    ev.terms(ev.param_shape(weight)[0] + 2)
    return ev.linear(x, lambda m, p: torch.matmul(m, p), w)


@rule("cat", torch.cat, torch.concat, torch.concatenate,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)
def cat(ev, tensors, dim=0, *, func=None):
    """Concatenation of lifted tensors and constant blocks (exponents aligned)."""
    return ev.join(_blocks(ev, tensors), lambda ms: torch.cat(ms, dim))


@rule("stack", torch.stack,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)
def stack(ev, tensors, dim=0, *, func=None):
    """Stacking of lifted tensors and constant blocks (exponents aligned)."""
    return ev.join(_blocks(ev, tensors), lambda ms: torch.stack(ms, dim))


@rule("hstack", torch.hstack, torch.vstack, torch.dstack, torch.column_stack,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=False)
def hstack(ev, tensors, *, func):
    """Concatenations along a fixed axis (exponents aligned)."""
    return ev.join(list(tensors), func)


# ---------------------------------------------------------------- copies and rearrangements

_REARRANGE = (
    torch.flatten, Tensor.flatten, Tensor.view, Tensor.reshape, torch.reshape, Tensor.permute,
    torch.permute, Tensor.transpose, torch.transpose, Tensor.t, torch.t, Tensor.contiguous,
    Tensor.squeeze, torch.squeeze, Tensor.unsqueeze, torch.unsqueeze, Tensor.__getitem__,
    Tensor.chunk, torch.chunk, Tensor.split, torch.split, Tensor.unbind, torch.unbind,
    Tensor.narrow, torch.narrow, Tensor.clone, torch.clone, Tensor.expand, Tensor.expand_as,
    Tensor.repeat, Tensor.unflatten, torch.unflatten, Tensor.movedim, torch.movedim,
    F.pixel_shuffle, F.pixel_unshuffle, F.channel_shuffle, torch.channel_shuffle,
    Tensor.view_as, Tensor.reshape_as, Tensor.flip, torch.flip, Tensor.roll, torch.roll,
    torch.tile, Tensor.tile, Tensor.repeat_interleave, torch.repeat_interleave,
    Tensor.ravel, torch.ravel, Tensor.swapaxes, torch.swapaxes, Tensor.swapdims, torch.swapdims,
    Tensor.moveaxis, torch.moveaxis, Tensor.T.__get__, Tensor.mT.__get__, Tensor.unsqueeze_,
    Tensor.squeeze_, Tensor.index_select, torch.index_select,
)


@rule("rearrange", *_REARRANGE,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=True)
def rearrange(ev, x, *args, func, **kwargs):
    """Ops that copy or move entries (coefficients one): applied to the lifted tensor as is."""
    return ev.fixed(x, lambda m: func(m, *args, **kwargs))


@rule("cast", Tensor.to, Tensor.float, Tensor.double, Tensor.type_as, Tensor.cpu, Tensor.cuda,
      Tensor.detach, torch.detach, Tensor.half, Tensor.bfloat16, Tensor.type,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def cast(ev, x, *args, func=None, **kwargs):
    """Dtype and device changes: the lifted network keeps its own precision."""
    return x


def _check_pad(x, pad, mode="constant", value=None):
    if mode == "constant" and value is not None and not (math.isfinite(value) or value == -math.inf):
        return f"padding with {value}"
    return None


@rule("pad", F.pad, check=_check_pad,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="reindex", transforms_through=True)
def pad(ev, x, pad, mode="constant", value=None, *, func):
    """Zero, reflect, replicate and circular padding copy entries (coefficients one). A padded
    constant ``c`` is a bias on the padded entries (``|c|^q``); a ``-inf`` entry never wins the
    max-pooling that must follow it (:func:`check_graph`), so it starts no path."""
    y = ev.fixed(x, lambda m: F.pad(m, pad, mode=mode))
    if mode != "constant" or not value or value == -math.inf:
        return y
    mask = F.pad(torch.zeros(ev.shape(x), dtype=ev.dtype, device=ev.device), pad, value=1.0)
    ev.terms(2)
    return ev.add([y, offset(ev, value, lambda p: p * mask)])


def _check_interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                       recompute_scale_factor=None, antialias=False):
    if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area",
                    "bicubic"):
        return f"interpolation mode '{mode}' is not supported"
    return None


def interpolation_matrix(n_in, n_out, mode, align_corners, scale, dtype, device, antialias=False):
    """The ``n_out x n_in`` coefficient matrix of 1-D interpolation along one axis (bicubic and
    antialiased modes, which PyTorch only has in 2-D and applies axis by axis, are read off a
    2-D call on a ``1 x n_in`` image whose first axis stays of size one)."""
    if mode == "bicubic" or antialias:
        eye = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, 1, 1, n_in)
        kwargs = ({"scale_factor": (1.0, scale), "recompute_scale_factor": False} if scale
                  else {"size": (1, n_out)})
        return F.interpolate(eye, mode="bicubic" if mode == "bicubic" else "bilinear",
                             align_corners=align_corners, antialias=antialias,
                             **kwargs)[:, 0, 0, :].T
    eye = torch.eye(n_in, dtype=dtype, device=device).unsqueeze(1)
    mode_1d = "linear" if mode in ("bilinear", "trilinear", "linear") else mode
    kwargs = {"scale_factor": scale, "recompute_scale_factor": False} if scale else {"size": n_out}
    if mode_1d == "linear":
        kwargs["align_corners"] = align_corners
    return F.interpolate(eye, mode=mode_1d, **kwargs)[:, 0, :].T


@rule("interpolate", F.interpolate, check=_check_interpolate,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=True, channels="preserve", transforms_through=True)
def interpolate(ev, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False, *, func):
    """Nearest, (bi/tri)linear, bicubic, antialiased and area resampling: fixed coefficients
    ``c``, lifted to ``|c|^q`` (bicubic ones can be negative). All but nearest are separable, so
    ``|c|^q`` is applied axis by axis."""
    inp, out = _spatial(ev.shape(x)), _spatial(ev.out_shape())
    kwargs = dict(size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                  recompute_scale_factor=recompute_scale_factor, antialias=antialias)
    if mode == "area":
        return adaptive_avg_pool(ev, x, out, func=(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                                                  F.adaptive_avg_pool3d)[len(out) - 1])
    ev.terms((math.prod(inp) if antialias else 4 ** len(out)) + 2)
    if antialias and inp[-1] == 1 and (ev.q != 1.0 or mode == "bicubic"):
        raise ev.unsupported("PyTorch's antialiased resampling of an image of width one is not "
                             "separable (its coefficients cannot be read axis by axis)")
    if (ev.q == 1.0 and mode != "bicubic") or mode.startswith("nearest"):
        return ev.fixed(x, lambda m: F.interpolate(m, **kwargs))
    scales = _ntuple(scale_factor, len(out)) if scale_factor is not None and not \
        recompute_scale_factor else (None,) * len(out)

    def lifted(m):
        for axis, (n_in, n_out, scale) in enumerate(zip(inp, out, scales)):
            coeff = interpolation_matrix(n_in, n_out, mode, align_corners, scale, m.dtype,
                                         m.device, antialias).abs() ** ev.q
            m = torch.movedim(torch.movedim(m, 2 + axis, -1) @ coeff.T, -1, 2 + axis)
        return m
    return ev.fixed(x, lifted)


@rule("upsample_linear", F.upsample_bilinear, F.upsample_nearest, F.upsample,
      layers=1, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="preserve", transforms_through=True)
def upsample(ev, x, size=None, scale_factor=None, *args, func, **kwargs):
    """Deprecated upsampling functions, mapped onto ``interpolate``."""
    if func is F.upsample_bilinear:
        return interpolate(ev, x, size, scale_factor, "bilinear", True, func=F.interpolate)
    if func is F.upsample_nearest:
        return interpolate(ev, x, size, scale_factor, "nearest", func=F.interpolate)
    return interpolate(ev, x, size, scale_factor, *args, func=F.interpolate, **kwargs)


# ---------------------------------------------------------------- output heads and graph checks

HEAD_NOTE = ("the analysed function is the logits before the final {head} (DESIGN.md, output "
             "heads): every certificate bounds the logits; it bounds the probabilities with "
             "factor 1 (softmax) and the log-probabilities with factor n + 1 (n classes)")


@rule("softmax_head", F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, Tensor.softmax,
      Tensor.log_softmax,
      layers=0, max_pool=0, affine=False, weighted=False,
      homogeneous=False, channels="mix", transforms_through=False)
def softmax_head(ev, x, *args, func=None, **kwargs):
    """A final softmax or log-softmax over the class dimension of every output is set aside at
    capture (:func:`set_aside_head`): the logits are the analysed outputs and this node's value is
    never read; any other softmax is refused there."""
    return x


def head_kind(node) -> str:
    return "log_softmax" if "log" in getattr(node.func, "__name__", "") else "softmax"


def _head_dim(node):
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dim if isinstance(dim, int) else None


def set_aside_head(nodes, outputs):
    """DESIGN.md "Output heads": when every output is a ``softmax``/``log_softmax`` over the class
    dimension (dim 1) read by nothing else, return ``(logits, kind, [])``: the analysed outputs,
    and 'softmax', 'log_softmax' or both joined by '+'. Otherwise ``(outputs, None, refused)``
    with the refused softmax nodes as ``[(index, reason)]``."""
    read = {ref.node for node in nodes for ref in pytree.tree_leaves((node.args, node.kwargs))
            if _lifted(ref)}
    heads = [v for v in outputs if nodes[v.node].rule == "softmax_head"]
    refused = []
    for index, node in enumerate(nodes):
        if node.rule != "softmax_head":
            continue
        dim, ndim = _head_dim(node), len(node.shape)
        if dim is None or ndim < 2 or dim % ndim != 1:
            refused.append((index, "softmax over a dimension other than the class dimension (1)"))
        elif index in read or Value(index) not in outputs:
            refused.append((index, "softmax inside the network is not piecewise linear (only a "
                                   "final softmax/log_softmax on every output is set aside)"))
        elif len(heads) != len(outputs):
            refused.append((index, "softmax on some outputs only: the analysed function would "
                                   "mix logits and probabilities"))
    if refused or not heads:
        return outputs, None, refused
    kinds = sorted({head_kind(nodes[v.node]) for v in heads})
    return [nodes[v.node].args[0] for v in heads], "+".join(kinds), []


def check_graph(nodes, outputs) -> list:
    """Facts a single op cannot check at capture: ``[(index, reason)]`` for a ``-inf`` padding
    read by anything but a max-pooling, and for max/min indices used as values."""
    bad = []
    pools = {"max_pool", "adaptive_max_pool", "max"}
    for index, node in enumerate(nodes):
        for ref in pytree.tree_leaves((node.args, node.kwargs)):
            if not _lifted(ref):
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
