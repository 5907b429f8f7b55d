"""Build a model from a command-line spec; never downloads weights.

Specs:

- ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None)``;
- ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False)``;
- ``smp:ARCH:ENCODER`` — ``segmentation_models_pytorch.ARCH(encoder_name=ENCODER, encoder_weights=None)``;
- ``path/to/file.py:FACTORY`` — calls ``FACTORY()`` defined in that file;
- ``digits`` — the digits CNN shipped with pathmetric (:func:`pathmetric.digits.pretrained`).

A checkpoint (``torch.save`` of a ``state_dict``, or of a dict holding one under ``state_dict``
or ``model``) is loaded into the built model with :func:`load_model`'s ``checkpoint``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

DEFAULT_SHAPES = {"digits": (1, 1, 8, 8)}


def build_model(spec: str) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), in eval mode."""
    if spec == "digits":
        from .digits import pretrained
        return pretrained()
    kind, _, rest = spec.partition(":")
    if kind == "torchvision" and rest:
        import torchvision
        model = torchvision.models.get_model(rest, weights=None)
    elif kind == "timm" and rest:
        import timm
        model = timm.create_model(rest, pretrained=False)
    elif kind == "smp" and rest.count(":") == 1:
        import segmentation_models_pytorch as smp
        arch, encoder = rest.split(":")
        if not hasattr(smp, arch):
            raise ValueError(f"segmentation_models_pytorch has no architecture {arch!r}")
        model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None)
    elif ".py:" in spec:
        file, factory = spec.rsplit(":", 1)
        model = _from_file(Path(file), factory)
    else:
        raise ValueError(
            f"cannot read model spec {spec!r}: use torchvision:NAME, timm:NAME, smp:ARCH:ENCODER, "
            "path/to/file.py:FACTORY or digits")
    return model.eval()


def _from_file(file: Path, factory: str) -> nn.Module:
    if not file.is_file():
        raise FileNotFoundError(f"model file {file} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_pathmetric_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, factory, None)):
        raise ValueError(f"{file} defines no callable {factory!r}")
    model = getattr(module, factory)()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{file}:{factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def load_checkpoint(model: nn.Module, checkpoint) -> nn.Module:
    """Load a saved ``state_dict`` (plain, or under ``state_dict`` / ``model``) into ``model``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    model.load_state_dict(state)
    return model.eval()


def load_model(spec: str, checkpoint=None) -> nn.Module:
    """:func:`build_model`, then the weights of ``checkpoint`` if given."""
    model = build_model(spec)
    return load_checkpoint(model, checkpoint) if checkpoint else model


def parse_shape(text: str) -> tuple:
    """``"1,3,64,64"`` or ``"1x3x64x64"`` -> ``(1, 3, 64, 64)`` (batch dimension first)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"input shape must be positive integers with the batch first, e.g. "
                         f"1,3,64,64; got {text!r}")
    return shape


def example_inputs(spec: str, shape: str | None = None) -> torch.Tensor:
    """Zero tensor of ``shape`` (default: 1x1x8x8 for digits, 1x3x224x224 otherwise)."""
    return torch.zeros(parse_shape(shape) if shape else DEFAULT_SHAPES.get(spec, (1, 3, 224, 224)))
