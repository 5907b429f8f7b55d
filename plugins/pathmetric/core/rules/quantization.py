"""Rules of the quantization points of deployed integer models (docs/design.md, "The deployed
integer model"): ``torch.fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` and
the PT2E pairs ``quantized_decomposed.quantize_per_tensor`` / ``dequantize_per_tensor`` (and
``per_channel``, and the ``.tensor`` overloads with tensor scales) that ``convert_pt2e`` (torchao,
Intel Neural Compressor) leaves in a graph.

At a point ``t`` the value ``z`` becomes ``Q_t(z) = s (clamp(round(z / s) + zp, qmin, qmax) -
zp)``. In the lifted network a point is the identity: the path-lifting is that of the network
with exact activations, and the rounding is a bounded perturbation added by the deployed analysis
(:mod:`pathmetric.deployed`), which reads each point's grid with :func:`grid`. A quantize writes
the point (its grid); the dequantize that reads it maps the integers back exactly and is an
identity with no error of its own.

``torch.ao.quantization`` fake-quantization modules (``FakeQuantize``,
``FusedMovingAvgObsFakeQuantize``, ``FixedQParamsFakeQuantize``, and torchao's PT2E copies of
them) and observers are module rules: capture runs :func:`module_forward` in place of their own
forward (which reads the enable flags into Python and updates the observer's statistics). A
fake-quantization module is one point (the fake-quantize rules above) on the grid of its buffers,
or the identity while disabled; an observer is the identity. The flags are read at capture
(:func:`module_state`, part of the capture's cache key).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.ao.quantization.fx._decomposed  # registers the torch.ops.quantized_decomposed ops

from .registry import PARAMETER_FREE, rule

_OPS = torch.ops.quantized_decomposed

#: quantization points: the identity in the lifted passes, channel by channel; not homogeneous
#: (a rescaled channel would change the rounding grid)
QUANTIZATION_POINT = dict(PARAMETER_FREE, depth=0, homogeneous=False, channels="preserve",
                          transforms_through=False)


class Grid(NamedTuple):
    """The grid of one quantization point: ``scale`` and ``zero_point`` (numbers, or references
    to tensors of the model: one entry per channel along ``axis`` when ``axis`` is not None, a
    per-tensor tensor otherwise), and the integer range ``[quant_min, quant_max]``."""
    scale: object
    zero_point: object
    quant_min: int
    quant_max: int
    axis: int | None


@rule("fake_quantize", torch.fake_quantize_per_tensor_affine, family=QUANTIZATION_POINT,
      quantization="point")
def fake_quantize(ev, x, scale, zero_point, quant_min, quant_max, *, func=None):
    """``Q(z)`` on a per-tensor grid (``scale``, ``zero_point``): the identity in the lifted
    network; the rounding error ``|Q(z) - z| <= scale / 2`` (unsaturated) is the deployed
    analysis's. The point's lifted value is a copy of ``x``, so the gradient there is the mass
    downstream of the point alone (not of the other readers of ``x``)."""
    return ev.fixed(x, torch.clone, terms=0)


@rule("fake_quantize_per_channel", torch.fake_quantize_per_channel_affine,
      family=QUANTIZATION_POINT, quantization="point")
def fake_quantize_per_channel(ev, x, scale, zero_point, axis, quant_min, quant_max, *,
                              func=None):
    """``Q(z)`` on a grid per channel along ``axis``: the identity (a copy) in the lifted
    network."""
    return ev.fixed(x, torch.clone, terms=0)


@rule("quantize", _OPS.quantize_per_tensor.default, _OPS.quantize_per_tensor.tensor,
      _OPS.quantize_per_tensor.tensor2, family=QUANTIZATION_POINT, quantization="point")
def quantize(ev, x, scale, zero_point, quant_min, quant_max, dtype, *, func=None):
    """The integers ``clamp(round(z / s) + zp, qmin, qmax)`` of a PT2E point, lifted as the
    identity, a copy (the dequantize after it maps them back: together they are ``Q(z)``)."""
    return ev.fixed(x, torch.clone, terms=0)


@rule("quantize_per_channel", _OPS.quantize_per_channel.default, family=QUANTIZATION_POINT,
      quantization="point")
def quantize_per_channel(ev, x, scales, zero_points, axis, quant_min, quant_max, dtype, *,
                         func=None):
    """The integers of a PT2E point with a grid per channel along ``axis``: the identity (a
    copy)."""
    return ev.fixed(x, torch.clone, terms=0)


@rule("dequantize", _OPS.dequantize_per_tensor.default, _OPS.dequantize_per_tensor.tensor,
      _OPS.dequantize_per_tensor.tensor2, family=QUANTIZATION_POINT, quantization="dequantize")
def dequantize(ev, x, scale, zero_point, quant_min, quant_max, dtype, *, out_dtype=None,
               func=None):
    """``s (q - zp)``, exact on the integers of the quantize before it: the identity."""
    return x


@rule("dequantize_per_channel", _OPS.dequantize_per_channel.default,
      family=QUANTIZATION_POINT, quantization="dequantize")
def dequantize_per_channel(ev, x, scales, zero_points, axis, quant_min, quant_max, dtype, *,
                           out_dtype=None, func=None):
    """``s_c (q - zp_c)`` per channel along ``axis``, exact: the identity."""
    return x


@rule("choose_qparams", _OPS.choose_qparams.tensor, family=QUANTIZATION_POINT,
      quantization="qparams")
def choose_qparams(ev, x, quant_min, quant_max, eps, dtype, *, func=None):
    """The scale and zero point of a dynamic point, computed from the activation itself: no
    value of the network (zero lifted tensors; the quantize that reads them is the point)."""
    shapes = ev.out_shape()
    return ev.fixed(x, lambda m: tuple(m.new_zeros(shape) for shape in shapes), terms=0)


def grid(node) -> Grid:
    """The grid of the quantization point ``node`` (a node whose rule states
    ``quantization="point"``), read off its argument roles."""
    roles = node.roles
    scale = roles["scale"] if "scale" in roles else roles["scales"]
    zero_point = roles["zero_point"] if "zero_point" in roles else roles["zero_points"]
    return Grid(scale, zero_point, int(roles["quant_min"]), int(roles["quant_max"]),
                roles.get("axis"))


# ---------------------------------------------------------------- module rules

#: the forwards of the fake-quantization modules captured as one point: torch.ao's and
#: torchao's PT2E copies, as ``(module, qualified name)`` (torchao is recognised, not imported)
FAKE_QUANTIZE_FORWARDS = frozenset(
    (package, f"{cls}.forward")
    for package in ("torch.ao.quantization.fake_quantize", "torchao.quantization.pt2e.fake_quantize")
    for cls in ("FakeQuantize", "FusedMovingAvgObsFakeQuantize"))
#: the observer base classes (an observer's forward records statistics and returns its input)
OBSERVER_BASES = frozenset({("torch.ao.quantization.observer", "ObserverBase"),
                            ("torchao.quantization.pt2e.observer", "ObserverBase")})
_QUANTIZATION_PACKAGES = ("torch.ao.quantization.", "torchao.quantization.")


def _qualified(obj) -> tuple:
    return getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", None)


def module_kind(cls: type[torch.nn.Module]) -> str | None:
    """``"fake_quantize"`` for a module class whose forward is torch's (or torchao's)
    ``FakeQuantize`` or ``FusedMovingAvgObsFakeQuantize`` one, ``"observer"`` for an observer
    of torch or torchao (a subclass of ``ObserverBase`` whose forward is theirs), else None."""
    if cls not in _KINDS:
        observer = (any(_qualified(base) in OBSERVER_BASES for base in cls.__mro__)
                    and _qualified(cls.forward)[0].startswith(_QUANTIZATION_PACKAGES))
        _KINDS[cls] = ("fake_quantize" if _qualified(cls.forward) in FAKE_QUANTIZE_FORWARDS
                       else "observer" if observer else None)
    return _KINDS[cls]


_KINDS: dict[type[torch.nn.Module], str | None] = {}   # module_kind per class, decided once


def module_state(module) -> tuple:
    """What :func:`module_forward` reads into Python at capture: a fake-quantization module's
    ``fake_quant_enabled`` flag (``()`` for any other module)."""
    if module_kind(type(module)) != "fake_quantize":
        return ()
    return (bool(module.fake_quant_enabled[0]),)


def module_forward(module) -> Callable | None:
    """The forward capture runs in place of ``module``'s own, or None for a module that is not a
    known quantization module (called before the run: the flags it reads are not graph nodes).

    - a fake-quantization module (:func:`module_kind`): ``x -> Q(x)``, one
      ``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)`` (or
      ``fake_quantize_per_channel_affine`` along ``ch_axis``) on the grid of its buffers while
      its ``fake_quant_enabled`` flag is 1, the identity while it is 0; its observer never runs,
      so its statistics and grid are never updated (the grid is the one it holds, as converting
      the model would deploy it);
    - an observer: the identity (its own forward returns its input after
      recording statistics).
    """
    kind = module_kind(type(module))
    if kind == "fake_quantize" and module_state(module)[0]:
        return functools.partial(_fake_quantize_module, module)
    return _observed if kind is not None else None


def _observed(x, *args, **kwargs):
    """An observer's forward without the statistics: its input."""
    return x


def _fake_quantize_module(module, x):
    """The enabled fake-quantization ``module`` on ``x`` with its observer off
    (:func:`module_forward`)."""
    observer = module.activation_post_process
    low, high = int(observer.quant_min), int(observer.quant_max)
    if module.is_per_channel:
        return torch.fake_quantize_per_channel_affine(x, module.scale, module.zero_point,
                                                      int(module.ch_axis), low, high)
    return torch.fake_quantize_per_tensor_affine(x, module.scale, module.zero_point, low, high)
