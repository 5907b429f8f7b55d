"""Round-to-nearest weight quantizers (dequantized outputs) used by certificates and adapters, and
the activation points of W/A plans (calibrated per-tensor grids at the input of conv/linear
modules, and the fake-quantized model that deploys a plan).

Both grids contain zero exactly, and rounding to nearest never changes a sign: ``round(w/s)`` has
the sign of ``w``, the asymmetric range is widened to contain 0 and the zero point is an integer.
Certificates never rely on this: a quantizer that flips signs is handled by the path-metric's
sign rule (docs/design.md, "The path-metric certificate"), at the price of a larger bound.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

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


# ---------------------------------------------------------------- activation points

class ActivationGrid(NamedTuple):
    """The grid of one activation point: ``Q(z) = scale * (clamp(round(z / scale) + zero_point,
    quant_min, quant_max) - zero_point)`` (``torch.fake_quantize_per_tensor_affine``)."""
    scale: float
    zero_point: int
    quant_min: int
    quant_max: int


def activation_grid(low: float, high: float, bits: int) -> ActivationGrid:
    """The unsigned per-tensor grid of ``bits`` bits calibrated on the range ``[low, high]``, as
    ``torch.ao.quantization.MinMaxObserver`` (affine, ``quint8`` at 8 bits) computes it: the range
    widened to contain 0, ``s = (max(high, 0) - min(low, 0)) / (2^b - 1)`` (rounded to float32, the
    precision of the fake-quant kernels, and at least float32's eps), ``zp = clamp(-round(min(low,
    0) / s), 0, 2^b - 1)``. Values in ``[s (0 - zp), s (2^b - 1 - zp)]`` move by at most ``s / 2``."""
    if not 2 <= int(bits) <= 16:
        raise ValueError(f"activation bits must be between 2 and 16, got {bits}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"the calibrated activation range [{low}, {high}] is not finite")
    top = 2 ** int(bits) - 1
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    eps = float(torch.finfo(torch.float32).eps)
    scale = float(torch.tensor(max((high - low) / top, eps), dtype=torch.float32))
    zero_point = int(min(max(-round(low / scale), 0), top))
    return ActivationGrid(scale, zero_point, 0, top)


def layer_input_ranges(model: nn.Module, x, layers: Sequence[str]) -> dict:
    """``{layer: (min, max)}`` of the input of each conv/linear module ``layers`` over the
    calibration batch ``x`` (float model, eval mode as given; a copy of ``model`` carries the
    hooks), in the order the layers run."""
    probe = copy.deepcopy(model)
    ranges: dict = {}
    hooks = []
    for layer in layers:
        module = _module(probe, layer)

        def record(_module, args, layer=layer):
            if layer in ranges:
                raise ValueError(f"'{layer}' runs twice in one forward: an activation point per "
                                 "call is not supported; quantize its input once, upstream")
            value = args[0].detach()
            ranges[layer] = (float(value.amin()), float(value.amax()))
        hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        probe(*(x if isinstance(x, tuple) else (x,)))
    missing = [layer for layer in layers if layer not in ranges]
    if missing:
        raise ValueError(f"layers {missing} did not run on the calibration batch")
    return ranges


def fake_quantized(model: nn.Module, weights: Mapping[str, torch.Tensor],
                   act_grids: Mapping[str, ActivationGrid]) -> nn.Module:
    """A copy of ``model`` with the parameters ``weights`` names replaced by the given tensors
    and, for every ``layer -> grid`` of ``act_grids``, the layer's input fake-quantized on that
    grid (``torch.fake_quantize_per_tensor_affine`` in a forward pre-hook of the module): the
    deployed model of a W/A plan, which ``pm.deployment_report`` certifies. ``model`` itself is
    not modified."""
    deployed = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in weights.items():
            deployed.get_parameter(name).copy_(value)
    for layer, grid in act_grids.items():
        def quantize_input(_module, args, grid=grid):
            return (torch.fake_quantize_per_tensor_affine(args[0], *grid),) + tuple(args[1:])
        _module(deployed, layer).register_forward_pre_hook(quantize_input)
    return deployed


def _module(model: nn.Module, layer: str) -> nn.Module:
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"layer '{layer}' is not a module of the model: activation points sit "
                         "at the input of conv/linear modules (nn.Conv2d, nn.Linear, ...); a "
                         "functional layer has no module to quantize the input of") from None


def observer_ranges(prepared: torch.fx.GraphModule) -> dict:
    """``{layer: (min, max)}`` that the observers of a prepared, calibrated graph recorded at the
    input of each conv/linear layer (torchao ``prepare_pt2e``, Intel Neural Compressor's
    ``prepare``: an observer module with ``min_val`` / ``max_val`` read by the call whose weight
    is the parameter ``<layer>.weight``), for ``act_ranges`` of the W/A plans. The recorded
    range, not the observer's own choice of grid (a histogram observer may clip it)."""
    if not isinstance(prepared, torch.fx.GraphModule):
        raise TypeError(f"observer_ranges reads a prepared torch.fx.GraphModule (prepare_pt2e, "
                        f"INC prepare), got {type(prepared).__name__}")
    ranges = {}
    for node in prepared.graph.nodes:
        if node.op != "call_function" or len(node.args) < 2:
            continue
        source, weight = _observer(prepared, node.args[0]), node.args[1]
        if _observer(prepared, weight) is not None:   # the weight's observer reads the parameter
            weight = weight.args[0]
        name = _parameter(weight)
        if source is None or name is None or not name.endswith(".weight"):
            continue
        observed, module = source
        low, high = float(module.min_val.detach().amin()), float(module.max_val.detach().amax())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"observer '{observed.target}' at the input of "
                             f"'{name[:-len('.weight')]}' has recorded nothing: run the prepared "
                             "model on calibration data first")
        ranges[name[:-len(".weight")]] = (low, high)
    if not ranges:
        raise ValueError("no observer at the input of a conv/linear layer in the prepared graph")
    return ranges


def _observer(graph_module, arg):
    """``(node, module)`` when ``arg`` is a call of an observer module (one with ``min_val`` and
    ``max_val``), else None."""
    if not isinstance(arg, torch.fx.Node) or arg.op != "call_module":
        return None
    module = graph_module.get_submodule(arg.target)
    return (arg, module) if hasattr(module, "min_val") and hasattr(module, "max_val") else None


def _parameter(arg):
    """The parameter name an argument reads (a ``get_attr`` node), else None."""
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return str(arg.target)
    return None
