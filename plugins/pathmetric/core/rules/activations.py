"""Rules of the ReLU-like activations, clipped activations (relu6, hardtanh, clamp, hardsigmoid), abs,
elementwise maximum/minimum and max/min reductions.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from ..ir import Part, Value
from .registry import (
    ACTIVATION,
    CLIPPED,
    MAX_NEURONS,
    Tensor,
    is_lifted_value,
    is_traced,
    offset,
    reduced_count,
    rule,
)

# ---------------------------------------------------------------- inputs and outputs of neurons

@rule("relu", F.relu, torch.relu, Tensor.relu, F.relu_, torch.relu_, Tensor.relu_,
      family=ACTIVATION)
def relu(ev, x, *args, **kwargs):
    """ReLU neurons are identity neurons in the lifted network."""
    return x


@rule("dropout", F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
      F.feature_alpha_dropout, family=ACTIVATION, identity=True)
def dropout(ev, x, *args, func=None, **kwargs):
    """Dropout is the identity in eval mode, which is the function analysed; a call with
    ``training=True`` (the default of ``F.dropout``) and ``p > 0`` zeroes random entries (all of
    them at ``p = 1``) and is refused."""
    call = inspect.signature(func).bind(None, *args, **kwargs)
    call.apply_defaults()
    if call.arguments.get("training") and call.arguments.get("p", 0) > 0:
        raise ev.unsupported(f"dropout with training=True and p={call.arguments['p']} zeroes "
                             "random entries; pass training=self.training (nn.Dropout does)")
    return x


def _check_slope(x, negative_slope=0.01, *args, **kwargs):
    if not 0.0 <= negative_slope <= 1.0:
        return f"LeakyReLU slope {negative_slope} is outside [0, 1]: max(x, a*x) needs 0 <= a <= 1"
    return None


@rule("leaky_relu", F.leaky_relu, F.leaky_relu_, check=_check_slope,
      family=ACTIVATION, depth=2, max_pool=2)
def leaky_relu(ev, x, negative_slope=0.01, inplace=False, *, func=None):
    """``max(x, a x)``: a max neuron over ``x`` and the identity neuron ``a x``; lifted
    ``x + |a|^q x``."""
    factor = 1.0 + abs(negative_slope) ** ev.q
    return ev.fixed(x, lambda m: m * factor, terms=2)


@rule("prelu", F.prelu,
      family=ACTIVATION, depth=2, max_pool=2, homogeneous=False, channel_params={"weight": 0})
def prelu(ev, x, weight, *, func=None):
    """PReLU with learnt slopes ``a`` in [0, 1]: lifted ``x + |a|^q x`` (slopes are parameters)."""
    def slope(a):
        if a.numel() and (a.min() < 0 or a.max() > 1):
            raise ev.unsupported("PReLU slope outside [0, 1]: max(x, a*x) needs 0 <= a <= 1")
        return a
    shape = (-1,) + (1,) * (len(ev.shape(x)) - 2) if len(ev.shape(x)) > 1 else (-1,)
    a = ev.param(slope, weight, part=Part.SLOPE)
    return ev.add([x, ev.linear(x, lambda m, p: m * p.reshape(shape), a, terms=1)])


def _check_rrelu(x, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    if training:
        return "RReLU in training mode draws random slopes"
    return _check_slope(x, (lower + upper) / 2)


@rule("rrelu", F.rrelu, F.rrelu_, check=_check_rrelu, family=ACTIVATION, depth=2, max_pool=2)
def rrelu(ev, x, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False, *, func=None):
    """RReLU in eval mode is LeakyReLU with slope ``(lower + upper) / 2``."""
    return leaky_relu(ev, x, (lower + upper) / 2)


def _check_threshold(x, threshold, value, inplace=False):
    if threshold != 0 or value != 0:
        return (f"threshold({threshold}, {value}) jumps from {value} to {threshold} (a "
                "discontinuity): only Threshold(0, 0), which is ReLU, is piecewise linear")
    return None


@rule("threshold", F.threshold, F.threshold_, torch.threshold, torch.threshold_,  # type: ignore[attr-defined]
      check=_check_threshold, family=ACTIVATION)
def threshold(ev, x, *args, func=None, **kwargs):
    """``threshold(x, 0, 0)`` is ReLU: an identity neuron in the lifted network."""
    return x


# ---------------------------------------------------------------- clipped activations
#
# docs/design.md, "The model class": with ``v`` the identity neuron holding the pre-activation,
# ``clamp(v, a, b) = a + relu(v - a) - relu(v - b)``, ``clamp(v, min=a) = a + relu(v - a)`` and
# ``clamp(v, max=b) = v - relu(v - b)``: ReLU copies read ``v`` through edges of coefficient one,
# and the constants are biases that both models share. Each form is an identity output neuron
# fed by one layer of ReLU neurons (two neuron layers), not positively homogeneous.

def clip(ev, x, low, high):
    """``clamp(v, low, high)`` as neurons: lifted ``copies * v`` (``copies`` = 1 with a lower
    bound only, else 2) plus the paths from the biases: ``|low|^q`` twice for a lower bound (the
    output bias and the first ReLU's), ``|high|^q`` once for an upper bound."""
    factor = 1.0 if high is None else 2.0
    biases = ([] if low is None else [low] * 2) + ([] if high is None else [high])
    offsets = [offset(ev, b) for b in biases if b != 0]
    # a zero bias starts no path, so the add skips it; its neuron still sums it: counted here
    y = ev.fixed(x, lambda m: m * factor, terms=1 + len(biases) - len(offsets))
    return ev.add([y] + offsets)


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


@rule("hardtanh", F.hardtanh, F.hardtanh_, check=_check_hardtanh, family=CLIPPED)
def hardtanh(ev, x, min_val=-1.0, max_val=1.0, inplace=False, *, func=None):
    """``clamp(v, a, b) = a + relu(v - a) - relu(v - b)``: lifted ``2 v + 2 |a|^q + |b|^q``
    (``nn.ReLU6`` is ``hardtanh(v, 0, 6)``: ``2 v + 6^q``)."""
    return clip(ev, x, min_val, max_val)


@rule("relu6", F.relu6, family=CLIPPED)
def relu6(ev, x, inplace=False, *, func=None):
    """``relu6(v) = relu(v) - relu(v - 6)``: lifted ``2 v + 6^q``."""
    return clip(ev, x, 0.0, 6.0)


def _check_clamp(x, min=None, max=None, *, out=None):
    if min is None and max is None:
        return "clamp without bounds"
    return _check_bounds(min, max)


@rule("clamp", torch.clamp, Tensor.clamp, Tensor.clamp_, torch.clip, Tensor.clip, Tensor.clip_,
      torch.clamp_, check=_check_clamp, family=CLIPPED)
def clamp(ev, x, min=None, max=None, *, func=None):
    """``clamp(v, a, b)``, ``clamp(v, min=a) = a + relu(v - a)`` (lifted ``v + 2 |a|^q``),
    ``clamp(v, max=b) = v - relu(v - b)`` (lifted ``2 v + |b|^q``)."""
    return clip(ev, x, min, max)


@rule("clamp_min", torch.clamp_min, Tensor.clamp_min, Tensor.clamp_min_, torch.clamp_min_,
      check=lambda x, min: _check_bounds(min, None), family=CLIPPED)
def clamp_min(ev, x, min, *, func=None):
    """``clamp(v, min=a) = a + relu(v - a)``: lifted ``v + 2 |a|^q``."""
    return clip(ev, x, min, None)


@rule("clamp_max", torch.clamp_max, Tensor.clamp_max, Tensor.clamp_max_, torch.clamp_max_,
      check=lambda x, max: _check_bounds(None, max), family=CLIPPED)
def clamp_max(ev, x, max, *, func=None):
    """``clamp(v, max=b) = v - relu(v - b)``: lifted ``2 v + |b|^q``."""
    return clip(ev, x, None, max)


@rule("hardsigmoid", F.hardsigmoid, family=CLIPPED)
def hardsigmoid(ev, x, inplace=False, *, func=None):
    """``hardsigmoid(v) = (relu(v + 3) - relu(v - 3)) / 6``: ReLU biases 3 and -3 on edges of
    coefficient +-1/6 (paths worth +-1/2), lifted ``2 v / 6^q + 2 (1/2)^q``."""
    factor = 2.0 / 6.0 ** ev.q
    return ev.add([ev.fixed(x, lambda m: m * factor, terms=1), offset(ev, 0.5), offset(ev, 0.5)])


@rule("abs", torch.abs, Tensor.abs, Tensor.abs_, Tensor.__abs__, torch.absolute, Tensor.absolute,
      family=ACTIVATION, depth=2)
def absolute(ev, x, *, func=None):
    """``|v| = relu(v) + relu(-v)``: lifted ``2 v``."""
    return ev.fixed(x, lambda m: m * 2.0, terms=2)


# ---------------------------------------------------------------- max and min neurons

def _check_elementwise(x, other, *args, **kwargs):
    if not (is_traced(x) and is_traced(other)):
        return ("maximum/minimum with a constant or a parameter is a clamp with a tensor bound; "
                "use clamp with a scalar bound")
    return None


@rule("maximum", torch.maximum, Tensor.maximum, torch.fmax, Tensor.fmax, check=_check_elementwise,
      family=MAX_NEURONS, max_pool=2)
def maximum(ev, x, other, *, func=None):
    """``max(x, y)``: a 2-max-pooling neuron per entry (broadcasting copies entries); lifted
    ``x + y``."""
    return ev.add([x, other])


@rule("minimum", torch.minimum, Tensor.minimum, torch.fmin, Tensor.fmin, check=_check_elementwise,
      family=MAX_NEURONS, depth=2, max_pool=2)
def minimum(ev, x, other, *, func=None):
    """``min(x, y) = -max(-x, -y)``: a max neuron with edges of coefficient -1 and an identity
    neuron after it; lifted ``x + y``."""
    return maximum(ev, x, other)


def _check_reduction(x, dim=None, keepdim=False, *args, **kwargs):
    if is_traced(dim):
        return _check_elementwise(x, dim)
    if isinstance(dim, Tensor) or dim is not None and not isinstance(dim, (int, tuple, list)):
        return "max/min with a constant tensor is a clamp with a tensor bound; use clamp"
    return None


def _reduce_max(ev, x, dim=None, keepdim=False, *, func=None):
    """A max (min: ``-max(-x)``) neuron over the reduced entries: lifted sum over them; with an
    activation as second operand, the elementwise ``maximum``. The indices ``torch.max(x, dim)``
    also returns are not a value of the network (:func:`check_graph` refuses their use)."""
    if is_lifted_value(dim):
        return maximum(ev, x, dim)
    n = reduced_count(ev.shape(x), dim) + 2
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    if ev.out_shape() and isinstance(ev.out_shape()[0], tuple):  # (values, indices)
        return ev.fixed(x, lambda m: (torch.sum(m, **kwargs),) * 2, terms=n)
    return ev.fixed(x, lambda m: torch.sum(m, **kwargs), terms=n)


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
      family=MAX_NEURONS, max_pool=_reduction_kernel, channels="reindex", index_outputs=(1,),
      skips_missing=True)(_reduce_max)
rule("min", torch.min, Tensor.min, torch.amin, Tensor.amin, check=_check_reduction,
      family=MAX_NEURONS, depth=2, max_pool=_reduction_kernel, channels="reindex",
      index_outputs=(1,))(_reduce_max)
