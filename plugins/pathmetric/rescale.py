"""Function-preserving random neuron rescaling (the symmetry path-metrics are invariant to).

For a ReLU network, multiplying the incoming weights and bias of a neuron by ``lambda > 0`` and
its outgoing weights by ``1/lambda`` leaves the function unchanged, since ReLU, leaky ReLU, max-
and average-pooling commute with positive scaling. Magnitude scores change; path masses do not.
"""
from __future__ import annotations

import copy
import math

import torch

from .core.ir import Inputs, Param, Value, broadcast_channels, channel_count, channel_view, fact
from .core.support import cached_graph, capture


def _flatten_factor(graph, node):
    """Entries per channel when ``node`` flattens a (1, C, ...) tensor to (1, C * ...) (an op
    that moves entries and lets channel transforms through), else None."""
    if len(node.shape) != 2 or not fact(node, "transforms_through", "whether channel "
                                        "transforms pass through it") or \
            fact(node, "channels", "how it maps channels") != "reindex":
        return None
    source = node.roles["x"]
    if not isinstance(source, Value):
        return None
    shape = graph.nodes[source.node].shape
    if len(shape) < 3 or not isinstance(shape[0], int) or node.shape[1] != math.prod(shape[1:]):
        return None
    return math.prod(shape[2:])


def _channels_along_dim_one(node, ndim: int) -> bool:
    """Whether ``node``'s channels are dim 1 of an ``ndim``-dimensional tensor."""
    return fact(node, "channel_dim", "the dim of its output holding channels") % ndim == 1


def _consumers(graph, users, layers, start):
    """Layers reading the channels of node ``start`` through homogeneous ops.

    Returns ``[(layer node index, entries per channel)]`` or None when a channel reaches
    anything else (a residual add, a concatenation, an output, a BatchNorm, a grouped
    convolution, ...).
    """
    found, frontier = [], [(start, 1)]
    outputs = {v.node for v in graph.outputs}
    while frontier:
        index, factor = frontier.pop()
        if index in outputs:
            return None
        for j in users[index]:
            node = graph.nodes[j]
            if node.roles.get("x") != Value(index):
                return None
            if j in layers:
                if node.roles.get("groups", 1) != 1 or \
                        not _channels_along_dim_one(node, len(graph.nodes[index].shape)):
                    return None
                found.append((j, factor))
            elif fact(node, "homogeneous", "whether neuron rescaling passes through it"):
                frontier.append((j, factor))
            elif _flatten_factor(graph, node) is not None and factor == 1:
                frontier.append((j, _flatten_factor(graph, node)))
            else:
                return None
    return found or None


def _producer_roles(node) -> list:
    """The parameter roles of ``node`` scaled with its output channel ``c`` (a conv/linear layer
    or a frozen BatchNorm along dim 1: ``weighted`` with ``channel_params``), else []."""
    if not fact(node, "weighted", "whether its neurons have their own weights") or \
            not _channels_along_dim_one(node, len(node.shape)):
        return []
    roles = fact(node, "channel_params", "which parameter slices belong to an output channel")
    return [role for role in roles if isinstance(node.roles.get(role), Param)]


def random_rescale(model: torch.nn.Module, example_inputs: Inputs | None = None, seed: int = 0,
                   powers_of_two: bool = True, max_log2: float = 3.0) -> torch.nn.Module:
    """A deep copy of ``model`` with every rescalable neuron channel scaled by a random factor.

    A channel is rescalable when it is produced by a conv/linear layer or a frozen BatchNorm and
    reaches only ungrouped conv/linear layers (through ReLU, pooling, dropout or a flatten). The
    slices of its producer's ``channel_params`` (weights, bias) are multiplied by ``lambda_c``
    and the consumers' input weights divided by it. Factors are ``2**k`` with integer ``k``
    uniform in ``[-max_log2, max_log2]`` (exact in floating point) or, with
    ``powers_of_two=False``, ``exp(u)`` with ``u`` uniform in ``[-max_log2 ln 2, max_log2 ln 2]``.
    A conv followed by a BatchNorm is rescaled at the BatchNorm (the conv's scale would be undone by the normalisation).

    ``example_inputs`` may be omitted when the model has been analysed before (its captured graph
    is reused).
    """
    if example_inputs is None:
        graph = cached_graph(model)
        if graph is None:
            raise ValueError("pass example_inputs: the model has not been captured yet")
    else:
        graph = capture(model, example_inputs)
    if graph.shared_parameters():
        raise ValueError("random_rescale needs every parameter used once; shared: "
                         f"{graph.shared_parameters()[:3]}")
    users = graph.users()
    layers = {layer.node for layer in graph.layers().values()}
    generator = torch.Generator().manual_seed(seed)
    copy_ = copy.deepcopy(model)
    params = dict(copy_.named_parameters())
    with torch.no_grad():
        for index, node in graph.operations():
            producer = _producer_roles(node)
            if not producer:
                continue
            consumers = _consumers(graph, users, layers, index)
            if consumers is None:
                continue
            views = [channel_view(node, role, params[node.roles[role].name]) for role in producer]
            channels = channel_count(views[0])
            if powers_of_two:
                k = torch.randint(-int(max_log2), int(max_log2) + 1, (channels,), generator=generator)
                factors = torch.pow(2.0, k.double())
            else:
                u = (torch.rand(channels, generator=generator, dtype=torch.float64) * 2 - 1)
                factors = torch.exp(u * max_log2 * math.log(2.0))
            for view in views:
                view.mul_(broadcast_channels(factors.to(view), view))
            for j, entries in consumers:
                consumer = graph.nodes[j]
                view = channel_view(consumer, "weight", params[consumer.roles["weight"].name], "in")
                inverse = (1.0 / factors).repeat_interleave(entries).to(view)
                view.mul_(broadcast_channels(inverse, view))
    return copy_
