"""Build a model from a command-line spec; never downloads weights.

Specs:

- ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None)``;
- ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False)``;
- ``smp:ARCH:ENCODER`` — ``segmentation_models_pytorch.ARCH(encoder_name=ENCODER, encoder_weights=None)``;
- ``path/to/file.py:FACTORY`` — calls ``FACTORY()`` defined in that file;
- ``digits`` — the digits CNN shipped with pathmetric (:func:`pathmetric.app.digits.pretrained`).

A checkpoint (``torch.save`` of a ``state_dict``, or of a dict holding one under ``state_dict``
or ``model``) is loaded into the built model with :func:`load_model`'s ``checkpoint``; conv,
linear and BatchNorm layers take the checkpoint's channel counts (what ``pathmetric nni prune
--out`` writes after NNI's ModelSpeedup). A ``torch.save`` of a whole module of the built
model's class replaces it. Every problem is a ``ValueError`` (or
``FileNotFoundError``) with one line that says what to do.
"""
from __future__ import annotations

import difflib
import importlib.util
import inspect
import pickle
from itertools import chain
from pathlib import Path

import torch
from torch import nn

DEFAULT_SHAPES = {"digits": (1, 1, 8, 8)}


class FactoryError(ValueError):
    """The user's model file or factory raised while building the model: the error is theirs."""


def build_model(spec: str) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), in eval mode."""
    if spec == "digits":
        from .digits import pretrained
        return pretrained()
    kind, _, rest = spec.partition(":")
    if kind == "torchvision" and rest:
        import torchvision
        names = torchvision.models.list_models()
        if rest not in names:
            close = difflib.get_close_matches(rest, names, n=3)
            raise ValueError(f"torchvision has no model {rest!r}"
                             f"{f' (did you mean {close}?)' if close else ''}; "
                             "torchvision.models.list_models() lists them all")
        model = torchvision.models.get_model(rest, weights=None)
    elif kind == "timm" and rest:
        import timm
        if not timm.is_model(rest):
            raise ValueError(f"timm has no model {rest!r} (timm.list_models('*{rest[:6]}*') lists "
                             "similar names)")
        model = timm.create_model(rest, pretrained=False)
    elif kind == "smp" and rest.count(":") == 1:
        import segmentation_models_pytorch as smp
        arch, encoder = rest.split(":")
        if not hasattr(smp, arch):
            raise ValueError(f"segmentation_models_pytorch has no architecture {arch!r}")
        try:
            model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None)
        except (KeyError, ValueError) as error:
            raise ValueError(f"smp.{arch} cannot be built with encoder {encoder!r}: "
                             f"{' '.join(str(error).split())}") from None
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
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"{file} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - anything the user's file raises is theirs
        raise FactoryError(f"running {file} raised {type(error).__name__}: {error} (an error in "
                           "your model file; fix it there)") from error
    if not callable(getattr(module, factory, None)):
        raise ValueError(f"{file} defines no callable {factory!r}")
    try:
        model = getattr(module, factory)()
    except Exception as error:  # noqa: BLE001
        raise FactoryError(f"{file}:{factory}() raised {type(error).__name__}: {error} (an error "
                           "in your model factory; fix it there)") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"{file}:{factory}() returned {type(model).__name__}, not an "
                         "nn.Module: the factory must return the model")
    return model


def load_checkpoint(model: nn.Module, checkpoint) -> nn.Module:
    """Load a saved ``state_dict`` (plain, or under ``state_dict`` / ``model``) into ``model``;
    a whole saved module of ``model``'s class is returned instead (unpickled: trusted files
    only)."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        state = _whole_module(model, checkpoint)
        if state is not None:
            return state.eval()
        raise ValueError(f"checkpoint {checkpoint} is not a state_dict (torch.save(model."
                         "state_dict(), path)) nor a whole module of the model's class "
                         f"{type(model).__name__}") from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"checkpoint {checkpoint} cannot be read by torch.load: "
                         f"{' '.join(str(error).split())[:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {checkpoint} holds a {type(state).__name__}, not a "
                         "state_dict of tensors")
    missing, unexpected, mismatched = _mismatch(model, state)
    if mismatched and not missing and not unexpected and _resize_to(model, state):
        mismatched = []
    if missing or unexpected or mismatched:
        parts = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
                 for label, names in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatch", mismatched)) if names]
        raise ValueError(f"checkpoint {checkpoint} does not match model {type(model).__name__}: "
                         + "; ".join(parts))
    model.load_state_dict(state)
    return model.eval()


def _mismatch(model: nn.Module, state: dict) -> tuple:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, mismatched


