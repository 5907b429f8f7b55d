"""torch-pruning (1.6.x) adapter: a path-metric importance and certified pruning steps.

Path-metric pruning with torch-pruning is a one-line change::

    import torch_pruning as tp
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step

    imp = PathMetricImportance(example_inputs)
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model.fc])
    for step in range(pruner.iterative_steps):
        bound = certified_step(pruner, example_inputs)   # same channels as pruner.step()

A torch-pruning group couples channels of several layers (a conv's output channels, the BatchNorm
after it, the input channels of every consumer, the other producers of a residual sum, the
slices of a concatenation). :func:`group_members` translates a group into the engine's members
(``pm.Member(module name, "out" | "in", idxs, root positions)``); pseudo-nodes of the dependency graph
(element-wise ops, concatenation, split, flatten, the output) carry no parameter and are skipped.

Example inputs are what torch-pruning takes: a tensor, a tuple of positional inputs, a list
that ``forward`` takes as one argument, or a dict of keyword inputs of ``model.forward`` (given
to the engine in the signature's order).
The translation of torch-pruning's inputs and groups is in :mod:`.torch_pruning_groups`; the
mathematics (lifted network, masses, certificates) is the engine's: ``pm.group_mass`` and
``pm.path_metric``.
"""
from __future__ import annotations

import math
import warnings
import weakref
from itertools import chain

import torch
import torch_pruning as tp
from torch import nn

import pathmetric as pm

from .torch_pruning_groups import (
    ParameterSlice,
    engine_view,
    group_members,
    parameter_slices,
    shapes,
    slice_shares,
    zero_slices,
)

__all__ = ["PathMetricImportance", "certified_step", "StepCertificate", "group_members",
           "ParameterSlice", "parameter_slices"]

#: offset of the channels ``max_layer_ratio`` protects: above every path-mass share (a share is
#: at most the number of a group's layers); the best channel, which always stays, gets it twice.
#: Finite, because torch-pruning does arithmetic on importances: ``GroupNormPruner.regularize``
#: and ``GrowingRegPruner.update_reg`` normalise ``(max - imp) / (max - min)``, which is NaN
#: with an infinite score and would put NaN into the gradients.
_PROTECTED = 1e9


def _fingerprint(model) -> tuple:
    """Changes when a parameter or buffer of ``model`` is replaced, reshaped or written to."""
    tensors = chain(model.named_parameters(), model.named_buffers())
    return (id(model),) + tuple((name, t.data_ptr(), tuple(t.shape), t._version)
                                for name, t in tensors)


NORMALIZERS = (None, "mean", "max", "sum")
COSTS = (None, "params")


