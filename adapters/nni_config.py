"""NNI pruning from a config file: :func:`load_config` reads and checks it,
:func:`pruner_from_config` builds the pruner it names, :func:`prune_from_config` prunes, speeds
up and certifies (the CLI's ``pathmetric nni prune``, with :class:`NNIPruneResult`)."""
from __future__ import annotations

import json
import traceback
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from nni.compression.base.config import default_config_schema, trans_legacy_config_list
from nni.compression.pruning import (
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    SlimPruner,
    TaylorPruner,
)
from nni.compression.speedup import ModelSpeedup
from nni.compression.speedup.replacement import convert_to_coarse_mask
from nni.compression.utils import auto_set_denpendency_group_ids
from schema import SchemaError
from torch import nn

import pathmetric as pm

from .nni_compat import compat_patches, eval_mode
from .nni_pruner import PathMetricPruner

__all__ = ["PRUNERS", "CONFIG_KEYS", "load_config", "pruner_from_config", "prune_from_config",
           "NNIPruneResult", "SpeedupError", "removed_channels"]


def _path_metric(model, config_list, example_inputs, evaluator, **args):
    return PathMetricPruner(model, config_list, example_inputs, evaluator=evaluator, **args)


def _plain(cls):
    def make(model, config_list, example_inputs, evaluator, **args):
        return cls(model, config_list, **args)
    return make


def _with_evaluator(cls):
    def make(model, config_list, example_inputs, evaluator, **args):
        if evaluator is None:
            raise ValueError(f"pruner {cls.__name__} trains the model: pass evaluator= (an NNI "
                             "Evaluator) and pruner_args: {training_steps: ...}")
        return cls(model, config_list, evaluator, **args)
    return make


#: Pruner names accepted by ``pruner:`` in a config (NNI has no registry of its own).
PRUNERS = {
    "path_metric": _path_metric,
    "level": _plain(LevelPruner),
    "l1": _plain(L1NormPruner),
    "l2": _plain(L2NormPruner),
    "fpgm": _plain(FPGMPruner),
    "taylor": _with_evaluator(TaylorPruner),
    "slim": _with_evaluator(SlimPruner),
}

#: Top-level keys of a config file, with their meaning.
CONFIG_KEYS = {
    "pruner": "a name in PRUNERS (default path_metric)",
    "config_list": "NNI pruning config list (required)",
    "speedup": "replace masked layers by smaller ones with ModelSpeedup (default false)",
    "auto_dependency": "set dependency_group_id with NNI's auto_set_denpendency_group_ids "
                       "(default false)",
    "pruner_args": "keyword arguments of the pruner (path_metric: fine_grained, exact_groups; "
                   "taylor/slim: training_steps, ...)",
}


#: ratio keys of a config-list entry, and whether 1 is allowed (a ratio of 1 empties a layer)
RATIO_KEYS = {"sparse_ratio": False, "min_sparse_ratio": False, "max_sparse_ratio": True}


def _schema_keys(schema) -> list:
    keys = []
    for key in schema.schema:
        inner = getattr(key, "schema", key)
        keys.extend(getattr(inner, "args", (inner,)))
    return sorted(str(k) for k in keys)


