"""Rules of the parametrised linear maps: convolutions, transposed convolutions, linear, ``x @ W``
and the frozen batch normalisation (with its fold ``batch_norm_scale``/``batch_norm_shift``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ir import Buffer, Param, ParamView, Part
from .registry import WEIGHTED_LAYER, Tensor, is_traced, rule

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


#: a float64 convolution on the CPU forms its unfolded input (``in/groups * prod(kernel)`` entries
#: per output position: 9 times a 3x3 conv's input) whole; past this many entries (128 MB) it
#: runs by blocks of output rows (:func:`convolve`). Smaller blocks leave the heap fragmented by
#: their outputs (2**22 raised vgg16's weight_scores by 80 MB of freed, unreturned memory).
COLUMN_ENTRIES = 1 << 24


def convolve(func, x, w, stride, padding, dilation, groups):
    """``func(x, w, None, stride, padding, dilation, groups)``, by blocks of output rows (dim 2)
    when the unfolded input of a float64 CPU convolution passes :data:`COLUMN_ENTRIES`: output
    row ``r`` reads input rows ``r s - p + d j`` (``j < k``), a block reads its own rows (zero
    rows where they fall in the padding), so each output entry is the same sum of the same
    products. Peak: the output and one block's unfolded input, not the whole unfolded input; the
    backward (:class:`_ByRows`) goes by the same blocks."""
    if (x.dtype != torch.float64 or x.device.type != "cpu" or isinstance(padding, str)
            or x.dim() != w.dim()):  # an unbatched input, a padding computed by torch
        return func(x, w, None, stride, padding, dilation, groups)
    n = w.dim() - 2
    stride, padding, dilation = ((v,) * n if isinstance(v, int) else tuple(v)
                                 for v in (stride, padding, dilation))
    sizes = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w.shape[2 + i] - 1) - 1)
             // stride[i] + 1 for i in range(n)]  # the output's spatial sizes
    per_row = x.shape[0] * math.prod(w.shape[1:]) * math.prod(sizes[1:])
    rows = max(1, COLUMN_ENTRIES // max(1, per_row))
    if rows >= sizes[0]:
        return func(x, w, None, stride, padding, dilation, groups)
    geometry = (stride, padding, dilation, groups, rows, sizes[0])
    return _ByRows.apply(x, w, func, geometry)


def _row_blocks(x, w, geometry):
    """``(output rows [first, last), input rows [low, high), the block's input)`` of every block
    of :func:`convolve`, the padding rows of dim 2 made explicit at the ends."""
    stride, padding, dilation, _, rows, out_rows = geometry
    height, reach = x.shape[2], dilation[0] * (w.shape[2] - 1) + 1
    for first in range(0, out_rows, rows):
        last = min(first + rows, out_rows)
        top = first * stride[0] - padding[0]
        bottom = (last - 1) * stride[0] - padding[0] + reach
        low, high = max(0, top), min(height, bottom)
        block = x[:, :, low:high]
        if top < 0 or bottom > height:
            block = F.pad(block, [0, 0] * (x.dim() - 3) + [low - top, bottom - high])
        yield first, last, (low, high, low - top), block


class _ByRows(torch.autograd.Function):
    """The convolution of :func:`convolve` by blocks of output rows, forward and backward (each
    block's input gradient added into its rows, the weight gradients summed): autograd through
    slices would build a whole-size gradient per block."""

    @staticmethod
    def forward(ctx, x, w, func, geometry):
        stride, padding, dilation, groups, _, out_rows = geometry
        ctx.save_for_backward(x, w)
        ctx.geometry = geometry
        out = None
        for first, last, _, block in _row_blocks(x, w, geometry):
            y = func(block, w, None, stride, (0,) + padding[1:], dilation, groups)
            if out is None:
                out = y.new_empty(y.shape[:2] + (out_rows,) + y.shape[3:])
            out[:, :, first:last] = y
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups, _, _ = ctx.geometry
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        for first, last, (low, high, skip), block in _row_blocks(x, w, ctx.geometry):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad[:, :, first:last], block, w, None, stride, (0,) + padding[1:], dilation,
                False, (0,) * (w.dim() - 2), groups, (grad_x is not None, grad_w is not None, False))
            if grad_x is not None:
                grad_x[:, :, low:high] += gx[:, :, skip:skip + high - low]
            if grad_w is not None:
                grad_w += gw
        return grad_x, grad_w, None, None


@rule("conv", F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
      check=_check_param("convolution"), family=WEIGHTED_LAYER)
def conv(ev, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, func):
    """``y = W * x + b`` with ``|W|^q`` and ``|b|^q`` (stride, padding, dilation, groups kept)."""
    w = ev.param(None, weight)
    y = ev.linear(x, lambda m, p: convolve(func, m, p, stride, padding, dilation, groups), w,
                  terms=math.prod(ev.param_shape(weight)[1:]) + 2,
                  stack_dim=1 if groups == 1 else None)
    return _with_bias(ev, y, bias, 1, len(ev.out_shape()))


@rule("conv_transpose", F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
      check=_check_param("transposed convolution"),
      family=WEIGHTED_LAYER, channel_params={"weight": 1, "bias": 0})
def conv_transpose(ev, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                   dilation=1, *, func):
    """Transposed convolution with ``|W|^q`` and ``|b|^q``."""
    w = ev.param(None, weight)
    shape = ev.param_shape(weight)
    y = ev.linear(x, lambda m, p: func(m, p, None, stride, padding, output_padding, groups,
                                       dilation), w, terms=math.prod(shape) // max(1, shape[1]) + 2)
    return _with_bias(ev, y, bias, 1, len(ev.out_shape()))


@rule("linear", F.linear, check=_check_param("linear"), family=WEIGHTED_LAYER, channel_dim=-1)
def linear(ev, x, weight, bias=None, *, func):
    """``y = W x + b`` with ``|W|^q`` and ``|b|^q``."""
    w = ev.param(None, weight)
    y = ev.linear(x, lambda m, p: F.linear(m, p), w, terms=ev.param_shape(weight)[-1] + 2,
                  stack_dim=-1)
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
      family=WEIGHTED_LAYER, affine=False, channels="preserve", channel_affine=True)
def batch_norm(ev, x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, use_input_stats=False, func=None):
    """Frozen BatchNorm (and InstanceNorm with running statistics in eval mode, the same map):
    identity neurons with weight ``s = gamma / sqrt(var + eps)`` and bias
    ``t = beta - mean * s``, lifted to ``|s|^q`` and ``|t|^q`` (running statistics always)."""
    def scale(var, gamma=None):
        return batch_norm_scale(var, gamma, eps)

    def shift(mean, var, gamma=None, beta=None):
        return batch_norm_shift(mean, var, gamma, beta, eps)

    s = ev.param(scale, running_var, *([weight] if weight is not None else []), part=Part.SCALE)
    refs = [running_mean, running_var] + [r for r in (weight, bias) if r is not None]
    if weight is None and bias is not None:
        raise ev.unsupported("BatchNorm with a bias but no weight")
    t = ev.param(shift, *refs, part=Part.SHIFT)
    return ev.affine(x, s, t)



def _check_matmul(x, other, *args, **kwargs):
    if is_traced(x) and isinstance(other, ParamView):
        return (f"the weight of x @ W is the parameter '{other.name}' rearranged in forward "
                f"(W.t(), W.T, ...): write F.linear(x, {other.name.rsplit('.', 1)[-1]}) for "
                "x @ W.t() (the same map), or keep W laid out (in, out) and pass it as it is")
    if not (is_traced(x) and isinstance(other, (Param, Buffer, Tensor)) and not is_traced(other)):
        return "a product of two activations (or a parameter on the left) is not supported"
    return None


@rule("matmul", torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, Tensor.mm,
      check=_check_matmul, family=WEIGHTED_LAYER, channel_params={"weight": 1}, channel_dim=-1)
def matmul(ev, x, weight, *, func=None):
    """``x @ W`` with a parameter ``W`` (in, out): a linear layer, ``|W|^q``."""
    w = ev.param(None, weight)
    return ev.linear(x, lambda m, p: torch.matmul(m, p), w, terms=ev.param_shape(weight)[0] + 2)
