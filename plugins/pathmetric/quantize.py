"""Round-to-nearest weight quantizers (dequantized outputs) used by certificates and adapters.

Both grids contain zero exactly, and rounding to nearest never changes a sign: ``round(w/s)`` has
the sign of ``w``, the asymmetric range is widened to contain 0 and the zero point is an integer.
Certificates never rely on this: a quantizer that flips signs is handled by the path-metric's
sign rule (docs/design.md, "The path-metric certificate"), at the price of a larger bound.
"""
from __future__ import annotations

from typing import Callable

import torch

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")


def _rows(tensor: torch.Tensor, granularity: str, group_size):
    """The tensor as rows that share one scale: 1 row, one per output channel, or groups."""
    if granularity == "per_tensor":
        return tensor.reshape(1, -1), None
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)
    if granularity == "per_channel":
        return rows, None
    if not group_size or group_size <= 0:
        raise ValueError("per_group quantization needs a positive group_size")
    pad = (-rows.shape[1]) % group_size
    padded = torch.nn.functional.pad(rows, (0, pad))
    return padded.reshape(-1, group_size), (rows.shape, pad)


def quantize_weights(tensor: torch.Tensor, bits: int, scheme: str = "symmetric",
                     granularity: str = "per_channel", group_size: int | None = None,
                     dim: int = 0) -> torch.Tensor:
    """Round-to-nearest quantization of ``tensor`` to ``bits`` bits, returned dequantized.

    - symmetric: ``s = max|w| / (2^(b-1) - 1)``, ``q = clamp(round(w/s), -2^(b-1), 2^(b-1)-1) s``;
    - asymmetric: ``lo = min(w, 0)``, ``hi = max(w, 0)``, ``s = (hi - lo) / (2^b - 1)``,
      ``z = round(-lo/s)``, ``q = (clamp(round(w/s) + z, 0, 2^b - 1) - z) s``;

    with one scale per tensor, per output channel (a row: the slice at one index of ``dim``,
    0 for conv/linear weights, 1 for the ``(in, out)`` ``W`` of ``x @ W`` and for transposed
    convolutions, whose rows then span their groups) or per group of ``group_size``
    consecutive entries of a row. Rounding is half-to-even; all-zero rows stay zero.
    """
    return quantizer(tensor, scheme, granularity, group_size, dim)(bits)


def quantizer(tensor: torch.Tensor, scheme: str = "symmetric", granularity: str = "per_channel",
              group_size: int | None = None, dim: int = 0) -> Callable[[int], torch.Tensor]:
    """``bits -> quantize_weights(tensor, bits, scheme, granularity, group_size, dim)``,
    computing the per-row minima and maxima once for all bit-widths."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    moved = tensor.detach().movedim(dim, 0) if tensor.dim() > 1 else tensor.detach()
    rows, grouping = _rows(moved, granularity, group_size)
    lo = rows.amin(dim=1, keepdim=True).clamp(max=0)
    hi = rows.amax(dim=1, keepdim=True).clamp(min=0)

    def quantize(bits: int) -> torch.Tensor:
        if not 2 <= int(bits) <= 16:
            raise ValueError(f"bits must be between 2 and 16, got {bits}")
        # |round(w/s)| <= top: w/s is at most top * (1 + 2 eps), so the symmetric clamp never
        # binds, and an all-zero row (s = 0, divided by 1) quantizes to zeros
        if scheme == "symmetric":
            top = 2 ** (bits - 1) - 1
            scale = torch.maximum(hi, lo.neg()) / top
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.div(rows, safe).round_().mul_(safe)
        else:
            top = 2 ** bits - 1
            scale = (hi - lo) / top
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.round(-lo / safe)
            q = torch.div(rows, safe).round_().add_(zero).clamp_(0, top).sub_(zero).mul_(safe)
        if grouping is not None:
            shape, pad = grouping
            q = q.reshape(shape[0], -1)[:, :shape[1]]
        q = q.reshape(moved.shape)
        return (q.movedim(0, dim) if tensor.dim() > 1 else q).to(tensor.dtype)
    return quantize
