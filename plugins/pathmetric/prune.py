"""Path-magnitude pruning without a framework, with its certificate."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .core.ir import Inputs, Param, broadcast_channels, channel_view, fact
from .core.support import capture
from .metric import path_metric_with_log
from .scores import PathMasses


@dataclass
class PruneResult:
    """``model``: the pruned model (a copy unless ``inplace``); ``masks``: parameter name ->
    boolean keep-mask; ``certified_bound``: the exact path-metric between the original and the
    pruned model (rounded up), i.e. ``||R(x) - R_pruned(x)||_1 <= max(||x||_inf, 1) * bound``;
    ``log_certified_bound``: its natural log, finite where the float bound overflows."""
    model: torch.nn.Module
    masks: dict
    certified_bound: float
    log_certified_bound: float

    @property
    def sparsity(self) -> float:
        """Fraction of zeroed entries among the masked parameters."""
        kept = sum(int(torch.count_nonzero(m)) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - kept / total


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.kthvalue(values, k).values`` of a 1-D tensor, without its copy of ``values`` and
    of their indices for a large one: the ranks ``k * m / n`` +- 4096 of a sample of ``m =
    2**20`` entries drawn at random (seeded: an evenly strided one aliases with the rows of a
    weight, e.g. a stride of 98 picks the same 256 of the 25088 columns of every row), or the
    extreme entry near either end, bracket the k-th value (checked by counting), which is then
    the k-th of the few entries inside the bracket; the full selection otherwise."""
    n, m = values.numel(), 1 << 20
    if n < 4 * m:
        return torch.kthvalue(values, k).values
    picks = torch.randint(n, (m,), generator=torch.Generator().manual_seed(0))
    sample = values[picks.to(values.device)]
    rank = k * m // n
    # near either end the bracket reaches the extreme entry itself
    lo = torch.kthvalue(sample, rank - 4096).values if rank > 4096 else values.min()
    hi = torch.kthvalue(sample, rank + 4096).values if rank + 4096 <= m else values.max()
    # counted, never summed: the sum of a boolean tensor casts it to int64 first (8 bytes an entry)
    below = int(torch.count_nonzero(values < lo))
    if below < k <= int(torch.count_nonzero(values <= hi)):
        inside = values[(values >= lo) & (values <= hi)]
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(values, k).values


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` smallest finite-or-minus-infinite ``values`` (``+inf``
    never), ties broken by position; linear time (a k-th value, not a sort)."""
    count = min(count, int(torch.count_nonzero(values != math.inf)))
    chosen = torch.zeros(values.numel(), dtype=torch.bool)
    if count <= 0:
        return chosen
    threshold = _kth_smallest(values, count)
    chosen = values < threshold
    ties = torch.nonzero(values == threshold).flatten()[: count - int(torch.count_nonzero(chosen))]
    chosen[ties] = True
    return chosen


def _select(scores: torch.Tensor, sizes: dict, target: float, scope: str,
            max_layer_sparsity: float) -> dict:
    """Keep-masks removing the ``target`` fraction of lowest scores, no layer beyond the cap.

    ``scores``: the 1-D scores of every layer one after the other, ``sizes``: layer -> its
    number of scores, in that order (already-pruned entries are ``-inf`` and stay pruned;
    ``scores`` is overwritten). In a layer of ``n`` entries the ``ceil(n * (1 -
    max_layer_sparsity))`` best are always kept (at least one), so no layer is emptied. Ties are
    broken by position, deterministically.
    """
    layers, start = {}, 0
    for key, n in sizes.items():
        layers[key] = scores[start:start + n]
        start += n
    keep_floor = {k: max(1, math.ceil(v.numel() * (1 - max_layer_sparsity)))
                  for k, v in layers.items()}
    masks = {}
    if scope == "layer":
        for key, s in layers.items():
            n_prune = min(round(target * s.numel()), s.numel() - keep_floor[key])
            masks[key] = ~_lowest(s, max(n_prune, int(torch.count_nonzero(s == -math.inf))))
        return masks
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    for key, s in layers.items():   # the keep_floor[key] best of each layer, raised to +inf in
        # place, as the complement of the others (topk would copy the layer with int64 indices)
        s[~_lowest(s, s.numel() - keep_floor[key])] = math.inf
    prune = _lowest(scores, round(target * scores.numel()))
    start = 0
    for key, n in sizes.items():
        masks[key] = ~prune[start:start + n]
        start += n
    return masks


def _structured_targets(masses: PathMasses):
    """Hidden layer -> ``[(node, role, parameter name)]`` zeroed with each of its output
    channels: the ``channel_params`` of the layer (weight slices, bias) and of the BatchNorm
    right after it; the weight first."""
    graph = masses.graph
    after = graph.batch_norm_after()
    targets = {}
    for layer, (index, _, _) in masses.layers.items():
        if layer in masses.output_layers:
            continue
        owners = [graph.nodes[index]] + ([graph.nodes[after[layer]]] if layer in after else [])
        targets[layer] = [(node, role, node.roles[role].name) for node in owners
                          for role in fact(node, "channel_params", "which parameter slices "
                                           "belong to an output channel")
                          if isinstance(node.roles.get(role), Param)]
    return targets


def _channel_mask(node, role, keep: torch.Tensor, shape) -> torch.Tensor:
    """Boolean mask of shape ``shape`` (parameter ``role`` of ``node``) keeping the slices of the
    output channels where ``keep`` is true."""
    full = torch.ones(shape, dtype=torch.bool)
    view = channel_view(node, role, full)
    view &= broadcast_channels(keep, view)
    return full


def _kept_channels(node, role, mask: torch.Tensor) -> torch.Tensor:
    """Output channels of which ``mask`` (of parameter ``role`` of ``node``) keeps every entry."""
    view = channel_view(node, role, mask)
    return view.all(dim=3).all(dim=1).reshape(-1)


def prune(model: torch.nn.Module, sparsity: float, example_inputs: Inputs,
          structured: bool = False, scope: str = "global", max_layer_sparsity: float = 0.95,
          rounds: int = 1, layers: Sequence[str] | None = None, inplace: bool = False,
          precision: str = "float64") -> PruneResult:
    """Path-magnitude pruning: remove the weights (or channels) carrying the least path mass.

    - unstructured: scores are ``pm.weight_scores`` of conv/linear weights;
    - ``structured=True``: scores are ``pm.channel_scores``; an output channel is removed with
      its bias and the BatchNorm channel right after it (the network's output layers are kept);
    - ``scope='global'`` ranks all layers together (masses are in one unit), ``'layer'`` prunes
      each layer by ``sparsity``; ``max_layer_sparsity`` caps any single layer;
    - ``rounds > 1`` prunes iteratively to ``1 - (1 - sparsity)^(r/rounds)``, re-scoring the
      pruned network each round (scores of pruned entries are zero, they stay pruned).

    Path masses are invariant under neuron rescaling, so the masks are too (up to ties).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds}")
    # pruned in place, the certificate compares with a copy of the original parameters
    original = {n: p.detach().clone() for n, p in model.named_parameters()} if inplace else None
    pruned = model if inplace else None   # a copy is made once the first scores are taken
    graph = capture(model, example_inputs)
    table = graph.layers()
    chosen = list(table) if layers is None else list(layers)
    params = dict(model.named_parameters())
    masks: dict = {}
    for r in range(1, rounds + 1):
        target = 1.0 - (1.0 - sparsity) ** (r / rounds)
        # the first round scores the model itself (the copy's parameters are its own)
        masses = PathMasses(model if pruned is None else pruned, example_inputs, precision)
        if structured:
            targets = {k: v for k, v in _structured_targets(masses).items() if k in chosen}
            parts = {k: masses.channel_share(k) for k in targets}
        else:
            targets = {k: [(graph.nodes[table[k].node], "weight", table[k].weight)]
                       for k in chosen}
            parts = {k: params[table[k].weight] for k in targets}
        sizes = {k: part.numel() for k, part in parts.items()}
        scores = torch.empty(sum(sizes.values()), dtype=torch.float64)
        start = 0
        for key, n in sizes.items():   # each share formed in its lifted parameter's memory
            s = scores[start:start + n]
            s.copy_((parts[key] if structured else
                     masses.release(table[key].weight, relative=True)).detach().reshape(-1))
            node, role, name = targets[key][0]
            previous = masks.get(name)
            if previous is not None:
                flat = _kept_channels(node, role, previous) if structured else previous.reshape(-1)
                s[~flat.cpu()] = -math.inf
            start += n
        del masses, parts
        keep = _select(scores, sizes, target, scope, max_layer_sparsity)
        del scores
        if pruned is None:
            pruned = copy.deepcopy(model)
            params = dict(pruned.named_parameters())
        with torch.no_grad():
            for key, mask in keep.items():
                for node, role, name in targets[key]:
                    p = params[name]
                    full = _channel_mask(node, role, mask, p.shape) if structured \
                        else mask.reshape(p.shape)
                    masks[name] = full.to(p.device).clone()
                    p.masked_fill_(~masks[name], 0)   # p * mask would cast the mask to p's dtype
    assert pruned is not None   # made in the first round (rounds >= 1)
    # on the graph captured for ``model``, the other side as replacement tensors: the pruned
    # copy is never captured (a forward and a lifted evaluation beside both models)
    other = original if inplace else {n: p.detach() for n, p in pruned.named_parameters()}
    bound, log_bound = path_metric_with_log(model, other, example_inputs, precision)
    return PruneResult(pruned, masks, bound, log_bound)


def protect_top(scores: torch.Tensor, keep: int, offset: float = math.inf) -> torch.Tensor:
    """A copy of ``scores`` (any shape) whose ``keep`` largest entries are raised by ``offset``:
    ``s_i + offset`` for the top ``keep`` (``+inf`` with the default offset), ``s_i`` for the
    others. A pruner that removes the lowest scores then takes every other entry first, so a
    layer keeps at least ``keep`` channels (the cap of ``max_layer_sparsity``, NNI's
    ``max_sparse_ratio`` and torch-pruning's ``max_layer_ratio``)."""
    flat = scores.reshape(-1).clone()
    top = flat.topk(min(max(keep, 0), flat.numel())).indices
    flat[top] = math.inf if offset == math.inf else flat[top] + offset
    return flat.reshape(scores.shape)
