"""NNI 3.0 adapter: a path-metric pruner, pruners chosen from a config file, a quantization bound.

**Importing this module patches NNI 3.0's tracer for recent torch** (:func:`apply_compat_patches`:
three fixes, idempotent; :func:`revert_compat_patches` undoes them exactly), so that
``ModelSpeedup`` and NNI's dependency detection work right after ``PathMetricPruner`` as in NNI's
own tutorials, with no call from the user.

- :class:`PathMetricPruner` is an NNI ``Pruner``: NNI parses the ``config_list``, builds the target
  spaces and turns metrics into masks (ratio, threshold, global and dependency groups, bias
  alignment); only the metrics come from the engine, as shares of the L1 path-norm ``N``, so they
  are comparable across layers and invariant under neuron-wise rescaling.
- :func:`pruner_from_config` / :func:`prune_from_config` select a pruner by name from a YAML/JSON
  file or a dict (``pruner: path_metric``, ``config_list``, ``speedup: true``); the CLI's
  ``pathmetric nni prune`` calls :func:`prune_from_config`.
- :func:`quantization_bound_from_config` certifies the weight quantization of an NNI quantization
  ``config_list`` before any calibration.
- :func:`apply_compat_patches` (applied on import) / :func:`revert_compat_patches` /
  :func:`compat_patches` fix NNI 3.0's tracer (used by ``ModelSpeedup`` and dependency
  detection) for recent torch.

See docs/nni.md.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import traceback
from collections import defaultdict
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from nni.common.concrete_trace_utils import concrete_tracer
from nni.compression.base.apply_method import ClampRound
from nni.compression.base.compressor import register_scalers
from nni.compression.base.config import default_config_schema, trans_legacy_config_list
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import register_wrappers
from nni.compression.pruning import (FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner,
                                     SlimPruner, TaylorPruner)
from nni.compression.pruning.basic_pruner import _NormPruner
from nni.compression.pruning.tools import generate_sparsity, is_active_target, sparse_gen
from nni.compression.quantization.ptq_quantizer import compute_scale_zp
from nni.compression.speedup import ModelSpeedup
from nni.compression.speedup.replacement import convert_to_coarse_mask
from nni.compression.utils import auto_set_denpendency_group_ids
from schema import SchemaError
from torch import nn

import pathmetric as pm

__all__ = ["PathMetricPruner", "PRUNERS", "CONFIG_KEYS", "load_config", "pruner_from_config",
           "prune_from_config", "NNIPruneResult", "SpeedupError", "removed_channels",
           "quantized_parameters", "quantization_bound_from_config",
           "apply_compat_patches", "revert_compat_patches", "compat_patches"]


# --------------------------------------------------------------------------- compatibility

_saved_tracer_state = None   # what apply_compat_patches replaced, while patched


def apply_compat_patches() -> bool:
    """Patch NNI 3.0's ``concrete_trace`` for recent torch; returns False if already patched.

    1. ``ConcreteTracer.default_autowrap_leaf_function`` lists every callable of ``torch._C``;
       recent torch has a few whose ``__module__`` is None (``TensorBase._make_subclass``, ...)
       and the tracer crashes on ``None.startswith``. They are dropped from the table (they are
       never called by a model's forward).
    2. ``Graph.eliminate_dead_code`` now calls ``node.is_impure(impure_random)``; NNI's
       replacement ``node_is_impure_wrapper(node)`` takes one argument. It is wrapped to accept
       and ignore the extra ones.

    3. ``F.max_pool2d`` now runs ``torch.jit.annotate(list[int], [])``; while tracing, ``list``
       is NNI's wrapper object, which cannot be subscripted. The wrappers of ``list``, ``dict``,
       ... get a ``__getitem__`` that returns ``clz[item]`` (the generic alias).

    All three are undone exactly by :func:`revert_compat_patches`.
    """
    global _saved_tracer_state
    if _saved_tracer_state is not None:
        return False
    table = concrete_tracer.ConcreteTracer.default_autowrap_leaf_function
    impure, iterable = (concrete_tracer.node_is_impure_wrapper,
                        concrete_tracer._create_wrapped_leaf_iterable_class)
    _saved_tracer_state = (dict(table), impure, iterable)
    for func in [f for f in table if getattr(f, "__module__", "") is None]:
        del table[func]

    @functools.wraps(impure)
    def node_is_impure_wrapper(node, *_args, **_kwargs):
        return impure(node)

    @functools.wraps(iterable)
    def create_wrapped_leaf_iterable_class(tracer, clz):
        wrapper = iterable(tracer, clz)
        type(wrapper).__getitem__ = lambda _self, item: clz[item]
        return wrapper

    concrete_tracer.node_is_impure_wrapper = node_is_impure_wrapper
    concrete_tracer._create_wrapped_leaf_iterable_class = create_wrapped_leaf_iterable_class
    return True


def revert_compat_patches() -> None:
    """Restore NNI's tracer exactly as it was before :func:`apply_compat_patches`."""
    global _saved_tracer_state
    if _saved_tracer_state is None:
        return
    table, impure, iterable = _saved_tracer_state
    live = concrete_tracer.ConcreteTracer.default_autowrap_leaf_function
    live.clear()
    live.update(table)
    concrete_tracer.node_is_impure_wrapper = impure
    concrete_tracer._create_wrapped_leaf_iterable_class = iterable
    _saved_tracer_state = None


@contextlib.contextmanager
def compat_patches():
    """The compatibility patches for the duration of the block (left as found afterwards)."""
    applied = apply_compat_patches()
    try:
        yield
    finally:
        if applied:
            revert_compat_patches()


apply_compat_patches()   # on import: NNI's tutorials (pruner -> ModelSpeedup) work as written


# --------------------------------------------------------------------------- the pruner

@contextlib.contextmanager
def _patched(owner, name, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _global_threshold(metrics: dict, group: list, sparse_number: int) -> float:
    """The threshold of a global group: NNI's ``_global_threshold_generate`` without its overshoot.

    Blocks are taken by increasing metric while the weights they cover (``grain`` = weights per
    block) stay within ``sparse_number``; the threshold is the metric of the first block left
    (NNI keeps ``metric >= threshold``). NNI 3.0's heap version pops at most one block per push,
    so with blocks of different sizes (channels of different layers) it prunes far more than
    asked (0.65 instead of 0.5 on resnet18's block convs).
    """
    values, grains = [], []
    for module_name, target_name, space in group:
        metric = metrics[module_name][target_name].detach().reshape(-1).double().cpu()
        values.append(metric)
        grains.append(torch.full_like(metric, space.target.numel() // metric.numel()))
    values, order = torch.cat(values).sort()
    covered = torch.cat(grains)[order].cumsum(0)
    taken = int(torch.searchsorted(covered, torch.tensor(float(sparse_number), dtype=covered.dtype),
                                   right=True))
    return float(values[taken]) if taken < len(values) else math.inf


class PathMetricPruner(_NormPruner):
    """NNI pruner whose metric is the L1 path mass removed by pruning, as a share of ``N``.

    ``N = ||Phi(theta)||_1`` is the L1 path-norm; a block's metric is the share of ``N`` carried
    by the paths that pruning the block removes (DESIGN.md, "Scores"):

    - element-wise (``fine_grained=True``, like NNI's ``LevelPruner``): ``|theta_i|
      dN/d|theta_i| / N`` per weight (as ``pm.weight_scores``), i.e. ``(N - N(theta_i=0)) / N``;
    - ``out_channel`` (the default, like ``L1NormPruner``): the share through each output
      channel, with its bias and the BatchNorm channel right after it (as ``pm.channel_scores``);
    - targets sharing a ``dependency_group_id`` (all ``out_channel``): the share removed by
      zeroing the channel in every member and in the BatchNorm right after each member
      (``pm.group_mass``: by default the sum over these, an upper bound since a path through
      several of them counts several times; the exact value with ``exact_groups=True``), given to
      every member so that NNI's group mean is that share;
    - other block granularities: the sum of the weight shares of the block (exact: a path
      crosses a layer through one weight at most).

    All scores come from one ``pm.PathMasses`` (one forward and one backward of the lifted
    network) per mask generation, for the whole model, on the unwrapped model. Shares are
    comparable across layers, so global groups rank blocks of different layers by one unit; a
    global group never prunes a target beyond its ``max_sparse_ratio`` and never empties it (its
    best ``ceil((1 - max_sparse_ratio) * blocks)`` blocks, at least one, are kept), and prunes
    the asked number of weights up to less than one block (:func:`_global_threshold`).
    ``sparse_threshold`` is a share of ``N``.

    ``sparse_threshold`` never empties a target either: its largest block is kept, as in global
    groups.

    Parameters: ``model``, ``config_list`` as for any NNI pruner; ``example_inputs`` a tensor or
    tuple of tensors (only shapes matter); ``fine_grained`` and ``exact_groups`` see above (an
    explicit ``granularity`` in the config list wins over ``fine_grained``).

    Alone it is one-shot: ``compress()`` generates and applies the masks. NNI's scheduled pruners
    drive it as they drive ``L1NormPruner`` (it follows the same trigger protocol:
    ``interval_steps``, ``total_times``): ``AGPPruner(PathMetricPruner(...), interval_steps,
    total_times, evaluator=...)`` then ``.compress(max_steps, max_epochs)`` regenerates the masks
    during training at growing sparsity, each time from the path masses of the **masked** model
    (what the network currently computes), so a pruned block carries no mass and stays pruned.
    """

    def __init__(self, model: nn.Module, config_list: list, example_inputs,
                 fine_grained: bool = False, exact_groups: bool = False, evaluator=None,
                 existed_wrappers=None):
        self.fine_grained = fine_grained
        super().__init__(model, config_list, evaluator, existed_wrappers)  # interval_steps, ...
        self.example_inputs = example_inputs
        self.exact_groups = exact_groups

    @classmethod
    def from_compressor(cls, compressor, new_config_list: list, example_inputs,
                        fine_grained: bool = False, exact_groups: bool = False, evaluator=None):
        """A ``PathMetricPruner`` fused with ``compressor`` (NNI's fusion API, as
        ``TaylorPruner.from_compressor(distiller, ...)``): it takes over the compressor's model,
        wrappers and evaluator. ``compress(max_steps, max_epochs)`` of the result trains with
        every fused compressor; the masks of ``new_config_list`` are generated after the first
        optimizer step (the pruner is data-free), so the rest of the training (distillation,
        quantization-aware training) fine-tunes the pruned model."""
        pruner = super(_NormPruner, cls).from_compressor(
            compressor, new_config_list, evaluator=evaluator, example_inputs=example_inputs,
            fine_grained=fine_grained, exact_groups=exact_groups)
        pruner.first_step_gen = True
        return pruner

    def _set_default_sparse_granularity(self, target_space):
        return None if self.fine_grained else super()._set_default_sparse_granularity(target_space)

    def _active(self):
        for module_name, spaces in self._target_spaces.items():
            for target_name, space in spaces.items():
                if is_active_target(space):
                    if space.type is not TargetType.PARAMETER:
                        raise ValueError(f"PathMetricPruner prunes parameters only; target "
                                         f"'{target_name}' of '{module_name}' is an activation")
                    yield module_name, target_name, space

    def _collect_data(self) -> dict:
        """One ``pm.PathMasses`` (a forward and a backward) of the unwrapped model, and the
        dependency groups' shares (from it, or exact ones with ``exact_groups``)."""
        groups = defaultdict(list)
        for module_name, target_name, space in self._active():
            if space.dependency_group_id is not None:
                if space.granularity != "out_channel" or target_name != "weight":
                    raise ValueError(f"'{module_name}' is in dependency group "
                                     f"{space.dependency_group_id!r}: PathMetricPruner supports "
                                     "dependency groups of output channels (granularity "
                                     "out_channel on 'weight') only")
                groups[space.dependency_group_id].append((module_name, space.target.shape[0]))
        x = self.example_inputs
        masked = [(space.target, space.mask) for spaces in self._target_spaces.values()
                  for space in spaces.values()
                  if space.type is TargetType.PARAMETER and space.target is not None
                  and space.mask is not None]
        self.unwrap_model()
        saved = [param.detach().clone() for param, _ in masked]
        try:
            model = self.bound_model
            with torch.no_grad():
                for param, mask in masked:
                    param.mul_(mask)
            masses = pm.PathMasses(model, x)
            shares = {}
            for group_id, members in tqdm(groups.items(), desc="pathmetric: exact group masses",
                                          unit="group", disable=not self.exact_groups):
                sizes = {size for _, size in members}
                if len(sizes) != 1:
                    raise ValueError(f"dependency group {group_id!r} couples layers with different "
                                     f"numbers of output channels: {members}")
                size = sizes.pop()
                members = [pm.Member(layer, "out", range(size), range(size))
                           for name, _ in members
                           for layer in (name, masses.batch_norm_after.get(name)) if layer]
                shares[group_id] = pm.group_mass(model, x, members, size, exact=self.exact_groups,
                                                 relative=True, masses=masses)
        finally:
            with torch.no_grad():
                for (param, _), value in zip(masked, saved):
                    param.copy_(value)
            self.wrap_model()
        return {"masses": masses, "groups": shares}

    def _calculate_metrics(self, data: dict) -> dict:
        masses = data["masses"]
        metrics = defaultdict(dict)
        for module_name, target_name, space in self._active():
            shape = space.target.shape
            if space.dependency_group_id is not None:
                channel = data["groups"][space.dependency_group_id]
            elif space.granularity == "out_channel":
                if module_name not in masses.layers:
                    kind = type(space._wrapper.module).__name__
                    raise ValueError(f"'{module_name}' ({kind}) is not a conv/linear layer on the "
                                     "model's graph; PathMetricPruner scores the output channels "
                                     "of those only: exclude it (exclude_op_names / "
                                     "exclude_op_types)")
                channel = masses.channel_share(module_name)
            else:
                key = f"{module_name}.{target_name}"
                layer = masses.layers.get(module_name)
                if layer is None or key not in (layer.weight, layer.bias):
                    raise ValueError(f"'{key}' is not a weight or bias of a conv/linear layer on "
                                     "the model's graph; exclude it")
                share = masses.share(key).detach()
                metrics[module_name][target_name] = share if space._scaler is None else \
                    space._scaler.shrink(share, lambda t: t.sum(dim=-1), keepdim=True)
                continue
            view = (shape[0],) + (1,) * (len(shape) - 1)
            metrics[module_name][target_name] = channel.detach().reshape(view)
        return metrics

    def _generate_sparsity(self, metrics: dict) -> dict:
        """NNI's mask generation, with each global-group or threshold target's best blocks
        protected (at least one) and the group threshold from :func:`_global_threshold`."""
        for module_name, target_name, space in self._active():
            if space.dependency_group_id is not None or (space.global_group_id is None
                                                          and space.sparse_threshold is None):
                continue
            metric = metrics[module_name][target_name]
            ratio = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
            keep = max(1, math.ceil((1.0 - ratio) * metric.numel() - 1e-9))
            metrics[module_name][target_name] = pm.protect_top(metric, keep)
        self._track_aligned_shapes()
        with _patched(sparse_gen, "_global_threshold_generate", _global_threshold):
            masks = generate_sparsity(metrics, self._target_spaces)
        spaces = self._target_spaces
        return {module_name: {target_name: mask if spaces[module_name][target_name].target is None
                              else mask.to(spaces[module_name][target_name].target.dtype)
                              for target_name, mask in targets.items()}
                for module_name, targets in masks.items()}

    def _track_aligned_shapes(self):
        """NNI aligns an activation target's mask (``align``: a BatchNorm's ``_output_`` on the
        conv weight before it, as NNI's pd_fuse.py example) from its shape, which a forward of the
        wrapped model records: run one on ``example_inputs`` (eval mode, no gradient, so the
        model's BatchNorm statistics stay) when a shape is missing."""
        if any(space.shape is None for spaces in self._target_spaces.values()
               for space in spaces.values() if space.align is not None):
            inputs = self.example_inputs
            inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
            with torch.no_grad(), _eval_mode(self.bound_model):
                self.track_forward(*inputs)

    def _single_compress(self, max_steps, max_epochs):
        if max_steps is not None or max_epochs is not None:
            raise ValueError("PathMetricPruner alone is data-free and one-shot: call compress() "
                             "without max_steps / max_epochs; to prune during training, wrap it "
                             "in AGPPruner or LinearPruner(pruner, interval_steps, total_times, "
                             "evaluator=...) and call their compress(max_steps, max_epochs)")
        self.update_masks(self.generate_masks())


# --------------------------------------------------------------------------- config files

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
        with compat_patches(), _eval_mode(model):
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


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.train(flag)


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
        with compat_patches(), _eval_mode(model):
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


# --------------------------------------------------------------------------- quantization

def quantized_parameters(model: nn.Module, config_list: list) -> dict:
    """``{parameter name: weight as NNI would quantize it}`` for an NNI quantization config.

    NNI's own machinery does it: its config parsing and target settings, its granularity
    scalers, ``compute_scale_zp`` on the exact min/max of the weight (no calibration is needed
    for weights) and its ``ClampRound``. Only parameter targets (``weight``, ``bias``) count;
    ``_input_`` / ``_output_`` (activation) targets are ignored. ``model`` is not modified.
    """
    _, spaces = register_wrappers(model, trans_legacy_config_list(deepcopy(config_list)),
                                  "quantization")
    # activation targets are outside the certificate; NNI's scalers reject some of their
    # granularities (out_channel on _input_), so they are dropped before registering scalers
    spaces = {module_name: {target_name: space for target_name, space in targets.items()
                            if space.type is TargetType.PARAMETER and space.target is not None}
              for module_name, targets in spaces.items()}
    register_scalers(spaces, lambda space: None)
    out = {}
    for module_name, targets in spaces.items():
        for target_name, space in targets.items():
            if space.quant_dtype is None:
                raise ValueError(f"'{module_name}.{target_name}': quant_dtype is not set")
            weight = space.target.detach()
            if space._scaler is None:
                space.tracked_min, space.tracked_max = weight.amin(), weight.amax()
            else:
                space.tracked_min = space._scaler.shrink(weight, lambda t: t.amin(dim=-1),
                                                         keepdim=True)
                space.tracked_max = space._scaler.shrink(weight, lambda t: t.amax(dim=-1),
                                                         keepdim=True)
            space.scale, space.zero_point = compute_scale_zp(space)
            out[f"{module_name}.{target_name}"] = ClampRound.apply(weight, space)
    return out


def quantization_bound_from_config(model: nn.Module, config_list: list, example_inputs) -> float:
    """Certified path-metric ``||Phi(theta) - Phi(theta_q)||_1`` of an NNI quantization config.

    ``theta_q`` replaces every parameter target of ``config_list`` (``quant_dtype`` int8, int4,
    uint8, ...; ``quant_scheme`` symmetric or affine; ``granularity`` default = per tensor,
    ``out_channel``, or NNI block sizes) by its round-to-nearest quantization with NNI's own
    scale and zero point (:func:`quantized_parameters`), computed before any calibration. Then
    ``||R_theta(x) - R_theta_q(x)||_1 <= max(||x||_inf, 1) * bound`` for every input ``x``.

    Activation quantization (``_input_`` / ``_output_`` targets) is **not** covered: the bound
    is that of quantizing the weights (and biases, when targeted) alone.
    """
    replaced = quantized_parameters(model, config_list)
    if not replaced:
        raise ValueError("the config list quantizes no parameter (weight or bias) of the model")
    return pm.path_metric(model, replaced, example_inputs)
