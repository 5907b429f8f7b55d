"""Rules: one per op, the op's image in the lifted network (DESIGN.md section 1).

A rule receives the evaluation context ``ev`` and the op's arguments, where every input-dependent
tensor has become a lifted value and every parameter or buffer a reference. It builds the lifted op
from the primitives of ``ev`` (see ``lifted.Lifting``), so the same rule serves the L_q path-norm
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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class Rule:
    name: str
    funcs: tuple
    lift: object             # lift(ev, *args, **kwargs) -> lifted value
    check: object = None     # check(*args, **kwargs) -> reason for refusal, at capture time


RULES: dict = {}
_BY_FUNC: dict = {}


def rule(name, *funcs, check=None):
    def register(lift):
        entry = Rule(name, funcs, lift, check)
        RULES[name] = entry
        for f in funcs:
            _BY_FUNC[f] = entry
        return lift
    return register


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
    (("F.relu6", "F.hardtanh", "Tensor.clamp", "torch.clamp", "Tensor.clamp_", "F.hardswish",
      "F.hardsigmoid"), "a clipped activation is not positively homogeneous"),
    (("F.gelu", "F.silu", "F.mish", "F.elu", "F.selu", "F.celu", "F.softplus", "torch.sigmoid",
      "Tensor.sigmoid", "F.sigmoid", "torch.tanh", "Tensor.tanh", "F.tanh", "F.logsigmoid"),
     "a smooth activation is not ReLU-like: no path-lifting exists for it"),
    (("F.softmax", "F.log_softmax", "Tensor.softmax", "torch.softmax", "F.softmin"),
     "softmax is not piecewise linear"),
    (("F.layer_norm", "F.group_norm", "F.instance_norm", "F.local_response_norm", "F.normalize",
      "F.rms_norm"), "a data-dependent normalisation is not in the path-lifting model"),
    (("F.scaled_dot_product_attention", "F.multi_head_attention_forward", "torch.bmm",
      "torch.matmul", "Tensor.matmul", "Tensor.__matmul__", "torch.einsum"),
     "attention and products of two activations are not in the path-lifting model"),
]  for name in names}


def _const(value):
    """A fixed coefficient given as a number or a constant tensor."""
    return isinstance(value, (int, float)) or isinstance(value, Tensor)


def _lifted(x) -> bool:
    from .capture import Value
    return isinstance(x, Value)


def _abs_pow(value, q):
    return abs(value) ** q if isinstance(value, (int, float)) else value.abs() ** q


def _spatial(shape):
    return tuple(shape[2:])


# ---------------------------------------------------------------- inputs and outputs of neurons

@rule("relu", F.relu, torch.relu, Tensor.relu, F.relu_, torch.relu_, Tensor.relu_)
def relu(ev, x, *args, **kwargs):
    """ReLU neurons are identity neurons in the lifted network."""
    return x


@rule("dropout", F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
      F.feature_alpha_dropout)
def dropout(ev, x, *args, **kwargs):
    """Dropout is the identity in eval mode, which is the function analysed."""
    return x


def _check_slope(x, negative_slope=0.01, *args, **kwargs):
    if not 0.0 <= negative_slope <= 1.0:
        return f"LeakyReLU slope {negative_slope} is outside [0, 1]: max(x, a*x) needs 0 <= a <= 1"
    return None


@rule("leaky_relu", F.leaky_relu, F.leaky_relu_, check=_check_slope)
def leaky_relu(ev, x, negative_slope=0.01, inplace=False, *, func=None):
    """``max(x, a x)``: a max neuron over ``x`` and the identity neuron ``a x``; lifted
    ``x + |a|^q x``."""
    ev.terms(2)
    factor = 1.0 + abs(negative_slope) ** ev.q
    return ev.fixed(x, lambda m: m * factor)


@rule("prelu", F.prelu)
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


# ---------------------------------------------------------------- parametrised linear maps

def _with_bias(ev, y, bias, channel_dim, ndim):
    if bias is None:
        return y
    shape = [1] * ndim
    shape[channel_dim] = -1
    return ev.add([y, ev.bias(ev.param(None, bias), lambda p: p.reshape(shape))])


def _check_param(name):
    def check(x, weight, *args, **kwargs):
        from .capture import Buffer, Param
        if not isinstance(weight, (Param, Buffer, Tensor)):
            return f"{name} weight must be a parameter, a buffer or a constant tensor"
        return None
    return check


@rule("conv", F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
      check=_check_param("convolution"))
def conv(ev, x, weight, bias=None, *args, func, **kwargs):
    """``y = W * x + b`` with ``|W|^q`` and ``|b|^q`` (stride, padding, dilation, groups kept)."""
    w = ev.param(None, weight)
    ev.terms(math.prod(ev.param_shape(weight)[1:]) + 2)
    groups = args[3] if len(args) > 3 else kwargs.get("groups", 1)
    y = ev.linear(x, lambda m, p: func(m, p, None, *args, **kwargs), w,
                  stack_dim=1 if groups == 1 else None)
    return _with_bias(ev, y, bias, 1, len(ev.out_shape()))


@rule("conv_transpose", F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
      check=_check_param("transposed convolution"))
def conv_transpose(ev, x, weight, bias=None, *args, func, **kwargs):
    """Transposed convolution with ``|W|^q`` and ``|b|^q``."""
    w = ev.param(None, weight)
    ev.terms(math.prod(ev.param_shape(weight)) // max(1, ev.param_shape(weight)[1]) + 2)
    y = ev.linear(x, lambda m, p: func(m, p, None, *args, **kwargs), w)
    return _with_bias(ev, y, bias, 1, len(ev.out_shape()))


@rule("linear", F.linear, check=_check_param("linear"))
def linear(ev, x, weight, bias=None, *, func):
    """``y = W x + b`` with ``|W|^q`` and ``|b|^q``."""
    w = ev.param(None, weight)
    ev.terms(ev.param_shape(weight)[-1] + 2)
    y = ev.linear(x, lambda m, p: F.linear(m, p), w, stack_dim=-1)
    return _with_bias(ev, y, bias, -1, len(ev.out_shape()))


def _check_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                      *args, **kwargs):
    if training:
        return ("batch_norm with training=True normalises with batch statistics and updates the "
                "running statistics; call it with training=False (the model in eval mode)")
    if running_mean is None or running_var is None:
        return ("BatchNorm without running statistics normalises with batch statistics; "
                "use track_running_stats=True")
    return None


@rule("batch_norm", F.batch_norm, check=_check_batch_norm)
def batch_norm(ev, x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, func=None):
    """Frozen BatchNorm: identity neurons with weight ``s = gamma / sqrt(var + eps)`` and bias
    ``t = beta - mean * s``, lifted to ``|s|^q`` and ``|t|^q`` (running statistics always)."""
    def scale(var, gamma=None, *_):
        root = torch.sqrt(var + eps)
        return root.reciprocal() if gamma is None else gamma / root

    def shift(mean, var, gamma=None, beta=None):
        t = -mean * scale(var, gamma)
        return t if beta is None else beta + t

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
    stride = _ntuple(stride if stride not in (None, ()) else kernel, d)
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


@rule("max_pool", F.max_pool1d, F.max_pool2d, F.max_pool3d, check=_check_max_pool)
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
      check=_check_adaptive_max_pool)
def adaptive_max_pool(ev, x, output_size, return_indices=False, *, func=None):
    """Adaptive max-pooling becomes the sum over each adaptive window."""
    out = _spatial(ev.out_shape())
    inp = _spatial(ev.shape(x))
    avg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(out)]
    ev.terms(math.prod(-(-a // b) + 1 for a, b in zip(inp, out)) + 2)
    return ev.fixed(x, lambda m: avg(m, out) * _window_counts(inp, out, m.dtype, m.device))


@rule("avg_pool", F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d)
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
      torch.adaptive_avg_pool1d)
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


@rule("mean", torch.mean, Tensor.mean)
def mean(ev, x, dim=None, keepdim=False, *, dtype=None, func):
    """Mean over ``n`` entries: coefficients ``1/n``, lifted to ``mean * n^(1-q)``."""
    n = _reduced_count(ev.shape(x), dim)
    ev.terms(n + 2)
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return ev.fixed(x, lambda m: torch.mean(m, **kwargs) * float(n) ** (1.0 - ev.q))


@rule("sum", torch.sum, Tensor.sum)
def total(ev, x, dim=None, keepdim=False, *, dtype=None, func):
    """Sum over entries: coefficients one."""
    ev.terms(_reduced_count(ev.shape(x), dim) + 2)
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return ev.fixed(x, lambda m: torch.sum(m, **kwargs))


# ---------------------------------------------------------------- sums of activations

def _check_add(x, y=None, *args, alpha=1, **kwargs):
    if not (_lifted(x) and _lifted(y)):
        return ("adding a constant to an activation is not supported; fold it into a bias "
                "parameter")
    return None


@rule("add", torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__radd__,
      Tensor.__iadd__, check=_check_add)
def add(ev, x, y, *, alpha=1, func=None):
    """Residual addition: coefficients one (``|alpha|^q`` on the second operand)."""
    ev.terms(2)
    if alpha != 1:
        factor = abs(alpha) ** ev.q
        y = ev.fixed(y, lambda m: m * factor)
    return ev.add([x, y])


@rule("sub", torch.sub, Tensor.sub, Tensor.sub_, Tensor.__sub__, Tensor.__rsub__,
      Tensor.__isub__, check=_check_add)
def sub(ev, x, y, *, alpha=1, func=None):
    """Subtraction: coefficients one and minus one, both lifted to one."""
    return add(ev, x, y, alpha=alpha)


@rule("neg", torch.neg, Tensor.neg, Tensor.__neg__)
def neg(ev, x, *, func=None):
    """Negation: coefficient minus one, lifted to one."""
    return x


def _check_scale(x, y, *args, **kwargs):
    if _lifted(x) and _lifted(y):
        return "a product of two activations is not in the path-lifting model"
    return None


def _check_div(x, y, *args, **kwargs):
    from .capture import Buffer
    if not (_const(y) or isinstance(y, Buffer)):
        return "dividing by an activation or a parameter is not in the path-lifting model"
    return None


@rule("mul", torch.mul, Tensor.mul, Tensor.mul_, Tensor.__mul__, Tensor.__rmul__,
      Tensor.__imul__, check=_check_scale)
def mul(ev, x, y, *, func=None):
    """Multiplication by a parameter ``p`` (a learnt scale, coefficients ``|p|^q``) or by a
    constant ``c`` (number or tensor, coefficients ``|c|^q``)."""
    from .capture import Buffer, Param
    if _const(x) or isinstance(x, (Param, Buffer)):
        x, y = y, x
    ev.terms(1)
    if isinstance(y, (Param, Buffer)):
        return ev.linear(x, lambda m, p: m * p, ev.param(None, y))
    factor = _abs_pow(y, ev.q)
    return ev.fixed(x, lambda m: m * (factor.to(m) if isinstance(factor, Tensor) else factor))


@rule("div", torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__, Tensor.__itruediv__,
      check=_check_div)
def div(ev, x, y, *, rounding_mode=None, func=None):
    """Division by a constant ``c``: coefficients ``|1/c|^q``."""
    from .capture import Buffer
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
    from .capture import Buffer
    return [ev.bias(ev.param(None, t), lambda p: p) if isinstance(t, (Tensor, Buffer)) else t
            for t in tensors]


@rule("cat", torch.cat, torch.concat, torch.concatenate)
def cat(ev, tensors, dim=0, *, func=None):
    """Concatenation of lifted tensors and constant blocks (exponents aligned)."""
    return ev.join(_blocks(ev, tensors), lambda ms: torch.cat(ms, dim))


@rule("stack", torch.stack)
def stack(ev, tensors, dim=0, *, func=None):
    """Stacking of lifted tensors and constant blocks (exponents aligned)."""
    return ev.join(_blocks(ev, tensors), lambda ms: torch.stack(ms, dim))


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
)


@rule("rearrange", *_REARRANGE)
def rearrange(ev, x, *args, func, **kwargs):
    """Ops that copy or move entries (coefficients one): applied to the lifted tensor as is."""
    return ev.fixed(x, lambda m: func(m, *args, **kwargs))


@rule("cast", Tensor.to, Tensor.float, Tensor.double, Tensor.type_as, Tensor.cpu, Tensor.cuda,
      Tensor.detach, torch.detach)
def cast(ev, x, *args, func=None, **kwargs):
    """Dtype and device changes: the lifted network keeps its own precision."""
    return x


def _check_pad(x, pad, mode="constant", value=None):
    if mode == "constant" and value not in (None, 0, 0.0):
        return f"padding with the constant {value} adds a fixed bias; only zero padding is linear"
    return None


@rule("pad", F.pad, check=_check_pad)
def pad(ev, x, pad, mode="constant", value=None, *, func):
    """Zero, reflect, replicate and circular padding copy entries (coefficients one)."""
    return ev.fixed(x, lambda m: F.pad(m, pad, mode=mode))


def _check_interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                       recompute_scale_factor=None, antialias=False):
    if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"):
        return f"interpolation mode '{mode}' has negative coefficients"
    if antialias:
        return "antialiased interpolation is not supported"
    return None


def interpolation_matrix(n_in, n_out, mode, align_corners, scale, dtype, device):
    """The ``n_out x n_in`` coefficient matrix of 1-D interpolation along one axis."""
    eye = torch.eye(n_in, dtype=dtype, device=device).unsqueeze(1)
    mode_1d = "linear" if mode in ("bilinear", "trilinear", "linear") else mode
    kwargs = {"scale_factor": scale, "recompute_scale_factor": False} if scale else {"size": n_out}
    if mode_1d == "linear":
        kwargs["align_corners"] = align_corners
    return F.interpolate(eye, mode=mode_1d, **kwargs)[:, 0, :].T


@rule("interpolate", F.interpolate, check=_check_interpolate)
def interpolate(ev, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False, *, func):
    """Nearest, (bi/tri)linear and area resampling: fixed non-negative coefficients ``c``,
    lifted to ``c^q``. Linear modes are separable, so ``c^q`` is applied axis by axis."""
    inp, out = _spatial(ev.shape(x)), _spatial(ev.out_shape())
    kwargs = dict(size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                  recompute_scale_factor=recompute_scale_factor)
    if mode == "area":
        return adaptive_avg_pool(ev, x, out, func=(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                                                  F.adaptive_avg_pool3d)[len(out) - 1])
    ev.terms(2 ** len(out) + 2)
    if ev.q == 1.0 or mode.startswith("nearest"):
        return ev.fixed(x, lambda m: F.interpolate(m, **kwargs))
    scales = _ntuple(scale_factor, len(out)) if scale_factor is not None and not \
        recompute_scale_factor else (None,) * len(out)

    def lifted(m):
        for axis, (n_in, n_out, scale) in enumerate(zip(inp, out, scales)):
            coeff = interpolation_matrix(n_in, n_out, mode, align_corners, scale, m.dtype,
                                         m.device) ** ev.q
            m = torch.movedim(torch.movedim(m, 2 + axis, -1) @ coeff.T, -1, 2 + axis)
        return m
    return ev.fixed(x, lifted)


@rule("upsample_linear", F.upsample_bilinear, F.upsample_nearest, F.upsample)
def upsample(ev, x, size=None, scale_factor=None, *args, func, **kwargs):
    """Deprecated upsampling functions, mapped onto ``interpolate``."""
    if func is F.upsample_bilinear:
        return interpolate(ev, x, size, scale_factor, "bilinear", True, func=F.interpolate)
    if func is F.upsample_nearest:
        return interpolate(ev, x, size, scale_factor, "nearest", func=F.interpolate)
    return interpolate(ev, x, size, scale_factor, *args, func=F.interpolate, **kwargs)
