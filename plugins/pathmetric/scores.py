"""Path masses: pruning scores for weights, channels and coupled groups (docs/design.md, "Scores").

``N`` (the L1 path-norm) is affine in each ``|theta_i|`` when every parameter sits on a path at
most once, so ``|theta_i| * dN/d|theta_i|`` is the mass of the paths through ``theta_i``, which
equals ``N(theta) - N(theta with theta_i = 0)``. One lifted forward and one backward give all of
them; for a neuron ``v``, ``a_v * dN/da_v`` (lifted activation times gradient) is the mass of the
paths through ``v``.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import torch

from .core.algebras import NormLifting, PairLifting, total_of
from .core.interpreter import named_tensors, precision_dtype
from .core.ir import (
    Computed,
    Inputs,
    Param,
    Part,
    Value,
    broadcast_channels,
    channel_count,
    channel_sums,
    channel_view,
    fact,
)
from .core.scaled import times_pow2, to_float
from .core.support import capture
from .errors import UnsupportedModelError


def _check_unshared(graph):
    shared = graph.shared_parameters()
    if shared:
        raise UnsupportedModelError(
            f"parameter(s) {shared[:3]} are used by more than one operation (a module called "
            "twice): the path-norm is then not affine in them and path masses are undefined. "
            "Give each call its own module.", [("shared weights", name, "") for name in shared])


class Member(NamedTuple):
    """One layer's part of a group of coupled channels (a torch-pruning group, an NNI dependency
    group): channel ``idxs[j]`` of ``module`` belongs to root channel ``root_idxs[j]``.

    ``kind`` is ``"out"`` (an output channel of a conv/linear layer with its bias entry, a frozen
    BatchNorm channel, a per-channel PReLU slope) or ``"in"`` (an input channel of a conv/linear
    layer: the weights it feeds). Wherever members are taken, a plain 4-tuple in this order is
    accepted as well.
    """
    module: str
    kind: str
    idxs: Sequence[int]
    root_idxs: Sequence[int]


class PathMasses:
    """Masses of the paths through every lifted parameter of a model, from one forward+backward.

    ``share(key)`` is ``|theta| * dN/d|theta| / N`` for a parameter name, or for a parameter a
    rule computes, by its :class:`~pathmetric.core.ir.Computed` key (a folded BatchNorm's
    ``Computed(module, Part.SCALE)`` / ``Part.SHIFT``, PReLU's ``Part.SLOPE``); ``absolute``
    turns shares into absolute units (``inf`` past float64). ``log_total`` is ``log N``.
    ``layers``, ``output_layers`` and ``batch_norm_after`` (layer -> BatchNorm module) are those
    of the captured graph (:meth:`pathmetric.core.ir.Graph.layers`, ...), read once.
    ``gradients_only`` keeps only ``gradient(key)`` (layer sensitivity, plans): neither the
    lifted parameters nor the neuron values that shares, masses and channel shares read.
    Otherwise only the products ``|theta| * dN/d|theta|`` are kept. Either is formed during the
    backward in its lifted parameter's memory as soon as its gradient is accumulated, which is
    then freed: the backward never holds every gradient at once beside the lifted parameters.
    """

    def __init__(self, model, example_inputs, precision="float64", overrides=None,
                 gradients_only=False):
        self.graph = capture(model, example_inputs)
        _check_unshared(self.graph)
        ev = NormLifting(self.graph, model, q=1.0, dtype=precision_dtype(precision),
                         overrides=overrides, track=True)
        self.layers = self.graph.layers()
        keep = set() if gradients_only else {layer.node for layer in self.layers.values()}
        self._masses: dict = {}   # key -> |theta| * dN/d|theta| (times 2**-exponent)
        with torch.inference_mode(False), torch.enable_grad():  # also under inference_mode
            outputs, kept = ev.run(keep)
            for value in kept.values():
                value[0].m.retain_grad()
            self.gradients: dict = {}   # key -> dN/d|theta| (times 2**-exponent), gradients_only
            kept_by_hook = self.gradients if gradients_only else self._masses
            for key, leaf in ev.leaves.items():
                leaf.register_post_accumulate_grad_hook(self._hook(key, kept_by_hook,
                                                                   gradients_only))
            total = total_of(outputs)
            total.m.backward()
        self.relative_error = ev.relative_error()
        self.exponent = total.e
        self._total = total.m.detach()
        self.log_total = total.log()
        self.shapes = {key: tuple(leaf.shape) for key, leaf in ev.leaves.items()}
        for key, leaf in ev.leaves.items():   # no path reaches it: zero gradient and mass
            if key not in kept_by_hook:
                kept_by_hook[key] = leaf.detach().zero_()
        self._shares = {}
        # values and gradients without their autograd graph, whose AccumulateGrad nodes would
        # keep every lifted parameter alive after release()
        self._kept = {index: (value[0].m.detach(), value[0].m.grad)
                      for index, value in kept.items()}
        self.output_layers = self.graph.output_layers()
        self.batch_norm_after = {name: self.graph.nodes[j].module
                                 for name, j in self.graph.batch_norm_after().items()}
        self._channel_maps_known = False   # every op's channel map is stated (channel_share)

    @staticmethod
    def _hook(key, kept: dict, gradients_only: bool):
        """The hook that turns the lifted parameter of ``key`` into its mass ``|theta| *
        dN/d|theta|`` (or its gradient, ``gradients_only``) in place, once its gradient is
        accumulated (every op reading it has then run its backward), keeps it in ``kept`` and
        frees the gradient."""
        def hook(leaf):
            with torch.no_grad():
                value = leaf.detach()
                kept[key] = value.copy_(leaf.grad) if gradients_only else value.mul_(leaf.grad)
            leaf.grad = None
        return hook

    def group_mass(self, members, num_channels, relative=True) -> torch.Tensor:
        """Sum over ``members`` of each member's removed mass per root channel: an upper bound
        of the group's mass (see :func:`group_mass`); shares of N if ``relative``."""
        out = torch.zeros(num_channels, dtype=torch.float64)
        for module, kind, idxs, root_idxs in (Member(*m) for m in members):
            share = self.member_share(module, kind).detach().double().cpu()
            rows = torch.as_tensor(list(idxs), dtype=torch.long)
            roots = torch.as_tensor(list(root_idxs), dtype=torch.long)
            out.index_add_(0, roots, share[rows])
        return out if relative else self.absolute(out)

    def share(self, key, keep=True) -> torch.Tensor:
        """``|theta| * dN/d|theta| / N`` of ``key``, kept for the next call unless ``keep`` is
        false (a weight's shares, as large as the weight, for a caller that reduces them)."""
        if key in self._shares:
            return self._shares[key]
        share = torch.div(self._masses[key], self._total)
        if keep:
            self._shares[key] = share
        return share

    def absolute(self, share: torch.Tensor) -> torch.Tensor:
        """Shares of N in absolute units (``inf`` past the precision's range)."""
        return times_pow2(share * self._total.to(share.dtype), self.exponent, inplace=True)

    def release(self, key, relative=False) -> torch.Tensor:
        """``share(key)`` (``relative``) or ``|theta| * dN/d|theta|`` in absolute units, formed in
        the memory of the lifted parameter, which this object then drops: for a caller that needs
        each key once."""
        self._shares.pop(key, None)
        product = self._masses.pop(key)
        if relative:
            return product.div_(self._total)
        return times_pow2(product, self.exponent, inplace=True)

    def _neurons(self, index) -> torch.Tensor:
        """Share of N through each output neuron of node ``index``: ``a * dN/da / N``."""
        value, grad = self._kept[index]
        if grad is None:
            return torch.zeros_like(value)
        return torch.mul(value, grad).div_(self._total)

    def gradient(self, key) -> torch.Tensor:
        """``dN/d|theta|`` up to the common factor ``2**exponent`` (shared by all keys); kept
        with ``gradients_only=True`` only."""
        if key not in self.gradients and key in self.shapes:
            raise ValueError("these PathMasses keep masses only: build them with "
                             "gradients_only=True to read gradients")
        return self.gradients[key]

    def channel_share(self, layer: str) -> torch.Tensor:
        """Share of N removed by deleting output channel ``c`` of ``layer`` together with the
        BatchNorm channel that directly follows it: mass through the layer's output neurons of
        channel ``c`` (``a * g`` summed over positions) plus the mass of the paths that start
        at that BatchNorm's shift."""
        if not self._channel_maps_known:
            for _, op in self.graph.operations():
                fact(op, "channels", "how it maps channels")
            self._channel_maps_known = True
        index, weight, _ = self.layers[layer]
        node = self.graph.nodes[index]
        neurons = self._neurons(index)
        dim = fact(node, "channel_dim", "the dim of its output holding channels") % neurons.dim()
        per_channel = neurons.transpose(0, dim).reshape(neurons.shape[dim], -1).sum(dim=1)
        view = channel_view(node, "weight", torch.empty(self.shapes[weight], device="meta"))
        if per_channel.numel() != channel_count(view):
            why = (f"its output has {per_channel.numel()} channels along dim {dim}, its weight "
                   f"{channel_count(view)}")
            raise UnsupportedModelError(f"{node.rule_name} in '{node.module or '<model>'}': {why}",
                                        [(node.rule_name, node.module, why)])
        bn = self.batch_norm_after.get(layer)
        if bn is not None:
            per_channel = per_channel + self.share(Computed(bn, Part.SHIFT))
        return per_channel

    def member_share(self, module: str, kind: str) -> torch.Tensor:
        """Per-channel share of one group member: ``kind='out'`` an output channel of a
        conv/linear layer (weights and bias), a BatchNorm channel (scale and shift) or a
        per-channel PReLU slope; ``kind='in'`` an input channel of a conv/linear layer (all the
        weights it feeds)."""
        if module in self.layers:
            index, weight, bias = self.layers[module]
            node, w = self.graph.nodes[index], self.share(weight, keep=False)
            if kind == "out":
                return channel_sums(node, "weight", w) + (self.share(bias) if bias else 0)
            return channel_sums(node, "weight", w, "in")
        if Computed(module, Part.SCALE) in self._masses:
            if kind != "out":
                raise ValueError(f"BatchNorm '{module}' has one side: use kind 'out'")
            return (self.share(Computed(module, Part.SCALE))
                    + self.share(Computed(module, Part.SHIFT)))
        slopes = Computed(module, Part.SLOPE)    # the lifted slopes of the prelu rule
        if slopes in self._masses and self._masses[slopes].numel() > 1:
            if kind != "out":
                raise ValueError(f"PReLU '{module}' has one side: use kind 'out'")
            return self.share(slopes)
        raise KeyError(f"'{module}' is neither a conv/linear layer, a frozen BatchNorm nor a "
                       "per-channel PReLU on the captured graph")


def _channel_owner(graph, module: str):
    """The node of ``module`` holding parameter slices of its output channels (a frozen
    BatchNorm, a PReLU), else None."""
    for _, node in graph.operations():
        if node.module == module and any(
                isinstance(node.roles.get(role), Param)
                for role in fact(node, "channel_params", "which parameter slices belong to an "
                                 "output channel")):
            return node
    return None


def weight_scores(model: torch.nn.Module, example_inputs: Inputs, relative: bool = False,
                  precision: str = "float64") -> dict[str, torch.Tensor]:
    """``{parameter name: |theta_i| * dN/d|theta_i|}`` for every conv/linear weight and bias,
    and every parameter used directly, in its own shape: ``W`` of ``x @ W``, a learnt scale
    ``x * gamma`` (LayerScale's ``gamma.view(1, -1, 1, 1)`` too), a bias ``x + b``.

    Each entry is the L1 path mass through that coordinate, ``N(theta) - N(theta_i = 0)``;
    ``relative=True`` divides by ``N`` (finite for any depth). One forward and one backward.
    """
    masses = PathMasses(model, example_inputs, precision)
    out = {}
    for _, weight, bias in masses.layers.values():
        for name in (weight, bias) if bias else (weight,):
            out[name] = masses.release(name, relative)
    for name in masses.graph.param_names:   # x @ W, x * gamma, x + b: lifted under their names
        if name not in out and name in masses._masses:
            out[name] = masses.release(name, relative)
    return out


def channel_scores(model: torch.nn.Module, example_inputs: Inputs, relative: bool = False,
                   precision: str = "float64") -> dict[str, torch.Tensor]:
    """``{layer name: per-output-channel mass}``: the mass removed by deleting an output channel
    of a conv/linear layer together with the BatchNorm channel that directly follows it."""
    masses = PathMasses(model, example_inputs, precision)
    get = masses.channel_share if relative else lambda name: masses.absolute(masses.channel_share(name))
    return {name: get(name) for name in masses.layers}


def zeroed_members(model: torch.nn.Module, example_inputs: Inputs, members: Sequence,
                   roots: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
    """Replacement tensors with the member slices zeroed (all of them, or those of ``roots``).

    ``members`` as in :func:`group_mass`. A conv/linear ``'out'`` member zeroes the weights and
    bias entry of its output channels, ``'in'`` the weights its input channels feed (grouped
    convolutions: within the channel's group; transposed convolutions: weights laid out
    ``(in, out / groups, ...)``); a BatchNorm member zeroes its weight and bias (so the folded
    scale and shift vanish); a per-channel PReLU member its slopes. Pass the result to
    ``pm.path_metric(model, result, x)``.
    """
    graph = capture(model, example_inputs)
    named = named_tensors(model)
    layers = graph.layers()
    out: dict = {}
    for module, kind, idxs, root_idxs in (Member(*m) for m in members):
        chosen = [i for i, r in zip(idxs, root_idxs) if roots is None or r in roots]
        if not chosen:
            continue
        if module in layers:
            node = graph.nodes[layers[module].node]
            roles = ("weight", "bias") if kind == "out" else ("weight",)
        else:
            node, kind = _channel_owner(graph, module), "out"
            if node is None:
                raise KeyError(f"cannot zero channels of '{module}': not a conv/linear layer, an "
                               "affine frozen BatchNorm or a PReLU on the captured graph")
            roles = tuple(node.rule.channel_params)
        for role in roles:
            ref = node.roles.get(role)
            if isinstance(ref, Param):
                tensor = out.setdefault(ref.name, named[ref.name].detach().clone())
                view = channel_view(node, role, tensor, kind)
                dropped = torch.zeros(channel_count(view), dtype=torch.bool, device=tensor.device)
                dropped[chosen] = True
                view.masked_fill_(broadcast_channels(dropped, view), 0)
    return out


def group_mass(model: torch.nn.Module, example_inputs: Inputs, members: Sequence,
               num_channels: int, exact: bool = False, relative: bool = True,
               masses: PathMasses | None = None, precision: str = "float64") -> torch.Tensor:
    """Per root channel, the path mass removed by zeroing the channel in every group member.

    ``members`` lists :class:`Member` ``(module name, kind, idxs, root_idxs)`` (or plain
    4-tuples): ``kind`` is ``'out'`` (a conv or linear output channel with its bias, or a
    BatchNorm channel) or ``'in'`` (a conv or linear input channel); channel ``idxs[j]`` of the
    member belongs to root channel ``root_idxs[j]``.

    - ``exact=False`` (cheap): the sum over members of each member's own removed mass, from one
      forward+backward (pass ``masses`` to reuse it). Each term is exact for its layer; the sum
      is an **upper bound** of the group's mass since a path can cross several members.
    - ``exact=True``: ``N(theta) - N(theta with the group slices zeroed)`` computed without
      cancellation by one (A, D) pair pass per root channel: exact, and costlier.

    ``relative=True`` returns shares of ``N`` (comparable across groups, finite at any depth).
    """
    if exact:
        graph = capture(model, example_inputs)
        base = named_tensors(model)
        dtype = precision_dtype(precision)
        out = torch.zeros(num_channels, dtype=torch.float64)
        for root in range(num_channels):
            tensors_b = dict(base)
            tensors_b.update(zeroed_members(model, example_inputs, members, {root}))
            with torch.no_grad():
                ev = PairLifting(graph, base, tensors_b, stage="direct", dtype=dtype)
                outputs, _ = ev.run()
            a, d = total_of(outputs, 0), total_of(outputs, 1)
            value = float(d.m) * 2.0 ** (d.e - a.e) / float(a.m) if relative else \
                to_float(float(d.m), d.e)
            out[root] = value
        return out
    masses = masses or PathMasses(model, example_inputs, precision)
    return masses.group_mass(members, num_channels, relative)


def prunable_layers(model: torch.nn.Module, example_inputs: Inputs) -> list[str]:
    """Names of the conv/linear layers on the captured graph, in execution order."""
    return list(capture(model, example_inputs).layers())


def layer_input_shapes(model: torch.nn.Module, example_inputs: Inputs) -> dict:
    """Layer name (as :func:`prunable_layers`) -> shape of the activation it reads (batch as in
    ``example_inputs``), for the layers that read an activation."""
    graph = capture(model, example_inputs)
    shapes = {}
    for name, layer in graph.layers().items():
        source = graph.nodes[layer.node].roles["x"]
        if isinstance(source, Value):
            shapes[name] = tuple(graph.shape_of(source))
    return shapes
