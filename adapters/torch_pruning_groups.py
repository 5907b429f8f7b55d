"""torch-pruning's objects as the engine takes them: example inputs (:func:`engine_view`), the
members of a dependency group (:func:`group_members`) and the slices of its unwrapped parameters
(:func:`parameter_slices`). Used by :mod:`pathmetric.adapters.torch_pruning`, which re-exports the
public names."""
from __future__ import annotations

import inspect
from typing import NamedTuple, Sequence

import torch
import torch_pruning as tp
from torch import nn

import pathmetric as pm

__all__ = ["engine_view", "engine_inputs", "group_members", "ParameterSlice", "parameter_slices",
           "shapes", "slice_shares", "zero_slices"]

_OPTYPE = tp.ops.OPTYPE
_PSEUDO_NODES = {_OPTYPE.ELEMENTWISE, _OPTYPE.CONCAT, _OPTYPE.SPLIT, _OPTYPE.RESHAPE,
                 _OPTYPE.UNBIND, _OPTYPE.EXPAND, _OPTYPE.SLICE, _OPTYPE.OUTPUT}
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU)

def _takes(model: nn.Module, arguments: tuple) -> bool:
    """Whether ``model.forward`` accepts ``arguments`` as its positional inputs."""
    try:
        inspect.signature(model.forward).bind(*arguments)
    except TypeError:
        return False
    return True


