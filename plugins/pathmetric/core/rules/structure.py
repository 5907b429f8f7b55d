"""Rules of the concatenation (cat, stack, hstack), rearrangements, casts, padding and
interpolation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ir import Buffer, Value
from .pooling import adaptive_avg_pool
from .registry import ACTIVATION, POOLING, STRUCTURE, Tensor, ntuple, offset, rule, spatial_dims

# ---------------------------------------------------------------- concatenation

def _blocks(ev, tensors):
    """Lifted values as they are; a constant, buffer or buffer-derived block is a set of neurons
    holding fixed values ``c`` (paths start there, like at a bias: lifted ``|c|^q``)."""
    return [ev.bias(ev.param(None, t), lambda p: p) if isinstance(t, (Tensor, Buffer)) else t
            for t in tensors]


@rule("cat", torch.cat, torch.concat, torch.concatenate,
      family=STRUCTURE, channels="join", transforms_through=False)
def cat(ev, tensors, dim=0, *, func=None):
    """Concatenation of lifted tensors and constant blocks (exponents aligned)."""
    return ev.join(_blocks(ev, tensors), lambda ms: torch.cat(ms, dim))


@rule("stack", torch.stack, family=STRUCTURE, channels="join", transforms_through=False)
def stack(ev, tensors, dim=0, *, func=None):
    """Stacking of lifted tensors and constant blocks (exponents aligned)."""
    return ev.join(_blocks(ev, tensors), lambda ms: torch.stack(ms, dim))


@rule("hstack", torch.hstack, torch.vstack, torch.dstack, torch.column_stack,
      family=STRUCTURE, transforms_through=False)
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
    Tensor.moveaxis, torch.moveaxis, Tensor.T.__get__, Tensor.mT.__get__,  # type: ignore[attr-defined]
    Tensor.unsqueeze_,
    Tensor.squeeze_, Tensor.index_select, torch.index_select,
)


@rule("rearrange", *_REARRANGE, family=STRUCTURE, moves_entries=True)
def rearrange(ev, x, *args, func, **kwargs):
    """Ops that copy or move entries (coefficients one): applied to the lifted tensor as is."""
    return ev.fixed(x, lambda m: func(m, *args, **kwargs), terms=0)


@rule("cast", Tensor.to, Tensor.float, Tensor.double, Tensor.type_as, Tensor.cpu, Tensor.cuda,
      Tensor.detach, torch.detach, Tensor.half, Tensor.bfloat16, Tensor.type, family=ACTIVATION,
      quantization="cast")
def cast(ev, x, *args, func=None, **kwargs):
    """Device changes and value-preserving dtype changes (the same dtype, a wider floating
    dtype: float16 -> float32 -> float64, or back to dtype ``D`` from a value that only widening
    casts made from a ``D`` value: ``h.double().float()``): the identity, as the lifted network
    keeps its own precision. A cast that rounds to a narrower floating dtype (:func:`rounding`)
    inside a deployed model (a graph with quantization points: Intel Neural Compressor's
    half-precision layers) is a rounding point, the identity here (a copy, so that the gradient
    there is the mass downstream of the cast alone) whose error ``u |z| + eta`` the deployed
    analysis adds. Any other cast that rounds or truncates values (to an integer or bool dtype;
    to a narrower floating dtype outside a deployed model) changes the function and is
    refused."""
    if _preserves(ev.graph, ev.node):
        return x
    if rounding(ev.graph, ev.node) is not None and ev.graph.quantized():
        return ev.fixed(x, torch.clone, terms=0)
    source, target = ev.graph.nodes[ev.node.roles["x"].node].dtype, ev.node.dtype
    raise ev.unsupported(f"a cast from {source} to {target} changes values (rounding or "
                         "truncation), which the path-lifting model does not contain; cast "
                         "the whole model instead, or quantize it with a recognised "
                         "quantization op (a float16/bfloat16 cast inside a model with "
                         "quantization points is certified by pm.deployment_report)")


def _preserves(graph, node) -> bool:
    """Whether the cast ``node`` keeps every value of its input (:func:`preserves_values`, also
    through the widening casts that made its input)."""
    source = graph.nodes[node.roles["x"].node].dtype
    return preserves_values(source, node.dtype) or preserves_values(
        widened_from(graph, node.roles["x"].node), node.dtype)


def rounding(graph, node) -> torch.dtype | None:
    """The floating dtype a cast node rounds its value to: a cast between floating dtypes that
    does not preserve values (to float16 or bfloat16 from float32), whose result is the nearest
    value of that dtype, ``|fl(z) - z| <= u |z| + eta`` (``u`` half the dtype's ``eps``, ``eta``
    half its subnormal spacing) while ``|z|`` is at most the dtype's largest value; None for a
    value-preserving cast and for any other node."""
    if node.rule.quantization != "cast" or not isinstance(node.roles.get("x"), Value):
        return None
    source = graph.nodes[node.roles["x"].node].dtype
    floating = all(isinstance(d, torch.dtype) and d.is_floating_point for d in (source, node.dtype))
    return node.dtype if floating and not _preserves(graph, node) else None


def widened_from(graph, index):
    """The dtype of the value that node ``index`` holds exactly: through a chain of
    value-preserving casts back to the first value that is not one (every value of a widening
    cast's output is a value of its input's dtype)."""
    node = graph.nodes[index]
    while node.rule.quantization == "cast":
        producer = graph.nodes[node.roles["x"].node]
        if not preserves_values(producer.dtype, node.dtype):
            break
        node = producer
    return node.dtype


def preserves_values(source, target) -> bool:
    """Whether every value of dtype ``source`` is exactly a value of dtype ``target``."""
    if source == target or source is None or target is None:
        return source == target
    if not (source.is_floating_point and target.is_floating_point):
        return False
    wider = torch.finfo(target)
    narrower = torch.finfo(source)
    return wider.eps <= narrower.eps and wider.max >= narrower.max and wider.tiny <= narrower.tiny


def _check_pad(x, pad, mode="constant", value=None):
    if mode == "constant" and value is not None and not (math.isfinite(value) or value == -math.inf):
        return f"padding with {value}"
    return None


def _pads_minus_infinity(node) -> bool:
    """Whether a padding node fills with ``-inf``: missing entries, for the max-pooling after it."""
    return node.roles.get("value") == -math.inf


@rule("pad", F.pad, check=_check_pad, family=STRUCTURE, missing_entries=_pads_minus_infinity)
def pad(ev, x, pad, mode="constant", value=None, *, func):
    """Zero, reflect, replicate and circular padding copy entries (coefficients one). A padded
    constant ``c`` is a bias on the padded entries (``|c|^q``); a ``-inf`` entry never wins the
    max-pooling that must follow it (:func:`check_graph`), so it starts no path."""
    y = ev.fixed(x, lambda m: F.pad(m, pad, mode=mode), terms=0)
    if mode != "constant" or not value or value == -math.inf:
        return y
    mask = F.pad(torch.zeros(ev.shape(x), dtype=ev.dtype, device=ev.device), pad, value=1.0)
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


@rule("interpolate", F.interpolate, check=_check_interpolate, family=POOLING)
def interpolate(ev, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False, *, func):
    """Nearest, (bi/tri)linear, bicubic, antialiased and area resampling: fixed coefficients
    ``c``, lifted to ``|c|^q`` (bicubic ones can be negative). All but nearest are separable, so
    ``|c|^q`` is applied axis by axis."""
    inp, out = spatial_dims(ev.shape(x)), spatial_dims(ev.out_shape())
    kwargs = dict(size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                  recompute_scale_factor=recompute_scale_factor, antialias=antialias)
    if mode == "area":
        return adaptive_avg_pool(ev, x, out, func=(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                                                  F.adaptive_avg_pool3d)[len(out) - 1])
    n = (math.prod(inp) if antialias else 4 ** len(out)) + 2
    if antialias and inp[-1] == 1 and (ev.q != 1.0 or mode == "bicubic"):
        raise ev.unsupported("PyTorch's antialiased resampling of an image of width one is not "
                             "separable (its coefficients cannot be read axis by axis)")
    if (ev.q == 1.0 and mode != "bicubic") or mode.startswith("nearest"):
        return ev.fixed(x, lambda m: F.interpolate(m, **kwargs), terms=n)
    scales = ntuple(scale_factor, len(out)) if scale_factor is not None and not \
        recompute_scale_factor else (None,) * len(out)

    def lifted(m):
        for axis, (n_in, n_out, scale) in enumerate(zip(inp, out, scales)):
            coeff = interpolation_matrix(n_in, n_out, mode, align_corners, scale, m.dtype,
                                         m.device, antialias).abs() ** ev.q
            m = torch.movedim(torch.movedim(m, 2 + axis, -1) @ coeff.T, -1, 2 + axis)
        return m
    return ev.fixed(x, lifted, terms=n)


@rule("upsample_linear", F.upsample_bilinear, F.upsample_nearest, F.upsample, family=POOLING)
def upsample(ev, x, size=None, scale_factor=None, *args, func, **kwargs):
    """Deprecated upsampling functions, mapped onto ``interpolate``."""
    if func is F.upsample_bilinear:
        return interpolate(ev, x, size, scale_factor, "bilinear", True, func=F.interpolate)
    if func is F.upsample_nearest:
        return interpolate(ev, x, size, scale_factor, "nearest", func=F.interpolate)
    return interpolate(ev, x, size, scale_factor, *args, func=F.interpolate, **kwargs)