#: per layer type, the attributes that count its channels, and the parameter dimension each reads
_CHANNEL_COUNTS = {
    nn.modules.conv._ConvNd: {"out_channels": ("weight", 0)},
    nn.Linear: {"out_features": ("weight", 0), "in_features": ("weight", 1)},
    nn.modules.batchnorm._BatchNorm: {"num_features": ("running_mean", 0)},
}


def _resize_to(model: nn.Module, state: dict) -> bool:
    """Give ``model``'s conv, linear and BatchNorm layers the channel counts of ``state`` (a
    state_dict of the same model with fewer channels: ``pathmetric nni prune --out`` after NNI's
    ModelSpeedup); True if every mismatched tensor belongs to such a layer, else ``model`` is left
    as it was and False. The tensors are then loaded by ``load_state_dict``."""
    plans = []
    for name, module in model.named_modules():
        own = {k: v for k, v in chain(module.named_parameters(recurse=False),
                                      module.named_buffers(recurse=False)) if v is not None}
        prefix = f"{name}." if name else ""
        if all(state[prefix + k].shape == v.shape for k, v in own.items()):
            continue
        kind = next((t for t in _CHANNEL_COUNTS if isinstance(module, t)), None)
        if kind is None or (isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1):
            return False
        plans.append((module, prefix, own, kind))
    for module, prefix, own, kind in plans:
        for attribute, (tensor, dim) in _CHANNEL_COUNTS[kind].items():
            setattr(module, attribute, state[prefix + tensor].shape[dim])
        if isinstance(module, nn.modules.conv._ConvNd):
            module.in_channels = state[prefix + "weight"].shape[1] * module.groups
        for key, value in own.items():
            resized = value.new_empty(state[prefix + key].shape)
            if isinstance(value, nn.Parameter):
                setattr(module, key, nn.Parameter(resized, requires_grad=value.requires_grad))
            else:
                module.register_buffer(key, resized)
    return True


def _whole_module(model: nn.Module, checkpoint):
    """The module saved whole in ``checkpoint`` if it is of ``model``'s class, else None."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - any unreadable pickle is "not a module"
        return None
    return saved if type(saved) is type(model) else None


def load_model(spec: str, checkpoint=None) -> nn.Module:
    """:func:`build_model`, then the weights of ``checkpoint`` if given."""
    model = build_model(spec)
    return load_checkpoint(model, checkpoint) if checkpoint else model


def check_one_input(model: nn.Module) -> None:
    """Refuse a model whose ``forward`` needs more than one input: the command line gives it one
    tensor of ``--input-shape``."""
    required = [p.name for p in inspect.signature(model.forward).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if len(required) > 1:
        raise ValueError(f"{type(model).__name__}.forward needs {len(required)} inputs "
                         f"({', '.join(required)}); the command line gives one tensor of "
                         "--input-shape: use the Python API with a tuple of inputs, e.g. "
                         "pathmetric.check_support(model, (x1, x2)), or a factory that wraps "
                         "the model with one input")


def check_input_shape(model: nn.Module, shape: tuple) -> None:
    """Refuse, naming the dimension, an input shape the model's first layer cannot take:
    a missing batch dimension, or a channel count the first conv/linear layer does not read."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            dims = len(module.kernel_size)
            layout = "(N, C, " + ", ".join("DHW"[3 - dims:]) + ")"
            if len(shape) == dims + 1:
                raise ValueError(
                    f"input shape {','.join(map(str, shape))} has {len(shape)} dimensions: "
                    f"'{name}' ({type(module).__name__}) takes {layout}, the batch dimension N is "
                    f"missing; use 1,{','.join(map(str, shape))}")
            if len(shape) == dims + 2 and shape[1] != module.in_channels:
                raise ValueError(
                    f"input shape {','.join(map(str, shape))}: dimension 1 (channels C of "
                    f"{layout}) is {shape[1]} but '{name}' ({type(module).__name__}) reads "
                    f"{module.in_channels}")
            return
        if isinstance(module, nn.Linear):
            if len(shape) == 1:
                raise ValueError(f"input shape {shape[0]} has 1 dimension: '{name}' (Linear) takes "
                                 f"(N, features), the batch dimension N is missing; use 1,{shape[0]}")
            return


def parse_shape(text: str) -> tuple:
    """``"1,3,64,64"`` or ``"1x3x64x64"`` -> ``(1, 3, 64, 64)`` (batch dimension first)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"input shape must be positive integers with the batch first, e.g. "
                         f"1,3,64,64; got {text!r}")
    return shape


def example_inputs(spec: str, shape: str | None = None) -> torch.Tensor:
    """Zero tensor of ``shape`` (default: 1x1x8x8 for digits, 1x3x224x224 otherwise)."""
    return torch.zeros(parse_shape(shape) if shape else DEFAULT_SHAPES.get(spec, (1, 3, 224, 224)))