def load_config(path_or_dict) -> dict:
    """Read and check a pruning config: a dict, or a path to a ``.json`` or YAML file.

    Unknown top-level keys, unknown pruner names and config-list entries NNI would reject raise
    ``ValueError`` listing what is accepted. Returns a new dict with defaults filled in.
    """
    if isinstance(path_or_dict, dict):
        config = deepcopy(path_or_dict)
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            where = getattr(error, "problem_mark", None)
            raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}"
                             f"{f' (line {where.line + 1})' if where else ''}: "
                             f"{getattr(error, 'problem', None) or error}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a mapping with keys {sorted(CONFIG_KEYS)}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; accepted: " +
                         "; ".join(f"{k} ({v})" for k, v in CONFIG_KEYS.items()))
    config.setdefault("pruner", "path_metric")
    if config["pruner"] not in PRUNERS:
        raise ValueError(f"unknown pruner {config['pruner']!r}; accepted: {sorted(PRUNERS)}")
    if not isinstance(config.get("config_list"), list) or not config["config_list"]:
        raise ValueError("'config_list' must be a non-empty list of NNI pruning configs")
    schema = default_config_schema("pruning")
    for i, entry in enumerate(trans_legacy_config_list(config["config_list"])):
        try:
            schema.validate(entry)
        except SchemaError as error:
            raise ValueError(f"config_list[{i}] is not a valid NNI pruning config: "
                             f"{error.code}. Accepted keys: {_schema_keys(schema)}") from None
        for key, upper in RATIO_KEYS.items():
            value = entry.get(key)
            if value is not None and not (isinstance(value, (int, float))
                                          and 0.0 <= value and (value < 1.0 or upper)):
                raise ValueError(f"config_list[{i}]: {key} must be in [0, 1{']' if upper else ')'}"
                                 f", got {value!r}")
        if entry.get("sparse_threshold") is not None and not entry["sparse_threshold"] >= 0:
            raise ValueError(f"config_list[{i}]: sparse_threshold must be >= 0, "
                             f"got {entry['sparse_threshold']!r}")
    config.setdefault("speedup", False)
    config.setdefault("auto_dependency", False)
    config.setdefault("pruner_args", {})
    return config


def pruner_from_config(model: nn.Module, path_or_dict, example_inputs, evaluator=None):
    """The NNI pruner a config names, built on ``model`` (which it wraps, as NNI pruners do).

    ``evaluator`` is needed by the training-based pruners (``taylor``, ``slim``). With
    ``auto_dependency: true`` the config list gets NNI's dependency groups first (traced with
    the compatibility patches).
    """
    config = load_config(path_or_dict)
    config_list = config["config_list"]
    if config["auto_dependency"]:
        with compat_patches(), eval_mode(model):
            config_list = auto_set_denpendency_group_ids(model, config_list, example_inputs)
    return PRUNERS[config["pruner"]](model, config_list, example_inputs, evaluator,
                                     **config["pruner_args"])


@dataclass
class NNIPruneResult:
    """Outcome of :func:`prune_from_config`.

    ``masks``: NNI masks ``{module: {target: mask}}``; ``sparsity``: per pruned module, the share
    of zeros in its weight mask; ``certified_bound``: ``pm.path_metric`` between the model before
    pruning and the masked one (a certified bound on ``||Phi - Phi'||_1``, exact for masks);
    ``log_certified_bound``: its natural log (finite where the float bound overflows);
    ``params_before`` / ``params_after``: parameter counts (after speedup when ``speedup``);
    ``head`` / ``notes``: the softmax head set aside (the certificate bounds the logits before it;
    ``pm.head_factor`` carries it to the outputs) and what was set aside, as ``pm.check_support``.
    """
    model: nn.Module
    masks: dict
    sparsity: dict
    certified_bound: float | None
    params_before: int
    params_after: int
    speedup: bool
    log_certified_bound: float | None = None
    head: str | None = None
    notes: list = field(default_factory=list)


def removed_channels(speedup: ModelSpeedup) -> dict:
    """``{module name: indices of the output channels}`` a finished ``ModelSpeedup`` deleted.

    Read from NNI's final output masks (after its conflict resolution and propagation) with its
    own ``convert_to_coarse_mask``. Zeroing, in the model before the speedup, the weight rows and
    bias entries of these channels computes what the sped-up model computes: a removed channel
    carries zero, so ReLUs, max-pools, residual sums and every consumer see zero where the channel
    was deleted. This includes the BatchNorm channels after pruned convs (their shift too), which
    zeroing the conv weights alone would keep.
    """
    out = {}
    for node, info in speedup.node_infos.items():
        masks = info.output_masks
        if node.op == "call_module" and isinstance(masks, torch.Tensor) and masks.dim() >= 2:
            removed, _ = convert_to_coarse_mask(masks, 1)
            if len(removed):
                out[node.target] = removed
    return out