class _ListArgument(nn.Module):
    """``model`` seen with its one list argument spread: ``forward(*tensors)`` is
    ``model(list(tensors))``. It shares ``model``'s submodules, parameters and buffers (same
    objects, same names), so the engine's layer names are the model's; ``model`` is untouched."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._modules, self._parameters, self._buffers = (model._modules, model._parameters,
                                                          model._buffers)
        self.training = model.training
        self.__dict__["wrapped"] = model   # not a submodule: names stay the model's

    def forward(self, *tensors):
        return self.wrapped(list(tensors))


def engine_view(model: nn.Module, example_inputs) -> tuple:
    """``(module, positional inputs)`` for the engine from torch-pruning's example inputs.

    A tuple or list is the positional inputs, unless ``forward`` cannot take that many and takes
    it as one argument (a list of images): torch-pruning's tracer calls ``model(*inputs)`` and
    falls back to ``model(inputs)``; the engine then sees the model through
    :class:`_ListArgument`. Other inputs go through :func:`engine_inputs`."""
    if isinstance(example_inputs, (tuple, list)) and not _takes(model, tuple(example_inputs)) \
            and _takes(model, (example_inputs,)):
        return _ListArgument(model), tuple(example_inputs)
    return model, engine_inputs(model, example_inputs)


def engine_inputs(model: nn.Module, example_inputs):
    """torch-pruning's example inputs as the engine takes them: a dict holds keyword inputs of
    ``model.forward``, turned into positional ones in the signature's order (parameters left
    out before the last given one take their defaults)."""
    if not isinstance(example_inputs, dict):
        return example_inputs
    parameters = list(inspect.signature(model.forward).parameters.values())
    names = [p.name for p in parameters]
    unknown = sorted(set(example_inputs) - set(names))
    if unknown:
        raise TypeError(f"example inputs {unknown} are not parameters of "
                        f"{type(model).__name__}.forward{inspect.signature(model.forward)}")
    last = max(names.index(key) for key in example_inputs)
    positional = []
    for parameter in parameters[:last + 1]:
        if parameter.name in example_inputs:
            positional.append(example_inputs[parameter.name])
        elif parameter.default is not inspect.Parameter.empty:
            positional.append(parameter.default)
        else:
            raise TypeError(f"example inputs lack '{parameter.name}' of "
                            f"{type(model).__name__}.forward, which has no default")
    return tuple(positional)


def shapes(inputs) -> list:
    if isinstance(inputs, torch.Tensor):
        return [tuple(inputs.shape)]
    if isinstance(inputs, dict):
        return [(key, shape) for key in sorted(inputs) for shape in shapes(inputs[key])]
    if isinstance(inputs, (tuple, list)):
        return [shape for item in inputs for shape in shapes(item)]
    return [repr(inputs)]


def group_members(group, names: dict) -> tuple[list, int]:
    """Engine members of a torch-pruning group, and its number of root channels.

    Item ``k`` of the group prunes channels ``idxs[k]`` of layer ``module_k`` with handler
    ``handler_k``; ``root_idxs[k][j]`` is the root channel that ``idxs[k][j]`` belongs to. It
    becomes ``(names[module_k], "out" or "in", idxs[k], positions)`` with ``positions[j]`` the
    place of ``root_idxs[k][j]`` in the root item's ``idxs`` (the order of the scores), as a
    ``pm.Member``. An output
    handler of a conv or linear layer means its output channel with its bias, of a BatchNorm its
    channel; an input handler means the input channel (or in-feature, one per flattened position)
    of a conv or linear layer; a per-channel PReLU's output handler means its slopes (a PReLU
    with one shared slope keeps it: not a member). ``names`` maps modules to their names.
    Unwrapped parameters (torch-pruning's ``unwrapped_parameters``) are not members: see
    :func:`parameter_slices`.
    """
    graph = group._DG
    root = list(group[0].idxs)
    position = {channel: j for j, channel in enumerate(root)}
    members = []
    for item in group:
        dep = item.dep
        module = dep.target.module
        if dep.target.type in _PSEUDO_NODES or dep.target.type == _OPTYPE.PARAMETER or (
                isinstance(module, nn.PReLU)
                                                 and module.num_parameters == 1):
            continue
        name = names.get(module) if isinstance(module, nn.Module) else None
        where = f"'{name}' ({type(module).__name__})" if name is not None else type(module).__name__
        if not isinstance(module, _LAYERS):
            raise pm.UnsupportedModelError(
                f"pathmetric cannot translate {where} in the torch-pruning group of "
                f"'{names.get(group[0].dep.target.module)}': the path-metric members of a group "
                "are conv, linear, BatchNorm and PReLU channels",
                [(type(module).__name__, name, "not a conv, linear, BatchNorm or PReLU layer")])
        if graph.is_out_channel_pruning_fn(dep.handler):
            kind = "out"
        elif graph.is_in_channel_pruning_fn(dep.handler):
            kind = "in"
        else:
            raise pm.UnsupportedModelError(
                f"pathmetric: unknown torch-pruning handler {dep.handler} on {where}",
                [(type(module).__name__, name, "unknown handler")])
        if any(r is None for r in item.root_idxs):
            raise pm.UnsupportedModelError(
                f"pathmetric: torch-pruning cannot tell which root channels the "
                f"channels of {where} belong to (root index None)",
                [(type(module).__name__, name, "root index None")])
        members.append(pm.Member(name, kind, list(item.idxs),
                                 [position[r] for r in item.root_idxs]))
    return members, len(root)


class ParameterSlice(NamedTuple):
    """Channels ``idxs[j]`` (along ``dim``) of a parameter used directly in ``forward`` (a
    LayerScale ``gamma``), belonging to root channel ``positions[j]`` of a torch-pruning group."""
    name: str
    dim: int
    idxs: Sequence[int]
    positions: Sequence[int]


def parameter_slices(group, parameter_names: dict) -> list:
    """The slices of torch-pruning's unwrapped parameters (``unwrapped_parameters=[(p, dim)]``)
    in ``group``, as :class:`ParameterSlice` (``parameter_names`` maps parameters to names).

    The engine lifts such a parameter under its name (``x * gamma``: each coordinate scales the
    paths through it), so the path share of a slice is the sum of its coordinates' shares
    (``pm.PathMasses.share``) and zeroing the slice removes it."""
    position = {channel: j for j, channel in enumerate(group[0].idxs)}
    return [ParameterSlice(parameter_names[item.dep.target.module], item.dep.target.pruning_dim,
                           list(item.idxs), [position[r] for r in item.root_idxs])
            for item in group if item.dep.target.type == _OPTYPE.PARAMETER]


def slice_shares(masses, slices, channels: int) -> torch.Tensor:
    """Per root channel, the summed path shares of the parameter slices."""
    total = torch.zeros(channels, dtype=torch.float64)
    for name, dim, idxs, positions in slices:
        if name not in masses.graph.param_names:
            raise pm.UnsupportedModelError(
                f"pathmetric: unwrapped parameter '{name}' is not used directly by an operation "
                "the engine lifts (a learnt scale x * gamma, a bias x + b, x @ W): give its pruning "
                "to a module, or leave it out of unwrapped_parameters",
                [("Parameter", name, "not lifted under its name")])
        share = masses.share(name).detach().to(torch.float64).cpu()
        per_channel = share.movedim(dim, 0).reshape(share.shape[dim], -1).sum(1)
        total.index_add_(0, torch.as_tensor(positions, dtype=torch.long),
                         per_channel[torch.as_tensor(idxs, dtype=torch.long)])
    return total


def zero_slices(model, slices, replaced: dict) -> dict:
    """``replaced`` with the parameter slices zeroed (cloned from ``model`` when not there)."""
    named = dict(model.named_parameters())
    for name, dim, idxs, _ in slices:
        tensor = replaced.setdefault(name, named[name].detach().clone())
        tensor.index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long, device=tensor.device), 0)
    return replaced