class PathMetricImportance(tp.importance.Importance):
    """Importance of a channel = the path mass removed by deleting it from every layer of its group.

    For root channel ``c`` of a group ``G`` (all slices torch-pruning removes with ``c``)::

        score(c) = (N(theta) - N(theta with the slices of c zeroed)) / N(theta)

    where ``N`` is the L1 path-norm ``||Phi(theta)||_1`` for the shape of ``example_inputs``
    (docs/design.md, "Scores"). Removing ``c`` is zeroing its slices, so ``score(c) * N(theta)`` is
    exactly the certified path-metric of deleting ``c`` alone, and a share of one path-norm is
    comparable across groups: ``global_pruning=True`` and isomorphic scopes rank it directly.
    Scores are unchanged by the rescalings that leave the network's function unchanged.

    ``exact=False`` (the default) returns the sum over the group's layers of the mass through
    each slice: one lifted forward and backward per pruning step answer every group, and the
    sum is an upper bound of the exact mass (a path crossing ``k`` slices of the group is counted
    ``k`` times). In conv-BN-ReLU networks nearly every path crosses three slices (conv output,
    BatchNorm, one consumer input), residual groups alike, so the sum is ~3x
    the exact mass everywhere and ranks nearly alike (resnet18: ratio 3.00-3.05 in all groups) at a
    tiny fraction of the cost. ``exact=True`` returns the exact coupled mass, at the cost of one
    pair pass of the lifted network per root channel: for small models and for checking.

    **Global pruning and where it cuts.** Path masses are small in wide, late layers and large in
    narrow, early ones, so plain shares (``normalizer=None, cost=None``, the default: the
    smallest certified output change per channel) concentrate global pruning in a few layers
    and cut little compute. Two options spread it, as torch-pruning's own importances do:

    - ``normalizer="mean" | "max" | "sum"``: each group's scores divided by their mean, max or
      sum (torch-pruning's ``normalizer``): a per-layer ranking, so a global ratio cuts every
      layer alike, like magnitude with its default ``normalizer="mean"``;
    - ``cost="params"``: each share divided by the parameters its channel removes (mass per
      parameter): the smallest certified change per parameter saved.

    benchmarks/results/tp_global_choices.md records params and MACs left and accuracy after
    fine-tuning for each choice beside magnitude.

    The engine evaluates the model once per pruning step (its parameters are fingerprinted; any
    replaced, pruned or updated tensor triggers a new evaluation), not once per group. The whole
    model is checked first (``pm.check_support``), so an unsupported op is reported by name
    before any group is translated.

    ``max_layer_ratio`` caps removal per layer: of the channels a group had when this importance
    first saw it, at most this fraction is offered ahead of the others. The channels that must
    stay (the largest scores) rank after every other channel of every group, and the best
    channel of each group ranks after all of them (score raised by ``2e9``: finite, so that
    torch-pruning's regularizers can normalise importances), so a layer is not emptied. When
    the asked ratio needs more channels than the cap leaves (a high global ratio, or later
    iterative steps), protected channels are taken in score order, so the pruner reaches the
    asked ratio, and a warning names the layers pruned past the cap when it is next called
    (next step, or :func:`certified_step`). ``None`` turns the cap off (pure path-mass
    shares; torch-pruning then skips a group whose every channel falls below a global
    threshold). BasePruner's own ``max_pruning_ratio`` only stops pruning a
    group in later steps.

    ``example_inputs``: a tensor, tuple or dict (keyword inputs of ``model.forward``) of the
    shape the pruner was built with. Every step checks the spatial size of each convolution's
    input against the pruner's trace, and :func:`certified_step` compares the whole shapes.
    """

    def __init__(self, example_inputs, exact: bool = False, max_layer_ratio: float | None = 0.9,
                 normalizer: str | None = None, cost: str | None = None):
        if max_layer_ratio is not None and not 0.0 <= max_layer_ratio < 1.0:
            raise ValueError(f"max_layer_ratio must be in [0, 1) or None, got {max_layer_ratio}")
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
        self.example_inputs = example_inputs
        self.exact = exact
        self.max_layer_ratio = max_layer_ratio
        self.normalizer = normalizer
        self.cost = cost
        self._key = None
        self._names = {}
        self._parameter_names = {}
        self._masses = None
        self._engine = None                          # the model as the engine calls it
        self._inputs = None
        self._checked = weakref.WeakKeyDictionary()  # model -> True once check_support passed
        self._initial = weakref.WeakKeyDictionary()  # root module -> channels when first seen
        self._past_cap = {}                          # root module name -> channels left
        self._traced_checked = weakref.WeakSet()     # dependency graphs whose shapes agree

    def _refresh(self, model):
        """Forget what was computed for other parameters (a new step, a trained model)."""
        key = _fingerprint(model)
        if key != self._key:
            self._names = {module: name for name, module in model.named_modules()}
            self._parameter_names = {param: name for name, param in model.named_parameters()}
            self._masses = None
            self._key = key
            self._engine, self._inputs = engine_view(model, self.example_inputs)
            if model not in self._checked:
                support = pm.check_support(self._engine, self._inputs)
                if not support.ok:
                    raise pm.UnsupportedModelError(str(support), support.unsupported)
                self._checked[model] = True
            self.warn_past_cap()

    def warn_past_cap(self):
        """Warn once about the layers a step pruned past ``max_layer_ratio`` (see the class)."""
        if self._past_cap:
            layers = ", ".join(f"{name} ({left} left)" for name, left in sorted(self._past_cap.items()))
            warnings.warn(f"PathMetricImportance: the asked pruning ratio needed more channels than "
                          f"max_layer_ratio={self.max_layer_ratio} leaves; pruned past the cap: "
                          f"{layers}", stacklevel=3)
            self._past_cap.clear()

    def _check_traced_shapes(self, dependency_graph):
        """Refuse a pruner traced with other input shapes than this importance's.

        torch-pruning hands an importance no inputs, but its dependency graph keeps the autograd
        node of each traced module; a convolution's (``ConvolutionBackward0._saved_input``)
        holds the input it was traced with. Its spatial size must be the one the engine
        captured for that layer (channels change as pruning proceeds, the batch does not
        matter). Linear layers are not checked: their saved input is flattened."""
        if dependency_graph in self._traced_checked:
            return
        engine = pm.layer_input_shapes(self._engine, self._inputs)
        for module, node in dependency_graph.module2node.items():
            name = self._names.get(module)
            try:
                traced = getattr(node.grad_fn, "_saved_input", None)
            except RuntimeError:  # saved tensors already freed
                traced = None
            if traced is None or name not in engine or traced.dim() != len(engine[name]):
                continue
            if tuple(traced.shape[2:]) != tuple(engine[name][2:]):
                raise ValueError(
                    f"PathMetricImportance was built for example inputs of shape "
                    f"{shapes(self.example_inputs)}, but the pruner was traced with other "
                    f"inputs: '{name}' reads {tuple(traced.shape)} in the pruner's trace and "
                    f"{engine[name]} for the importance; path masses depend on the input shape: "
                    "build the importance with the pruner's example inputs")
        self._traced_checked.add(dependency_graph)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        model = group._DG.model
        self._refresh(model)
        self._check_traced_shapes(group._DG)
        members, channels = group_members(group, self._names)
        slices = parameter_slices(group, self._parameter_names)
        if slices and self.exact:
            raise ValueError(f"PathMetricImportance(exact=True) does not score unwrapped "
                             f"parameters ({', '.join(s.name for s in slices)}): use exact=False")
        x = self._inputs
        if not self.exact and self._masses is None:
            self._masses = pm.PathMasses(self._engine, x)
        scores = pm.group_mass(self._engine, x, members, channels, exact=self.exact,
                               relative=True, masses=self._masses).to(torch.float64).cpu()
        if slices:
            scores = scores + slice_shares(self._masses, slices, channels)
        if self.cost == "params":
            scores = scores / _parameters_per_channel(model, members, channels)
        if self.normalizer is not None:
            scale = {"mean": scores.mean, "max": scores.max, "sum": scores.sum}[self.normalizer]()
            scores = scores / scale if scale > 0 else scores
        return self._cap(group, scores)

    def _channels_to_keep(self, group) -> tuple:
        """``(channels now, channels the cap keeps)`` of the group's root layer; records the
        layer when it is already below the cap."""
        graph, dep = group._DG, group[0].dep
        module = dep.target.module
        count = (graph.get_out_channels if graph.is_out_channel_pruning_fn(dep.handler)
                 else graph.get_in_channels)(module)
        initial = self._initial.setdefault(module, count)
        keep = max(1, math.ceil((1.0 - self.max_layer_ratio) * initial))
        if count < keep:
            self._past_cap[self._names.get(module, type(module).__name__)] = count
        return count, keep

    def _cap(self, group, scores):
        """Rank the channels that must stay after all others (see the class)."""
        if self.max_layer_ratio is None:
            return scores
        count, keep = self._channels_to_keep(group)
        protected = len(scores) - max(0, count - keep)
        if protected > 0:
            scores = pm.protect_top(pm.protect_top(scores, protected, offset=_PROTECTED), 1,
                                    offset=_PROTECTED)
        return scores