class SpeedupError(RuntimeError):
    """NNI's ``ModelSpeedup`` failed on a model whose masks were generated (NNI's tracer or its
    shape inference cannot handle the model): the message says what failed and what to do."""


def _speedup(model: nn.Module, example_inputs, masks: dict) -> ModelSpeedup:
    """NNI's ``ModelSpeedup`` on ``model`` (eval mode, under :func:`compat_patches`); a failure
    inside NNI is a :class:`SpeedupError` naming it, with the way out (``speedup: false``)."""
    try:
        with compat_patches(), eval_mode(model):
            speedup = ModelSpeedup(model, example_inputs, deepcopy(masks))
            speedup.speedup_model()
    except Exception as error:  # noqa: BLE001 - any failure inside NNI's tracer or replacer
        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = Path(frame.filename).name if "nni" in frame.filename else frame.filename
        raise SpeedupError(
            f"NNI's ModelSpeedup failed on {type(model).__name__} ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}, in {where}:{frame.lineno} {frame.name}); "
            "the masks were generated: set 'speedup: false' in the config to keep the masked model "
            "(same function, same certificate), or exclude the layers NNI cannot replace "
            "(exclude_op_names)") from error
    return speedup


def prune_from_config(model: nn.Module, path_or_dict, example_inputs, out=None,
                      evaluator=None, certify: bool = True) -> NNIPruneResult:
    """Prune ``model`` in place as a config file says; the CLI's ``pathmetric nni prune``.

    Builds the pruner (:func:`pruner_from_config`), generates the masks, unwraps the model and
    multiplies its weights by the masks. With ``speedup: true`` NNI's ``ModelSpeedup`` then
    deletes the masked channels (tracing in eval mode under :func:`compat_patches`). It also
    deletes the BatchNorm channels after them, shift included, and keeps channels a residual sum
    shares with unmasked ones, so the certificate is taken on what it produced
    (:func:`removed_channels`, on top of the masks): ``pm.path_metric(model before, replaced
    parameters, x)``, a certified bound on ``||Phi(theta) - Phi(theta_pruned)||_1`` (exact,
    since pruning only shrinks ``|theta|``; for ``taylor`` / ``slim`` the model before pruning is
    the one after their training steps). ``certify=False`` skips it (one lifted pass and,
    with speedup, one copy of the model less); ``certified_bound`` is then None. Saves the pruned
    model's ``state_dict`` with ``torch.save`` when ``out`` is given (a model defined in any file
    can be saved; ``pathmetric.app.models.load_checkpoint`` gives the model the smaller layers).
    """
    config = load_config(path_or_dict)
    params_before = sum(p.numel() for p in model.parameters())
    support = pm.check_support(model, example_inputs)
    pruner = pruner_from_config(model, config, example_inputs, evaluator)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    masks = {module: {t: m for t, m in targets.items() if m is not None}
             for module, targets in masks.items()}
    sparsity = {module: 1.0 - float(targets["weight"].mean())
                for module, targets in masks.items() if "weight" in targets}
    reference = deepcopy(model) if certify else None
    named = dict(model.named_parameters())
    with torch.no_grad():
        for module, targets in masks.items():
            for target, mask in targets.items():
                named[f"{module}.{target}"].mul_(mask)
    replaced = {name: named[name].detach().clone() for name in
                (f"{module}.{t}" for module, targets in masks.items() for t in targets)}
    if config["speedup"]:
        speedup = _speedup(model, example_inputs, masks)
        if certify:
            original = dict(reference.named_parameters())
            for module, removed in removed_channels(speedup).items():
                for name in (f"{module}.weight", f"{module}.bias"):
                    if name in original:
                        replaced.setdefault(name, original[name].detach().clone())[removed] = 0
    certified, log_certified = pm.path_metric_with_log(reference, replaced, example_inputs) \
        if certify else (None, None)
    if out is not None:
        torch.save(model.state_dict(), out)
    return NNIPruneResult(model, masks, sparsity, certified, params_before,
                          sum(p.numel() for p in model.parameters()), config["speedup"],
                          log_certified, support.head, support.notes)
