"""Reports: generalization bound, classical parameter-Lipschitz bound, symmetry counts.

Every quantity is read off the engine's captured graph (:func:`pathmetric.core.capture.capture`) and
computed in log space, so it stays finite for any depth. Bounds for ImageNet-size networks are
vacuous in absolute terms; they are reported as they are.

Conventions for reading a DAG ReLU network (arXiv 2310.01225, section 2) off the graph: every
``conv``, ``conv_transpose``, ``linear``, ``batch_norm`` (frozen: an identity neuron with weight
``s = gamma/sqrt(var+eps)`` and bias ``t = beta - mean*s``), pooling, ``mean``/``sum`` reduction,
interpolation, ``add`` and ``sub`` node is one layer of neurons; ReLU is the activation of the
layer before it; reshapes, concatenation, padding and constant scales only re-index neurons or
carry a fixed edge coefficient. LeakyReLU/PReLU/RReLU, ``max(x, a*x)``, is an identity neuron
``a*x`` followed by a max-pooling neuron over two inputs (two layers). Clipped activations (ReLU6,
hardtanh, clamp, hardsigmoid) and ``abs`` are a layer of ReLU neurons with biases followed by an
identity neuron (two layers, docs/design.md, "The model class"); ``maximum`` and a max reduction are one layer of
max-pooling neurons, ``minimum`` and a min reduction (``-max(-x)``) add an identity layer after it;
``x @ W`` is a linear layer; a constant added to an activation is a bias of the adding neuron. This
is a valid DAG-ReLU description of the model; the bounds hold for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .core.ir import Buffer, Param, fact, values_read
from .core.rules import batch_norm_scale, batch_norm_shift
from .core.support import capture

# --------------------------------------------------------------------------- graph facts

@dataclass(frozen=True)
class GraphFacts:
    """Architecture constants of Theorem 3.1 of arXiv 2310.01225.

    ``depth`` D: neuron layers on the longest input-to-output path; ``pool_types`` P: distinct
    *-max-pooling neuron types (k-max-pooling with distinct k; max-pooling and LeakyReLU are both
    1-max-pooling); ``kernel`` K: largest number of inputs of a max-pooling neuron (1 if none);
    ``max_pools_on_path`` M: most max-pooling neurons on one path; ``d_in``, ``d_out``: input and
    output coordinates per sample; ``affine_depth``: conv/linear layers on the longest path;
    ``width``: largest number of neurons of one conv/linear/BatchNorm layer or of the input.
    """
    depth: int
    pool_types: int
    kernel: int
    max_pools_on_path: int
    d_in: int
    d_out: int
    affine_depth: int
    width: int


def graph_facts(model, example_inputs) -> GraphFacts:
    """Read D, P, K, M, d_in, d_out (and affine depth, width) off the captured graph."""
    graph = capture(model, example_inputs)
    depth: list = []
    pools: list = []
    affine: list = []
    kernel, kinds, width = 1, set(), 0
    inputs = graph.inputs
    for index, node in enumerate(graph.nodes):
        ins = [v.node for v in values_read(node)]
        before = lambda values: max((values[i] for i in ins), default=0)  # noqa: E731
        if index in inputs:
            added, pooling, is_affine, weighted = 0, 0, False, True
        else:
            added = fact(node, "depth", "the neuron layers it adds")
            pooling = node.rule.max_pool_kernel(graph, node)
            is_affine = fact(node, "affine", "whether it is a conv/linear-like layer")
            weighted = fact(node, "weighted", "whether its neurons have their own weights")
        depth.append(before(depth) + added)
        pools.append(before(pools) + (pooling > 0))
        affine.append(before(affine) + is_affine)
        if pooling:
            kinds.add(fact(node, "max_pool_rank", "the k of its k-max-pooling neurons"))
            kernel = max(kernel, pooling)
        if is_affine or weighted:
            width = max(width, math.prod(node.shape[1:]))
    outs = [v.node for v in graph.outputs]
    return GraphFacts(
        depth=max(depth[i] for i in outs), pool_types=len(kinds), kernel=kernel,
        max_pools_on_path=max(pools[i] for i in outs),
        d_in=sum(math.prod(s[1:]) for s in graph.input_shapes),
        d_out=sum(math.prod(graph.shape_of(v)[1:]) for v in graph.outputs),
        affine_depth=max(affine[i] for i in outs), width=width)


# --------------------------------------------------------------------------- generalization

def generalization_constants(depth, pool_types, kernel, max_pools_on_path, d_in, d_out):
    """``(C, C')`` of arXiv 2310.01225, Theorem 3.1 and the remark sharpening it.

    ``C  = sqrt(D ln((3+2P) K) + ln((3+2P)/(1+P) (d_in+1) d_out))``
    ``C' = sqrt(D ln 3 + M ln K + ln((d_in+1) d_out))``
    """
    D, P, K, M = depth, pool_types, kernel, max_pools_on_path
    c = math.sqrt(D * math.log((3 + 2 * P) * K)
                  + math.log((3 + 2 * P) / (1 + P)) + math.log(d_in + 1) + math.log(d_out))
    c_sharp = math.sqrt(D * math.log(3) + M * math.log(K) + math.log(d_in + 1) + math.log(d_out))
    return c, c_sharp


def generalization_bound(model, example_inputs, n, input_bound=1.0, lipschitz=1.0) -> dict:
    """Rademacher part of the generalization gap, arXiv 2310.01225, Theorem 3.1:

    ``gap <= L_loss * 4 * C * B * ||Phi(theta)||_1 / sqrt(n)``

    with ``C`` of :func:`generalization_constants` (and ``C'`` of the remark, the sharper of
    the two), ``n`` training samples, ``B = max(sup_x ||x||_inf, 1)`` (paths starting at a
    bias see the input 1) and ``L_loss`` the Lipschitz constant of the loss in the output.
    Returned as natural logs (``log_bound``, ``log_bound_sharp``) and as floats (``inf`` only
    past float64), with the constants and the L1 path-norm's log; ``head`` names a final softmax
    set aside (the bound is then for a loss of the logits, docs/design.md, "Output heads").
    """
    from .norms import log_path_norm

    if n < 1 or lipschitz <= 0:
        raise ValueError("n must be >= 1 and lipschitz > 0")
    facts = graph_facts(model, example_inputs)
    c, c_sharp = generalization_constants(facts.depth, facts.pool_types, facts.kernel,
                                          facts.max_pools_on_path, facts.d_in, facts.d_out)
    log_norm = log_path_norm(model, example_inputs)
    common = (math.log(4 * lipschitz) + math.log(max(input_bound, 1.0)) + log_norm
              - 0.5 * math.log(n))
    out = {"D": facts.depth, "P": facts.pool_types, "K": facts.kernel,
           "M": facts.max_pools_on_path, "d_in": facts.d_in, "d_out": facts.d_out,
           "n": n, "B": max(input_bound, 1.0), "lipschitz": lipschitz, "C": c, "C_sharp": c_sharp,
           "log_path_norm": log_norm, "head": capture(model, example_inputs).head,
           "log_bound": common + math.log(c),
           "log_bound_sharp": common + math.log(c_sharp)}
    out["bound"] = _exp(out["log_bound"])
    out["bound_sharp"] = _exp(out["log_bound_sharp"])
    return out


def _exp(log_value: float) -> float:
    return math.exp(log_value) if log_value < 709.78 else math.inf


# --------------------------------------------------------------------------- classical bound

def _named(model, other=None) -> dict:
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    if other is None:
        return named
    if isinstance(other, torch.nn.Module):
        replaced: dict = dict(other.named_parameters())
        replaced.update(other.named_buffers())
    else:
        replaced = dict(other)
    unknown = sorted(set(replaced) - set(named))
    if unknown:
        raise KeyError(f"`other` names tensors the model does not have: {unknown[:5]}")
    named.update(replaced)
    return named


def _resolve(ref, named):
    if isinstance(ref, (Param, Buffer)):
        return named[ref.name].detach().double()
    return ref.double() if isinstance(ref, torch.Tensor) else ref


def _weight_dim(node):
    """The dim of the weight of a conv/linear-like ``node`` indexing output channels, else
    None."""
    if not fact(node, "affine", "whether it is a conv/linear-like layer"):
        return None
    return fact(node, "channel_params", "which parameter slices belong to an output channel")[
        "weight"]


def _layers(graph, named) -> list:
    """``(W, b)`` of every affine layer, each frozen BatchNorm folded into the conv/linear it
    follows when that layer has its output channels as weight rows and feeds only it
    (``W' = s W``, ``b' = s b + t``); a standalone BatchNorm is the diagonal layer ``(s, t)``.
    ``W`` has its output channels first."""
    consumers: dict = {}
    for j, node in enumerate(graph.nodes):
        for i in (v.node for v in values_read(node)):
            consumers.setdefault(i, []).append(j)
    folded, layers = {}, []
    inputs = graph.inputs
    for j, node in graph.operations():
        if not fact(node, "channel_affine", "whether it is a frozen per-channel affine map"):
            continue
        bn = node.roles
        var, gamma = _resolve(bn["running_var"], named), _resolve(bn["weight"], named)
        s = batch_norm_scale(var, gamma, bn["eps"])
        t = batch_norm_shift(_resolve(bn["running_mean"], named), var, gamma,
                             _resolve(bn["bias"], named), bn["eps"])
        source = bn["x"].node
        if source not in inputs and _weight_dim(graph.nodes[source]) == 0 and \
                consumers.get(source) == [j]:
            folded[source] = (s, t)
        else:
            layers.append((s.reshape(-1, 1), t))
    for i, node in graph.operations():
        if _weight_dim(node) is None:
            continue
        bound = node.roles
        w = _resolve(bound["weight"], named)
        if _weight_dim(node) == 1:  # input channels first -> output first
            w = w.transpose(0, 1)
        b = _resolve(bound.get("bias"), named)
        b = torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
        if i in folded:
            s, t = folded[i]
            w = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
            b = s * b + t
        layers.append((w.reshape(w.shape[0], -1), b))
    return layers


def _layer_radius(w, b) -> float:
    """``max(||W||_{inf->inf}, ||b||_inf)``: the largest row L1 norm (a conv's kernel, all input
    channels; a transposed conv's is bounded by it too) and the largest bias."""
    return max(float(w.abs().sum(1).max()), float(b.abs().max()) if b.numel() else 0.0)


def classical_bound(model, other, example_inputs, input_bound=1.0) -> dict:
    """Classical parameter-Lipschitz bound, arXiv 2205.11874 (Theorem III.1), in the form
    recalled in the introduction of arXiv 2405.15006, for the change ``theta -> theta'``:

    ``||R_theta(x) - R_theta'(x)||_1 <= (W ||x||_inf + 1) W L^2 R^(L-1) ||theta - theta'||_inf``

    for a layered ReLU network with ``L`` affine layers ``x -> W_l x + b_l``, width ``W`` (most
    neurons in one layer, input included) and ``R >= 1`` bounding every layer's
    ``max(||W_l||_{inf->inf}, ||b_l||_inf)`` (largest row L1 norm) for both ``theta`` and
    ``theta'``; ``||theta - theta'||_inf`` is the largest entry-wise change. Read off the graph:
    ``L`` = conv/linear layers on the longest path, ``W`` = :attr:`GraphFacts.width`, layers as
    :func:`_layers` (frozen BatchNorm folded). The theorem is proved for layered networks (a
    conv is a fully-connected layer with shared weights); for DAGs (residual adds,
    concatenations) it is the customary heuristic comparison. ``other``: module of the same
    architecture or ``{tensor name: replacement}``. Natural logs; ``log_bound`` is ``-inf``
    when nothing changes.
    """
    graph = capture(model, example_inputs)
    facts = graph_facts(model, example_inputs)
    before = _layers(graph, graph.with_derived(_named(model)))
    after = _layers(graph, graph.with_derived(_named(model, other)))
    radius = max([1.0] + [_layer_radius(w, b) for w, b in before + after])
    delta = max(max(float((w - w2).abs().max()), float((b - b2).abs().max()) if b.numel() else 0.0)
                for (w, b), (w2, b2) in zip(before, after))
    L, W = facts.affine_depth, facts.width
    log_bound = (math.log(W * input_bound + 1) + math.log(W) + 2 * math.log(L)
                 + (L - 1) * math.log(radius) + (math.log(delta) if delta > 0 else -math.inf))
    return {"L": L, "W": W, "R": radius, "delta_inf": delta, "input_bound": input_bound,
            "log_bound": log_bound}


def classical_vs_path(model, other, example_inputs, input_bound=1.0) -> dict:
    """Both certificates on ``||R_theta(x) - R_theta'(x)||_1`` for ``||x||_inf <= input_bound``:
    the path-metric one ``max(input_bound, 1) * d(theta, theta')`` (arXiv 2405.15006, with
    ``d`` from :func:`pathmetric.path_metric`) and :func:`classical_bound`; ``log_ratio`` =
    ln(classical / path-metric) (positive: the path-metric bound is sharper; ``inf`` when the
    path-metric is 0, e.g. only weights on no path were removed)."""
    from . import path_metric

    classical = classical_bound(model, other, example_inputs, input_bound)
    metric = path_metric(model, other, example_inputs)
    log_path = math.log(max(input_bound, 1.0)) + (math.log(metric) if metric > 0 else -math.inf)
    if math.isinf(classical["log_bound"]) and math.isinf(log_path):
        log_ratio = math.nan          # no change at all: nothing to compare
    else:
        log_ratio = classical["log_bound"] - log_path
    return {**{f"classical_{k}": v for k, v in classical.items()},
            "path_metric": metric, "log_path_bound": log_path, "log_ratio": log_ratio}


# --------------------------------------------------------------------------- symmetries

def _channel_groups(graph, bn_diagonal: bool) -> list:
    """Channel counts of the groups of hidden channels that can be transformed jointly.

    A group is a set of layer outputs tied by ``add``/``sub`` (a residual stream) and by the
    channel-wise ops between them. It counts when every layer that creates it has parameters on
    its incoming edges (conv, linear, BatchNorm), and everything it feeds either has parameters
    (which absorb the inverse transform) or commutes with it: it must not reach the output, the
    input, a reduction over channels, or a concatenation whose result does.
    ``bn_diagonal``: BatchNorm ties its input and output channels (true for permutations; for
    rescalings a BatchNorm layer is its own neuron).
    """
    parent: dict = {}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    space: dict = {}
    channels: dict = {}
    parametrised: dict = {}
    children: dict = {}
    bad: set = set()

    def new(i, count, param):
        parent[i], channels[i], parametrised[i] = i, count, param
        space[i] = i

    inputs = graph.inputs
    for i, node in enumerate(graph.nodes):
        ins = [space[v.node] for v in values_read(node)]
        if i in inputs:
            new(i, None, False)
            continue
        batch_norm = fact(node, "channel_affine", "whether it is a frozen per-channel affine map")
        if fact(node, "affine", "whether it is a conv/linear-like layer") or \
                batch_norm and not bn_diagonal:
            count = node.shape[fact(node, "channel_dim", "the dim of its output holding channels")]
            groups = node.roles.get("groups", 1)
            in_count = graph.shape_of(node.roles["x"])[1] if groups != 1 else None
            if groups != 1 and bn_diagonal and groups == count == in_count:
                space[i] = ins[0]            # depthwise: a diagonal map of channels
            else:
                new(i, count, True)
                if groups != 1 and bn_diagonal:
                    bad.update((find(ins[0]), i))  # grouped: permutations only within groups
        elif batch_norm or fact(node, "transforms_through",
                                "whether channel transforms pass through it"):
            root = find(ins[0])          # a residual add ties the groups of its inputs
            for other in ins[1:]:
                other = find(other)
                if other != root:
                    parent[other] = root
                    parametrised[root] = parametrised[root] and parametrised[other]
            space[i] = root
        elif fact(node, "channels", "how it maps channels") == "reduce" and \
                _keeps_channels(node.roles["dim"], len(graph.shape_of(node.roles["x"]))):
            space[i] = ins[0]
        else:                                 # cat, stack, reductions over channels
            new(i, None, False)
            children[i] = ins
            if node.rule.channels != "join":
                bad.update(ins)
    bad.update(space[v.node] for v in graph.outputs)
    bad = {find(b) for b in bad}
    changed = True
    while changed:                            # a bad concatenation spoils what it concatenates
        changed = False
        for composite, parts in children.items():
            if find(composite) in bad:
                for part in parts:
                    if find(part) not in bad:
                        bad.add(find(part))
                        changed = True
    roots = {find(s) for s in parent}
    return [channels[r] for r in sorted(roots) if r not in bad and parametrised[r]]


def _keeps_channels(dim, ndim) -> bool:
    """Whether a reduction over ``dim`` of an ``ndim``-dimensional tensor keeps dim 1."""
    if dim is None:
        return False
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return 1 not in {d % ndim for d in dims}


def symmetries(model, example_inputs) -> dict:
    """Rescaling and permutation symmetries of the architecture (arXiv 2305.11417).

    Permutations: each group of ``n_g`` hidden channels (:func:`_channel_groups`) can be
    permuted jointly, giving a finite group of order ``prod_g n_g!`` of parameter changes that
    leave the function unchanged; a covering of the parameter set at any scale covers the
    function class with ``|G|`` times fewer balls, i.e. it removes ``ln|G| = sum_g ln(n_g!)``
    (``permutation_log_factor``, natural log) from the log covering number.
    Rescalings: every hidden channel of a conv/linear/BatchNorm layer whose group counts can be
    multiplied by ``lambda > 0`` and its outgoing weights by ``1/lambda`` (ReLU is positively
    homogeneous): a continuous group of dimension ``H`` (``rescaling_dims``), which lowers the
    dimension entering the covering number from ``parameters`` to ``parameters - H``, removing
    ``H ln(1/eps)`` (up to constants) from the log covering number at scale ``eps``.
    """
    graph = capture(model, example_inputs)
    perm_groups = _channel_groups(graph, bn_diagonal=True)
    rescale_groups = _channel_groups(graph, bn_diagonal=False)
    parameters = sum(p.numel() for n, p in model.named_parameters() if n in graph.uses)
    return {"parameters": parameters,
            "rescaling_dims": sum(rescale_groups),
            "permutation_groups": len(perm_groups),
            "permutation_log_factor": sum(math.lgamma(n + 1) for n in perm_groups),
            "permutation_log10_order": sum(math.lgamma(n + 1) for n in perm_groups) / math.log(10)}