def _slice_size(module: nn.Module, kind: str) -> int:
    """Parameters of one channel of a member: a conv/linear output channel (weights and bias
    entry) or input channel (the weights it feeds), a BatchNorm or PReLU channel."""
    if isinstance(module, nn.modules.conv._ConvNd):
        outputs, inputs = module.out_channels, module.in_channels
    elif isinstance(module, nn.Linear):
        outputs, inputs = module.out_features, module.in_features
    else:
        return sum(1 for _ in module.parameters(recurse=False))
    weights = module.weight.numel()
    return weights // outputs + (module.bias is not None) if kind == "out" else weights // inputs


def _parameters_per_channel(model, members, channels) -> torch.Tensor:
    """Parameters removed with each root channel: the sum of its slices' sizes over the group."""
    modules = dict(model.named_modules())
    cost = torch.zeros(channels, dtype=torch.float64)
    for name, kind, _, positions in members:
        cost.index_add_(0, torch.as_tensor(list(positions), dtype=torch.long),
                        torch.full((len(positions),), float(_slice_size(modules[name], kind)),
                                   dtype=torch.float64))
    return cost.clamp(min=1.0)


class StepCertificate(float):
    """:func:`certified_step`'s bound, a float, with ``log_certified_bound`` (its natural log,
    finite where the float overflows: rank steps by it) and ``head`` (``'softmax'`` /
    ``'log_softmax'`` when the certificate is on the logits before a head set aside, else None)."""

    def __new__(cls, bound: float, log_certified_bound: float, head: str | None):
        value = super().__new__(cls, bound)
        value.log_certified_bound = log_certified_bound
        value.head = head
        return value

    def __reduce__(self):
        return StepCertificate, (float(self), self.log_certified_bound, self.head)


