"""Rules of the max, average and adaptive poolings, ``sum_pool`` and the mean/sum reductions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import POOLING, REDUCTION, Tensor, ntuple, reduced_count, rule, spatial_dims

# ---------------------------------------------------------------- pooling

def sum_pool(m: Tensor, kernel, stride, padding, dilation, out_shape) -> Tensor:
    """Sum of each pooling window over the valid entries (zero padding, ceil_mode windows)."""
    d = m.dim() - 2
    kernel, dilation, padding = ntuple(kernel, d), ntuple(dilation, d), ntuple(padding, d)
    stride = ntuple(stride if stride not in (None, (), []) else kernel, d)
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
    kernel = ntuple(node.roles["kernel_size"], len(spatial_in))
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
      torch.max_pool3d, check=_check_max_pool, family=POOLING, max_pool=_max_pool_kernel,
      skips_missing=True)
def max_pool(ev, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             return_indices=False, *, func=None):
    """Max-pooling neurons become sum-pooling (not average) over the same windows."""
    out = spatial_dims(ev.out_shape())
    return ev.fixed(x, lambda m: sum_pool(m, kernel_size, stride, padding, dilation, out),
                    terms=math.prod(ntuple(kernel_size, len(out))) + 2)


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
      check=_check_adaptive_max_pool, family=POOLING, max_pool=_adaptive_kernel,
      skips_missing=True)
def adaptive_max_pool(ev, x, output_size, return_indices=False, *, func=None):
    """Adaptive max-pooling becomes the sum over each adaptive window."""
    out = spatial_dims(ev.out_shape())
    inp = spatial_dims(ev.shape(x))
    avg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(out)]
    n = math.prod(-(-a // b) + 1 for a, b in zip(inp, out)) + 2
    return ev.fixed(x, lambda m: avg(m, out) * _window_counts(inp, out, m.dtype, m.device),
                    terms=n)


@rule("avg_pool", F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d, family=POOLING)
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
    out = spatial_dims(ev.out_shape())
    n = math.prod(ntuple(kernel_size, len(out))) + 3
    if ev.q == 1.0:
        return ev.fixed(x, lambda m: func(m, **kwargs), terms=n)

    def lifted(m):
        ones = torch.ones((1, 1) + spatial_dims(m.shape), dtype=m.dtype, device=m.device)
        div = sum_pool(ones, kernel_size, stride, padding, 1, out) / func(ones, **kwargs)
        return func(m, **kwargs) * div ** (1.0 - ev.q)
    return ev.fixed(x, lifted, terms=n)


@rule("adaptive_avg_pool", F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
      torch.adaptive_avg_pool1d, family=POOLING)
def adaptive_avg_pool(ev, x, output_size, *, func):
    """Adaptive average pooling: coefficients ``1/count`` per window, lifted to ``count^-q``."""
    out = spatial_dims(ev.out_shape())
    inp = spatial_dims(ev.shape(x))
    n = math.prod(-(-a // b) + 1 for a, b in zip(inp, out)) + 3
    return ev.fixed(x, lambda m: func(m, out) * _window_counts(inp, out, m.dtype, m.device)
                    ** (1.0 - ev.q), terms=n)


@rule("mean", torch.mean, Tensor.mean, family=REDUCTION)
def mean(ev, x, dim=None, keepdim=False, *, dtype=None, func):
    """Mean over ``n`` entries: coefficients ``1/n``, lifted to ``mean * n^(1-q)``."""
    n = reduced_count(ev.shape(x), dim)
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return ev.fixed(x, lambda m: torch.mean(m, **kwargs) * float(n) ** (1.0 - ev.q), terms=n + 2)


@rule("sum", torch.sum, Tensor.sum, family=REDUCTION)
def total(ev, x, dim=None, keepdim=False, *, dtype=None, func):
    """Sum over entries: coefficients one."""
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return ev.fixed(x, lambda m: torch.sum(m, **kwargs), terms=reduced_count(ev.shape(x), dim) + 2)
