"""Scaled arithmetic: a non-negative tensor carried as ``mantissa * 2**exponent``.

Path-norms of deep networks overflow any floating-point format (ResNet-152's L1 path-norm is about
1e194, a 1000-layer MLP's about 1e1500). Every lifted tensor is therefore a mantissa tensor and one
integer power-of-two exponent. Multiplying by a power of two is exact, so the scaling itself adds
no rounding error; additions and concatenations first bring their operands to a common exponent.

Renormalisation costs a reduction over the tensor, so it is done after the maps that sum many
weighted terms (convolution, linear): there the largest entry is brought back to [0.5, 1) once it
leaves [2**-60, 2**60]. Fixed maps (pooling, upsampling, reshaping) and sums change the largest
entry by a factor bounded by the number of summed terms, a frozen BatchNorm by at most
``|gamma| / sqrt(eps)`` (300 |gamma| for the default eps), and the next convolution or linear map
renormalises; float32 keeps 2**66 of headroom above 2**60 for them. An all-zero tensor takes the
exponent ``ZERO_EXPONENT``, so it never drags the other operands of a sum down to its scale.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Beyond this exponent gap, the smaller operand of an addition is below the rounding of the larger
# one in float64 (and float32), so it is dropped rather than scaled into denormals.
_NEGLIGIBLE_GAP = 1100
_LOW, _HIGH = 2.0 ** -60, 2.0 ** 60
ZERO_EXPONENT = -(1 << 40)


def times_pow2(tensor: torch.Tensor, exponent: int, inplace=False) -> torch.Tensor:
    """Return ``tensor * 2**exponent`` exactly, in steps that stay representable in float32
    (one step when the factor is representable in the tensor's precision); ``inplace``
    overwrites ``tensor``."""
    limit = 1000 if tensor.dtype == torch.float64 else 120
    while exponent:
        step = exponent if abs(exponent) <= limit else (120 if exponent > 0 else -120)
        tensor = tensor.mul_(2.0**step) if inplace else tensor * 2.0**step
        inplace = True  # the first step made a new tensor
        exponent -= step
    return tensor


class Scaled:
    """The non-negative tensor ``m * 2**e`` (``m`` a tensor, ``e`` a Python int)."""

    __slots__ = ("m", "e")

    def __init__(self, m: torch.Tensor, e: int = 0):
        self.m = m
        self.e = e

    @classmethod
    def normalized(cls, m: torch.Tensor, e: int = 0) -> "Scaled":
        """``m * 2**e`` with ``max(m)`` brought back to [0.5, 1) once it leaves [2**-60, 2**60]
        (an all-zero ``m`` gets ``ZERO_EXPONENT``)."""
        if m.numel() == 0:
            return cls(m, e)
        peak = float(m.detach().amax())
        if _LOW <= peak <= _HIGH:
            return cls(m, e)
        if peak == 0.0:
            return cls(m, ZERO_EXPONENT)
        if not math.isfinite(peak):
            raise FloatingPointError(
                "a lifted tensor is not finite: a parameter holds NaN or infinity, or one "
                "operation overflowed (use the float64 precision)")
        shift = math.frexp(peak)[1]
        return cls(times_pow2(m, -shift), e + shift)

    def renormalized(self) -> "Scaled":
        return Scaled.normalized(self.m, self.e)

    def log(self) -> float:
        """Natural log of the sum of all entries (``-inf`` for an all-zero tensor)."""
        total = float(self.m.detach().sum())
        if total == 0.0:
            return -math.inf
        return math.log(total) + self.e * math.log(2.0)


def to_float(mantissa: float, exponent: int) -> float:
    """``mantissa * 2**exponent`` as a Python float (``inf`` past float64)."""
    if mantissa == 0.0:
        return 0.0
    try:
        return math.ldexp(mantissa, exponent)
    except OverflowError:
        return math.inf


def common_exponent(values) -> int:
    return max(v.e for v in values)


def aligned(values, exponent: int):
    """Mantissas of ``values`` expressed at ``exponent`` (negligible ones become zeros)."""
    out = []
    for v in values:
        gap = v.e - exponent
        out.append(torch.zeros_like(v.m) if gap < -_NEGLIGIBLE_GAP else times_pow2(v.m, gap))
    return out


def scaled_sum(values, owned=False) -> Scaled:
    """Sum of broadcastable scaled tensors, ``sum_k m_k 2**(e_k - E)`` at ``E = max e_k``: each
    operand is scaled inside the addition (``alpha``), not in a pass of its own. ``owned``: the
    operands are temporaries of one shape, and the sum is accumulated into one of them."""
    values = sorted(values, key=lambda v: v.e, reverse=True)
    if len(values) == 1:
        return values[0]
    exponent = values[0].e
    total = values[0].m
    for v in values[1:]:
        gap = v.e - exponent
        if gap < -_NEGLIGIBLE_GAP:
            shape = torch.broadcast_shapes(total.shape, v.m.shape)
            total = total if shape == total.shape else total.expand(shape)
            continue
        if gap < -120:
            v = Scaled(times_pow2(v.m, gap), exponent)
            gap = 0
        if owned:
            total = total.add_(v.m, alpha=2.0**gap)
        else:
            total = torch.add(total, v.m, alpha=2.0**gap)
    return Scaled(total, exponent)


def scaled_affine(terms, shift=None) -> Scaled:
    """``sum_k x_k * s_k + shift`` for scaled ``x_k`` with channels along dim 1 and non-negative
    per-channel vectors ``s_k`` and ``shift`` (a tensor at exponent 0 or a ``Scaled``), one pass per term: the
    small vectors, not the ``x_k``, are brought to the common exponent. The first term goes
    through ``F.batch_norm`` with zero mean and unit variance (``x * s + shift`` exactly, and a
    fused backward)."""
    parts = [Scaled(s, x.e) for x, s in terms]
    if shift is not None:
        parts.append(Scaled.normalized(shift.m, shift.e) if isinstance(shift, Scaled)
                     else Scaled.normalized(shift))
    exponent = common_exponent(parts)
    factors = aligned(parts, exponent)
    (first, _), factor = terms[0], factors[0]
    total = F.batch_norm(first.m, torch.zeros_like(factor), torch.ones_like(factor), factor,
                         factors[-1] if shift is not None else None, False, 0.0, 0.0)
    for (x, _), factor in zip(terms[1:], factors[1:]):
        total = torch.addcmul(total, x.m, factor.reshape((1, -1) + (1,) * (x.m.dim() - 2)))
    return Scaled(total, exponent)


def scaled_total(values) -> Scaled:
    """Sum of all entries of all ``values``, as a 0-dim scaled tensor."""
    return scaled_sum([Scaled(v.m.sum(), v.e) for v in values])
