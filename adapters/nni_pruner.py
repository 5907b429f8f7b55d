"""The path-metric NNI pruner: NNI parses the ``config_list``, builds the target spaces and turns
metrics into masks; the metrics come from the engine (see :class:`PathMetricPruner`)."""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch
from nni.compression.base.target_space import TargetType
from nni.compression.pruning.basic_pruner import _NormPruner
from nni.compression.pruning.tools import generate_sparsity, is_active_target, sparse_gen
from torch import nn
from tqdm import tqdm

import pathmetric as pm

from .nni_compat import eval_mode

__all__ = ["PathMetricPruner"]


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
    by the paths that pruning the block removes (docs/design.md, "Scores"):

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
            with torch.no_grad(), eval_mode(self.bound_model):
                self.track_forward(*inputs)

    def _single_compress(self, max_steps, max_epochs):
        if max_steps is not None or max_epochs is not None:
            raise ValueError("PathMetricPruner alone is data-free and one-shot: call compress() "
                             "without max_steps / max_epochs; to prune during training, wrap it "
                             "in AGPPruner or LinearPruner(pruner, interval_steps, total_times, "
                             "evaluator=...) and call their compress(max_steps, max_epochs)")
        self.update_masks(self.generate_masks())