def certified_step(pruner, example_inputs) -> StepCertificate:
    """Run one step of ``pruner`` (the channels ``pruner.step()`` removes) and certify it.

    Returns ``pm.path_metric(theta, theta')`` with ``theta'`` the model with the step's channels
    zeroed, measured before they are removed: removing a channel computes exactly what zeroing
    it does, so for every input ``x`` the pruned network satisfies
    ``||R(x) - R'(x)||_1 <= max(||x||_inf, 1) * bound``, and since ``|theta'| <= |theta|`` the
    bound is ``N(theta) - N(theta')``, the path mass the step removes. Works with any importance.
    ``example_inputs`` are the pruner's (tensor, tuple or dict); a ``PathMetricImportance`` built
    for other shapes is refused.

    The groups of the step are collected first (nothing is removed, so their indices all refer
    to the current model), then each is removed through a group rebuilt from its root channels
    on the current graph, as ``pruner.step()`` does (concatenation offsets move as earlier
    groups are removed).
    """
    model = pruner.model
    importance = pruner.importance
    if isinstance(importance, PathMetricImportance) and \
            shapes(importance.example_inputs) != shapes(example_inputs):
        raise ValueError(f"PathMetricImportance was built for example inputs of shape "
                         f"{shapes(importance.example_inputs)} but the pruner's are "
                         f"{shapes(example_inputs)}: path masses depend on the input shape; "
                         "build the importance with the pruner's example inputs")
    engine, inputs = engine_view(model, example_inputs)
    groups = list(pruner.step(interactive=True))
    names = {module: name for name, module in model.named_modules()}
    parameter_names = {param: name for name, param in model.named_parameters()}
    members = [m for group in groups for m in group_members(group, names)[0]]
    slices = [s for group in groups for s in parameter_slices(group, parameter_names)]
    zeroed = zero_slices(model, slices, pm.zeroed_members(engine, inputs, members))
    bound = StepCertificate(*pm.path_metric_with_log(engine, zeroed, inputs),
                            pm.check_support(engine, inputs).head)
    for group in groups:
        root = group[0]
        pruner.DG.get_pruning_group(root.dep.target.module, root.dep.handler,
                                    list(root.idxs)).prune()
    if isinstance(importance, PathMetricImportance) and importance.max_layer_ratio is not None:
        for group in groups:
            importance._channels_to_keep(group)
        importance.warn_past_cap()
    return bound
