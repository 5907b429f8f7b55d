"""Certificates for deployed integer models: quantized weights AND activations (docs/design.md,
"The deployed integer model").

A deployed model ``Rq`` runs the float model's graph with dequantized weights ``theta'`` and
replaces, at each quantization point ``t``, the value ``z`` by ``Q_t(z)``. Where ``z`` stays in the
grid's range, ``|Q_t(z) - z| <= s_t / 2`` per element, and the downstream Lipschitz constant of a
neuron ``v`` towards the L1 output is its downstream path mass ``G(v) = dN/da_v`` (one backward of
the L1 lifted network of ``theta'``). Injecting the errors one point at a time,

    ||R_theta(x) - Rq(x)||_1 <= max(||x||_inf, 1) * d(theta, theta') + sum_t sum_v (s_v / 2) G(v)

for every ``x`` on which no point saturates; a sample on which one does gets ``inf``. The weight
term compares the float model folded as the backend folded it (a BatchNorm after a layer folded
into the layer) with the weights the backend dequantizes, on the quantized model's graph. The
bound is for exact arithmetic of the dequantized network (float rounding of the deployed kernels
is not in it), which every result states, except where the model rounds to half precision (Intel
Neural Compressor's fp16/bf16 layers): a cast of an activation to float16 is a rounding point of
error ``u |z| + eta`` per element and a conv/linear layer computing in float16 adds ``gamma_n S +
(1 + gamma_n) n eta`` (:func:`_rounding_error`), both per sample, ``sum_v err_v G(v)``.
"""
from __future__ import annotations

import copy
import functools
import math
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from . import metric
from .core.algebras import NormLifting, total_of
from .core.capture import as_tuple
from .core.interpreter import named_tensors
from .core.ir import Graph, Node, Param, ParamView, Value, fact, values_read
from .core.replay import replay
from .core.rules import aten, batch_norm_scale, batch_norm_shift, lookup, quantization, structure
from .core.scaled import Scaled, scaled_sum, times_pow2, to_float
from .core.support import capture
from .errors import UnsupportedModelError
from .metric import certified_distance, log_round_up, round_up

ARITHMETIC = ("exact: the bound is for the dequantized network computed exactly; the rounding of "
              "the deployed float/integer kernels is not included")
ROUNDED = ("exact but the half-precision layers: the float16/bfloat16 casts and the rounding of "
           "the conv/linear layers computing in float16/bfloat16 are included (any summation "
           "order); the rounding of the other deployed float/integer kernels is not")
CHUNK = 64   # samples per walk of the quantized graph (saturation checks)
OBSERVING = ("the observers of {names} are on: the certificate is for the grids these "
             "fake-quantization modules hold now (as converting the model deploys them); the "
             "model's own forward would move them with each batch (disable_observer() runs it "
             "as certified)")


@dataclass(frozen=True)
class Point:
    """One quantization point of a captured graph: its ``key`` (``'<k>:<what it reads>'``), the
    index of its node, and its grid with ``scale`` and ``zero_point`` as float64 tensors
    broadcast to the point's shape (batch dimension 1), or None for a dynamic point (scale and
    zero point computed from the activation, per sample: :func:`_grids`)."""
    key: str
    node: int
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    quant_min: int
    quant_max: int

    @property
    def dynamic(self) -> bool:
        return self.scale is None


def _points(graph: Graph, model: nn.Module) -> list:
    """The quantization points of ``graph``, in order, with their grids read off ``model``."""
    resolve = graph.resolver(named_tensors(model))
    out: list = []
    for index, node in graph.operations():
        if node.rule.quantization != "point":
            continue
        grid = quantization.grid(node)
        shape = graph.nodes[index].shape
        if any(isinstance(v, Value) for v in (grid.scale, grid.zero_point)):
            if grid.axis is not None:
                raise _refusal(node, "a dynamic point with a scale per channel is not "
                                     "certified; use a per-tensor dynamic scale")
            scale = zero = None
        else:
            scale, zero = _grid_tensors(node, grid, shape, resolve(grid.scale),
                                        resolve(grid.zero_point))
        source = node.roles["x"]
        if not isinstance(source, Value) or source.node in graph.inputs:
            what = "input"
        else:
            what = graph.nodes[source.node].module or graph.nodes[source.node].rule_name
        out.append(Point(f"{len(out)}:{what}", index, scale, zero, grid.quant_min,
                         grid.quant_max))
    return out


def _grid_tensors(node, grid, shape, scale, zero):
    """The scale and zero point of a point as float64 tensors broadcast to ``shape``."""
    scale, zero = (torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in (scale, zero))
    if grid.axis is not None:
        view = [1] * len(shape)
        view[grid.axis] = -1
        scale, zero = scale.reshape(view), zero.reshape(view)
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise _refusal(node, f"its scale {scale.flatten()[:4].tolist()} is not positive and "
                             "finite")
    return scale.expand(shape), zero.expand(shape)


def _refusal(node: Node, why: str):
    return UnsupportedModelError(f"{node.rule_name} in '{node.module or '<model>'}': {why}",
                                 [(node.rule_name, node.module, why)])


@dataclass(frozen=True)
class Rounding:
    """A rounding to the narrower floating ``dtype`` in a deployed graph, at the node of index
    ``node``: a cast of an activation to ``dtype`` (``layer`` False: Intel Neural Compressor's
    half-precision layers cast their input), or a conv/linear layer computing in ``dtype``
    (``layer`` True). Its error is per sample (:func:`_rounding_error`)."""
    key: str
    node: int
    dtype: torch.dtype
    layer: bool


def _roundings(graph: Graph) -> list:
    """The rounding points of ``graph``, in order: every cast to a narrower floating dtype
    (:func:`~pathmetric.core.rules.structure.rounding`) and every conv/linear layer reading a
    value in that dtype. A value in a rounded dtype may only be cast (back) or read by such a
    layer: any other op computing in it is refused, its rounding is not certified."""
    out: list = []
    narrow: dict = {}   # node index -> the rounded dtype its value is in
    for index, node in graph.operations():
        dtypes = {narrow[v.node] for v in values_read(node) if v.node in narrow}
        dtype = structure.rounding(graph, node)
        name = str(dtype or node.dtype).removeprefix("torch.")
        if dtype is not None:
            source = graph.nodes[node.roles["x"].node]
            what = "input" if node.roles["x"].node in graph.inputs else (source.module
                                                                        or source.rule_name)
            out.append(Rounding(f"{len(out)}:{what} to {name}", index, dtype, False))
            narrow[index] = dtype
        elif node.rule.quantization == "cast":   # a value-preserving cast: back to float32
            if node.dtype in dtypes:
                narrow[index] = node.dtype
        elif dtypes:
            if not (fact(node, "affine", "whether it is a conv/linear-like layer")
                    and dtypes == {node.dtype}):
                raise _refusal(node, f"it computes in {name} (a value a cast rounded): the "
                                     "deployed certificate bounds the rounding of a conv/linear "
                                     "layer run in half precision and of casts only; cast back "
                                     "to float32 before this op")
            out.append(Rounding(f"{len(out)}:{node.module or node.rule_name} in {name}", index,
                                node.dtype, True))
            narrow[index] = node.dtype
    return out


def _rounding_error(r: Rounding, node: Node, resolve) -> tuple:
    """``(err, overflow)`` of the rounding ``r`` on one walk of the deployed graph: ``err`` bounds
    the error of each element of the node's output (float64, batch first), ``overflow`` says per
    sample whether some element may pass the largest value of ``r.dtype`` (``u`` half its
    ``eps``, ``eta`` half its subnormal spacing, round to nearest):

    - a cast of ``z``: ``|fl(z) - z| <= u |z| + eta``; overflow where ``|z|`` passes the largest
      value;
    - a layer: ``|fl(y) - y| <= gamma_n S + (1 + gamma_n) n eta``, ``gamma_n = (1 + u)^n - 1``,
      with ``S = |W'| |z'| + |b'|`` (the layer on absolute values, in float64) and ``n`` one
      more than the terms of its sum (the layer on ones): at most ``n`` roundings ``fl(a op b)
      = (a op b)(1 + d) + e``, ``|d| <= u``, ``|e| <= eta``, on the way of each term, whether
      the sum runs in ``dtype`` in any order or in a wider accumulator rounded once to ``dtype``
      at the end; overflow where ``S`` plus that error, which bounds every partial sum, passes
      the largest value.
    """
    info = torch.finfo(r.dtype)
    u, eta, top = info.eps / 2, info.smallest_normal * info.eps / 2, info.max
    if r.layer:
        def on(f):
            """The layer on ``f`` of each of its tensors (input, weight, bias)."""
            args, kwargs = node.call(lambda leaf: f(t) if isinstance(t := resolve(leaf),
                                                                     torch.Tensor) else t)
            return node.func(*args, **kwargs)
        s = on(lambda t: t.detach().double().abs())
        n = on(lambda t: torch.ones_like(t, dtype=torch.float64)) + 1
        gamma = torch.expm1(n * math.log1p(u))
        err = gamma * s + (1 + gamma) * n * eta
        outside = ~(s + err <= top)
        err = err * (1 + (n + 4) * torch.finfo(torch.float64).eps)   # S and err in float64
    else:
        z = resolve(node.roles["x"]).detach().double()
        err = (u * z.abs() + eta) * (1 + torch.finfo(torch.float64).eps)
        outside = ~(z.abs() <= top)
    return err, outside.reshape(outside.shape[0], -1).any(dim=1)


def _up(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded up by one step where it is positive (0 stays 0)."""
    return torch.where(t > 0, torch.nextafter(t, torch.full_like(t, math.inf)), t)


def _downstream_of(graph: Graph, indices) -> set:
    """The indices of the nodes that read, directly or not, the value of a node of ``indices``."""
    users, seen, todo = graph.users(), set(), list(indices)
    while todo:
        for j in users[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


class _Downstream(NormLifting):
    """The L1 lifted network with an input that requires grad, so that every point's lifted
    value (even one on the model input) has a gradient ``dN/da``."""

    def inputs(self, shape):
        return (Scaled(torch.ones(shape, dtype=self.dtype, device=self.device,
                                  requires_grad=True), 0),)


def _downstream(graph: Graph, model: nn.Module, points, overrides=None):
    """``{point key: (mantissa tensor, exponent)}`` with ``G = mantissa * 2**exponent`` the
    downstream path mass of every neuron of the point, and the relative error bound of ``G``
    (forward and backward of the lifted network, each within the a priori bound of one pass)."""
    ev = _Downstream(graph, model, q=1.0, overrides=overrides, track=True)
    keep = {p.node for p in points}
    with torch.inference_mode(False), torch.enable_grad():
        outputs, kept = ev.run(keep)
        for value in kept.values():
            value[0].m.retain_grad()
        total = total_of(outputs)
        total.m.backward()
    masses = {}
    for p in points:
        value = kept[p.node][0]
        grad = value.m.grad if value.m.grad is not None else torch.zeros_like(value.m)
        masses[p.key] = (grad.detach().double(), total.e - value.e)
    return masses, math.expm1(2.0 * math.log1p(ev.relative_error()))


#: the output range ``(low, high)`` of ReLU and the clamps, from a node's roles (None: unbounded
#: that side)
_OUTPUT_RANGES = {
    "relu": lambda roles: (0.0, None),
    "relu6": lambda roles: (0.0, 6.0),
    "hardtanh": lambda roles: (roles["min_val"], roles["max_val"]),
    "clamp": lambda roles: (roles["min"], roles["max"]),
    "clamp_min": lambda roles: (roles["min"], None),
    "clamp_max": lambda roles: (None, roles["max"]),
}


class _Magnitudes(NormLifting):
    """The L1 lifted network of ``theta'`` (all-ones input, biases included) with the rounding
    of every point: the lifted value after a static point ``t`` is ``A(v) + s_v / 2``, after a
    dynamic one ``A(v) + max_u A(u) / (qmax - qmin) + eps / 2`` (``s_t(x) / 2 <= max_u |z_u| /
    (qmax - qmin)``, or the float32 ``eps`` floor of the scale), so that ``|z_v(x)| <=
    max(||x||_inf, 1) * A(v)`` holds for the value a point reads in the deployed model.
    ``before[key]`` is ``A(v)`` of the value point ``key`` reads, as float64 (batch dimension 1)."""

    def __init__(self, graph, model, points, overrides=None):
        super().__init__(graph, model, q=1.0, overrides=overrides)
        self.points = {id(graph.nodes[p.node]): p for p in points}
        self.before: dict = {}

    def fixed(self, x, fn, *, terms):
        out = super().fixed(x, fn, terms=terms)
        point = self.points.get(id(self.node))
        if point is None:
            return out
        value = out[0]
        magnitude = (times_pow2(value.m.detach(), value.e) if bool((value.m != 0).any())
                     else torch.zeros_like(value.m)).cpu()   # beyond float64: inf, radius 0
        self.before[point.key] = magnitude
        if point.dynamic:
            step = (float(magnitude.amax()) / (point.quant_max - point.quant_min)
                    + torch.finfo(torch.float32).eps / 2)
        else:
            step = point.scale / 2
        self.summed_terms += 1
        rounding = torch.as_tensor(step, dtype=value.m.dtype).to(value.m.device)
        return (scaled_sum([value, Scaled.normalized(rounding.expand_as(value.m).clone())]),)


def _source_range(graph: Graph, point: Point) -> tuple:
    """``(low, high)``: the output range of the op whose value ``point`` reads when it is ReLU or
    a clamp (:data:`_OUTPUT_RANGES`), None on an unbounded side."""
    source = graph.nodes[point.node].roles["x"]
    if not isinstance(source, Value) or source.item is not None or source.node in graph.inputs:
        return None, None
    node = graph.nodes[source.node]
    known = _OUTPUT_RANGES.get(aten.canonical(node.rule_name))
    return (None, None) if known is None else known(node.roles)


def _safe_radii(graph: Graph, model: nn.Module, points, overrides=None) -> dict:
    """``{point key: r}``: every input with ``||x||_inf <= r`` leaves the value of the point
    inside its grid ``[s (qmin - zp), s (qmax - zp)]``, from ``|z_v(x)| <= max(||x||_inf, 1) *
    A(v)``: ``r = min_v d_v / A(v)``, rounded down (the a priori relative error of ``A``), with
    ``d_v`` the distance from 0 of the nearer end of the grid, or of the upper (lower) end alone
    where the op before the point (ReLU, a clamp) cannot go below (above) the other one. 0 where
    even ``||x||_inf <= 1`` is not shown safe; ``inf`` at a dynamic point (its grid spans the
    tensor) and where both ends are out of the op's range (ReLU6 into a ``[0, 6]`` grid)."""
    ev = _Magnitudes(graph, model, points, overrides=overrides)
    with torch.no_grad():
        ev.run()
    inflation = (1 + ev.relative_error()) * (1 + 4 * torch.finfo(torch.float64).eps)
    radii = {}
    for p in points:
        if p.dynamic:
            radii[p.key] = math.inf
            continue
        lower, upper = p.scale * (p.quant_min - p.zero_point), p.scale * (p.quant_max - p.zero_point)
        low, high = _source_range(graph, p)
        lower_safe = low is not None and bool((lower <= low).all())
        upper_safe = high is not None and bool((upper >= high).all())
        if lower_safe and upper_safe:
            radii[p.key] = math.inf
            continue
        reach = (upper if lower_safe else -lower if upper_safe
                 else torch.minimum(upper, -lower))
        if bool((reach <= 0).any()):
            radii[p.key] = 0.0
            continue
        magnitude = ev.before[p.key].double() * inflation
        ratio = torch.where(magnitude > 0, reach / magnitude, torch.full_like(reach, math.inf))
        r = math.nextafter(float(ratio.amin()), 0.0)
        radii[p.key] = r if r >= 1.0 else 0.0
    return radii


def _activation_terms(points, masses, error) -> tuple[dict, float]:
    """``{key: Scaled sum_v (s_v / 2) G(v)}`` and the relative error bound of the terms (that of
    ``G`` and of the float64 products and sums)."""
    terms = {}
    count = 0
    for p in points:
        grad, exponent = masses[p.key]
        if p.dynamic:   # (s / 2) * sum_v G(v), s per sample: the sum of G, times s / 2 later
            terms[p.key] = Scaled(grad.cpu().sum() / 2, exponent)
        else:
            terms[p.key] = Scaled((p.scale / 2 * grad.cpu()).sum(), exponent)
        count += grad.numel()
    u = torch.finfo(torch.float64).eps / 2
    n = count + len(points) + 4
    return terms, (1 + error) * (1 + 2 * n * u / (1 - n * u)) - 1


def downstream_masses(model: nn.Module, example_inputs) -> dict:
    """``{point key: G}``: for every quantization point of ``model`` (a model with fake-quant or
    PT2E quantize ops in its forward), the downstream path mass ``G(v) = sum over paths p from v
    to an output of prod_{e in p} |w_e|`` of each of its neurons (shape of the point without the
    batch dimension), from one forward and one backward of the L1 lifted network."""
    model = _frozen(model, as_tuple(example_inputs))
    graph = capture(model, example_inputs)
    points = _points(graph, model)
    masses, _ = _downstream(graph, model, points)
    return {key: times_pow2(m[0], e) for key, (m, e) in masses.items()}


# ---------------------------------------------------------------- weights quantized in forward

_FROZEN: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _frozen(quantized: nn.Module, inputs) -> nn.Module:
    """``quantized``, or, when it quantizes a weight at every call, a copy where that weight is
    quantized once, so that the layer reads the weight ``theta'`` the model uses:

    - a ``GraphModule`` that quantizes or casts a constant (Intel Neural Compressor's converted
      graphs: ``quantize_per_channel(weight)`` then ``dequantize_per_channel``; ``weight.to(
      float16)`` and ``bias.to(float16)`` of a layer run in half precision): the quantize or cast
      is computed once into a buffer (as ``convert_pt2e(fold_quantize=True)`` does), which the
      layer reads: the values the graph uses;
    - a fake-quantization module applied to a parameter or buffer (``torch.ao`` QAT layers'
      ``weight_fake_quant``, the weight fake-quants of ``prepare_qat_pt2e`` graphs): the tensor
      holds its fake-quantized value (the module's grid, observer off:
      :func:`~pathmetric.core.rules.quantization.module_forward`) and the module is the identity.

    The copy is kept while the model's parameters and buffers are unchanged."""
    constant = [n for n in quantized.graph.nodes if n.op == "call_function"
                and getattr(lookup(n.target), "quantization", None) in ("point", "cast")
                and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "get_attr"] \
        if isinstance(quantized, torch.fx.GraphModule) else []
    if not constant and not any(quantization.module_kind(type(m)) == "fake_quantize"
                                for m in quantized.modules()):
        return quantized
    versions = tuple((id(t), t._version) for t in named_tensors(quantized).values())
    if quantized in _FROZEN and _FROZEN[quantized][0] == versions:
        return _FROZEN[quantized][1]
    frozen = copy.deepcopy(quantized)
    if isinstance(frozen, torch.fx.GraphModule) and constant:
        _fold_constant_quantize(frozen, {c.name for c in constant})
    _fold_weight_fake_quantize(frozen, inputs)
    _FROZEN[quantized] = (versions, frozen)
    return frozen


def _fold_constant_quantize(frozen: torch.fx.GraphModule, names: set):
    """Each quantize or cast node of ``names`` (on a constant) computed once into a buffer."""
    for k, node in enumerate(n for n in frozen.graph.nodes if n.op == "call_function"
                             and n.name in names):
        args = torch.fx.node.map_arg(node.args, lambda a: functools.reduce(  # type: ignore
            getattr, str(a.target).split("."), frozen) if a.op == "get_attr" else a)
        name = f"_pathmetric_frozen_weight_{k}"
        with torch.no_grad():
            frozen.register_buffer(name, node.target(*args, **node.kwargs))
        with frozen.graph.inserting_before(node):
            node.replace_all_uses_with(frozen.graph.get_attr(name))
        frozen.graph.erase_node(node)
    frozen.recompile()


def _fold_weight_fake_quantize(frozen: nn.Module, inputs):
    """Every fake-quantization module of ``frozen`` (a copy) that one run on ``inputs`` calls on
    a parameter or buffer: the tensor replaced by its fake-quantized value, the module by the
    identity (the run uses the modules' rule forwards: no observer updates a grid)."""
    state = {id(t): t for t in named_tensors(frozen).values()}
    calls: dict = {}
    replaced = []
    for name, module in frozen.named_modules():
        module.training = False
        forward = quantization.module_forward(module)
        if quantization.module_kind(type(module)) == "fake_quantize":
            def watched(x, name=name, forward=forward or (lambda t: t)):
                if id(x) in state:
                    calls.setdefault(name, (x, forward))
                return forward(x)
            forward = watched
        if forward is not None:
            module.forward = forward
            replaced.append(module)
    with torch.no_grad():
        frozen(*[t[:1] for t in inputs])
    for module in replaced:
        del module.forward
    modules = dict(frozen.named_modules())
    for name, (tensor, forward) in calls.items():
        with torch.no_grad():
            tensor.copy_(forward(tensor))
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent], leaf, nn.Identity())


# ---------------------------------------------------------------- the float model, as deployed

def _operations(graph: Graph, quantization_too: bool) -> list:
    """The operations of ``graph`` but the identity maps (the rules stating ``identity``:
    dropout in eval mode, which an export may drop), the casts (the identity, or a rounding point
    of the deployed model) and, if ``quantization_too``, the quantize, dequantize and grid
    computations (the rules stating a ``quantization`` part)."""
    return [(i, n) for i, n in graph.operations() if not n.rule.identity
            and n.rule.quantization != "cast"
            and not (quantization_too and n.rule.quantization is not None)]


def _reference_roles(graph: Graph, model: nn.Module, node: Node, folded) -> dict:
    """The parametrised roles of the float model's ``node``: role -> tensor (None where absent),
    with the frozen BatchNorm node ``folded`` (or None) folded into it, as backends fold it:
    weight ``W s`` along its output channels, bias ``b s + t``, computed in float64 (the
    product of a float32 weight and a float64 scale is rounded once, at 2^-53 relative)."""
    resolve = graph.resolver(named_tensors(model))
    roles = {role: resolve(value) for role, value in node.roles.items()
             if not isinstance(value, Value)}
    roles = {role: v.detach() if isinstance(v, torch.Tensor) else v for role, v in roles.items()}
    if folded is None:
        return roles
    bn = {role: None if (t := resolve(folded.roles.get(role))) is None else t.double()
          for role in ("running_mean", "running_var", "weight", "bias")}
    eps = folded.roles.get("eps", 1e-5)
    scale = batch_norm_scale(bn["running_var"], bn["weight"], eps).detach()
    shift = batch_norm_shift(bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"],
                             eps).detach()
    dim = fact(node, "channel_params", "which parameter slices belong to an output channel")
    weight = roles["weight"].double()
    view = [1] * weight.dim()
    view[dim["weight"]] = -1
    roles["weight"] = weight * scale.reshape(view)
    bias = roles.get("bias")
    roles["bias"] = shift if bias is None else bias.double() * scale + shift
    return roles


def _matched(float_graph: Graph, graph: Graph) -> list:
    """Pairs ``(float node index, quantized node index, folded BatchNorm index or None)`` of the
    operations of the two graphs, quantization points and dropouts aside; a BatchNorm right
    after a float layer is folded into it when the quantized graph has no BatchNorm there."""
    mine = _operations(float_graph, quantization_too=False)
    theirs = _operations(graph, quantization_too=True)
    after = float_graph.batch_norm_after()
    layer_of = {j: float_graph.layers()[name].node for name, j in after.items()}
    pairs, folded, k = [], {}, 0
    for i, node in mine:
        if k < len(theirs) and aten.canonical(node.rule_name) == aten.canonical(theirs[k][1].rule_name):
            pairs.append([i, theirs[k][0], None])
            k += 1
        elif i in layer_of and pairs and pairs[-1][0] == layer_of[i]:
            pairs[-1][2] = i
            folded[i] = True
        else:
            other = theirs[k][1] if k < len(theirs) else None
            found = (f"{other.rule_name} in '{other.module or '<model>'}'" if other is not None
                     else "the end of the graph")
            raise ValueError(
                f"the quantized model is not the float model deployed: the float model's "
                f"{node.rule_name} in '{node.module or '<model>'}' meets {found} (a BatchNorm is "
                "matched only when folded into the layer right before it)")
    if k != len(theirs):
        extra = theirs[k][1]
        raise ValueError(f"the quantized model has an operation the float model lacks: "
                         f"{extra.rule_name} in '{extra.module or '<model>'}'")
    return [tuple(p) for p in pairs]


def _renamed(node: Node, renames: dict) -> Node:
    """A copy of ``node`` whose role values ``renames`` maps (by identity) to new references."""
    def swap(leaf):
        for old, new in renames.values():
            if leaf is old:
                return new
        return leaf
    args, kwargs = node.call(swap)
    roles = {role: renames[role][1] if role in renames else value
             for role, value in node.roles.items()}
    return Node(node.rule_name, node.func, args, kwargs, node.module, node.module_type, node.shape,
                inplace=node.inplace, dtype=node.dtype, roles=roles, rule=node.rule)


def _deployed_pair(model: nn.Module, quantized: nn.Module, inputs):
    """The quantized model's graph with every parametrised role of its operations renamed
    ``'<node>.<role>'``, and the two tensor sets on it: the float model's (folded as the backend
    folded it) and the quantized model's (its dequantized weights ``theta'``)."""
    float_graph = capture(model, inputs)
    graph = capture(quantized, inputs)
    resolve = graph.resolver(named_tensors(quantized))
    base = named_tensors(quantized)
    theta, theta_q = dict(base), dict(base)
    nodes = list(graph.nodes)
    for i, j, bn in _matched(float_graph, graph):
        reference = _reference_roles(float_graph, model, float_graph.nodes[i],
                                     None if bn is None else float_graph.nodes[bn])
        node, renames = graph.nodes[j], {}
        for role, value in node.roles.items():
            if isinstance(value, (Value, int, float, bool, str, tuple, list)) or value is None:
                continue
            deployed = resolve(value)
            if not isinstance(deployed, torch.Tensor):
                continue
            name = f"{j}.{role}"
            mine = reference.get(role)
            if mine is None:   # a bias the float layer lacks is a zero bias
                mine = torch.zeros_like(deployed)
            if not isinstance(mine, torch.Tensor) or tuple(mine.shape) != tuple(deployed.shape):
                raise ValueError(f"'{node.module or '<model>'}' ({node.rule_name}): its {role} has "
                                 f"shape {tuple(deployed.shape)} in the quantized model and "
                                 f"{getattr(mine, 'shape', mine)} in the float model")
            theta[name] = mine.to(deployed.device)   # (each pass reads them in its dtype)
            theta_q[name] = deployed.detach()
            renames[role] = (value, Param(name))
        missing = [role for role, v in reference.items() if isinstance(v, torch.Tensor)
                   and node.roles.get(role) is None and bool((v != 0).any())]
        if missing:
            raise ValueError(f"'{node.module or '<model>'}' ({node.rule_name}): the quantized model "
                             f"drops the float model's {missing}")
        nodes[j] = _renamed(node, renames) if renames else node
    used: dict = {}
    for node in nodes:
        for leaf in node.roles.values():
            if isinstance(leaf, (Param, ParamView)):
                used[leaf.name] = used.get(leaf.name, 0) + 1
    paired = Graph(nodes, graph.outputs, graph.input_shapes, tuple(used), used,
                   derived=graph.derived, head=graph.head, head_outputs=graph.head_outputs)
    return graph, paired, theta, theta_q


# ---------------------------------------------------------------- per-sample saturation

def _point_inputs(graph: Graph, model: nn.Module, inputs, points, roundings=()) -> dict:
    """``{point key: (z, scale, zero point)}``: the value each point quantizes, and its grid, when
    the captured graph of the quantized model runs on ``inputs`` (upstream points quantized, as
    deployed: :func:`~pathmetric.core.replay.replay`); ``{rounding key: (err, overflow)}`` of
    each rounding on that run (:func:`_rounding_error`)."""
    wanted = {p.node: p.key for p in points}
    rounded = {r.node: r for r in roundings}
    out = {}

    def record(index, node, resolve):
        if index in wanted:
            grid = quantization.grid(node)
            out[wanted[index]] = (resolve(node.roles["x"]), resolve(grid.scale),
                                  resolve(grid.zero_point))
        if index in rounded:
            out[rounded[index].key] = _rounding_error(rounded[index], node, resolve)
    with torch.no_grad():
        replay(graph, model, inputs, before=record)
    return out


def _walks(graph: Graph, model: nn.Module, inputs, points, roundings=()):
    """``(rows, values)`` pairs of :func:`_point_inputs`: walks of ``CHUNK`` samples at a time
    (the walk holds every activation of its samples), or, when a point is dynamic (its scale
    computed from the tensor it quantizes), one walk per sample, so that every scale is the one
    the model computes on that sample alone."""
    step = 1 if any(p.dynamic for p in points) else CHUNK
    for i in range(0, inputs[0].shape[0], step):
        rows = slice(i, i + step)
        yield rows, _point_inputs(graph, model, [t[rows] for t in inputs], points, roundings)


def _saturated(point: Point, z: torch.Tensor, scale, zero) -> torch.Tensor:
    """Per sample: whether some element of ``z`` lies outside the grid (``scale``, ``zero``,
    broadcast to ``z``) widened by half a step, where ``|Q(z) - z| <= s / 2`` fails (borderline
    elements count as saturated)."""
    u = z.detach().double().cpu() / scale + zero
    slack = 1e-9 * (u.abs() + 1)
    outside = (u > point.quant_max + 0.5 - slack) | (u < point.quant_min - 0.5 + slack)
    return outside.reshape(outside.shape[0], -1).any(dim=1)


# ---------------------------------------------------------------- the certificate

@dataclass
class DeploymentReport:
    """The certificate of a deployed model on a batch (:func:`deployment_report`).

    ``bound[i]`` certifies ``||R_theta(x_i) - Rq(x_i)||_1`` (``inf`` where a point saturates on
    sample ``i``; ``log_bound`` is its natural log, finite at any depth where the sample is
    certified). ``weight_term`` is ``d(theta, theta')`` (multiplied per sample by
    ``max(||x_i||_inf, 1)``), ``activation_terms`` the per-point ``sum_v (s_v / 2) G(v)`` and
    ``activation_term`` their sum (rounded up), over the static points; ``dynamic_term[i]`` the
    term of the dynamic points on sample ``i`` (``(s_t(x_i) / 2) sum_v G(v)``, the scale of
    each computed from sample ``i`` alone: the model run on one sample); ``weight_share`` /
    ``activation_share`` the shares of the two in the bound of the certified samples (mean);
    ``rounding_term[i]`` the term of the roundings to half precision on sample ``i`` (a cast of
    an activation to float16/bfloat16, ``sum_v (u |z_v| + eta) G(v)``, and a conv/linear layer
    computing in it, ``sum_v (gamma_n S_v + (1 + gamma_n) n eta) G(v)``: :func:`_rounding_error`), per
    rounding in ``rounding_terms``, and ``rounding_share`` its share;
    ``saturated`` the per-sample flags and ``saturated_points`` how many samples each point
    saturates on (a rounding overflowing its dtype saturates too). ``safe_radius[key]`` is the
    input radius ``r`` such that no ``x`` with ``||x||_inf <= r`` saturates the point (``inf`` at
    a dynamic point and where a clamp bounds the value inside the grid; 0 where ``||x||_inf <=
    1`` is not shown safe, and at a point downstream of a rounding to half precision),
    ``safe_input_radius`` its minimum over the points. ``arithmetic`` says which arithmetic the
    bound is for.
    """
    bound: torch.Tensor
    log_bound: torch.Tensor
    weight_term: float
    log_weight_term: float
    activation_term: float
    log_activation_term: float
    activation_terms: dict
    saturated: torch.Tensor
    saturated_points: dict
    weight_share: float
    activation_share: float
    dynamic_term: torch.Tensor
    rounding_term: torch.Tensor
    rounding_terms: dict = field(default_factory=dict)
    rounding_share: float = 0.0
    safe_radius: dict = field(default_factory=dict)
    safe_input_radius: float = math.inf
    arithmetic: str = ARITHMETIC
    notes: list = field(default_factory=list)

    @property
    def saturated_count(self) -> int:
        return int(self.saturated.sum())


def has_quantization_points(model: nn.Module, example_inputs) -> bool:
    """Whether the captured graph of ``model`` has a quantization point (a deployed model); False
    when ``model`` cannot be captured, so that the pair's refusal names the first model's
    reason first, as :func:`pathmetric.path_metric` does."""
    if _wrapped_report(model) is not None:
        return True
    _refuse_wrappers(model)
    try:
        graph = capture(_frozen(model, as_tuple(example_inputs)), example_inputs)
    except UnsupportedModelError:
        return False
    return graph.quantized()


def deployment_report(model: nn.Module, quantized: nn.Module, x) -> DeploymentReport:
    """The certificate of ``quantized`` (the float ``model`` deployed: fake-quant or PT2E
    quantize/dequantize points in its forward, weights dequantized as its backend does) on the
    batch ``x``: per sample ``max(||x||_inf, 1) * d(theta, theta') + sum_t sum_v (s_v / 2)
    G_theta'(v)`` plus, at each rounding to half precision, ``sum_v err_v(x) G_theta'(v)``
    (:func:`_rounding_error`), rounded up, ``inf`` for a sample on which a point saturates or a
    value overflows the half-precision dtype. A model a
    framework wrapped goes to the report its adapter registered (:func:`register_wrapped`)."""
    inputs = as_tuple(x)
    if any(t.dim() == 0 for t in inputs):
        raise ValueError("deployment_report needs inputs with a batch dimension")
    if (wrapped_report := _wrapped_report(quantized)) is not None:
        return wrapped_report(model, quantized, x)
    _refuse_wrappers(quantized)
    observing = [name for name, m in quantized.named_modules()
                 if quantization.module_kind(type(m)) == "fake_quantize"
                 and bool(m.observer_enabled[0])]
    quantized = _frozen(quantized, inputs)
    graph, paired, theta, theta_q = _deployed_pair(model, quantized, inputs)
    points = _points(graph, quantized)
    roundings = _roundings(graph)
    parts, error = certified_distance(paired, theta, theta_q)
    weight, log_weight = (round_up(sum(to_float(float(p.m), p.e) for p in parts), error),
                          log_round_up(parts, error))
    masses, g_error = _downstream(paired, quantized, points + roundings, overrides=theta_q)
    terms, t_error = _activation_terms(points, masses, g_error)
    radii = _safe_radii(paired, quantized, points, overrides=theta_q)
    after = _downstream_of(graph, [r.node for r in roundings])
    radii.update({p.key: 0.0 for p in points if p.node in after})
    total = [t for p in points if not p.dynamic for t in [terms[p.key]]]
    activation = round_up(to_float(float(scaled_sum(total).m), scaled_sum(total).e),
                          t_error) if total else 0.0
    log_activation = log_round_up(total, t_error) if total else -math.inf
    n = inputs[0].shape[0]
    saturated = torch.zeros(n, dtype=torch.bool)
    per_point = dict.fromkeys([*terms, *(r.key for r in roundings)], 0)
    dynamic = torch.zeros(n, dtype=torch.float64)   # sum of (s_t(x) / 2) sum_v G(v), per sample
    rounded = {r.key: torch.zeros(n, dtype=torch.float64) for r in roundings}
    for rows, values in _walks(graph, quantized, inputs, points, roundings):
        for p in points:
            z, scale, zero = values[p.key]
            if p.dynamic:
                dynamic[rows] += float(scale) * to_float(float(terms[p.key].m), terms[p.key].e)
                scale, zero = (torch.as_tensor(v, dtype=torch.float64) for v in (scale, zero))
            else:
                scale, zero = p.scale[0], p.zero_point[0]
            flags = _saturated(p, z, scale, zero)
            per_point[p.key] += int(flags.sum())
            saturated[rows] |= flags
        for r in roundings:   # sum_v err_v G(v), per sample
            err, flags = values[r.key]
            grad, exponent = masses[r.key]
            moved = torch.where(grad > 0, err.cpu() * grad.cpu(), 0.0)
            rounded[r.key][rows] = torch.ldexp(moved.reshape(moved.shape[0], -1).sum(dim=1),
                                               torch.tensor(float(exponent)))
            per_point[r.key] += int(flags.sum())
            saturated[rows] |= flags
    dynamic = torch.nextafter(dynamic * (1 + t_error), torch.full_like(dynamic, math.inf))
    u = torch.finfo(torch.float64).eps / 2
    k = sum(masses[r.key][0].numel() for r in roundings) + len(roundings) + 4
    r_error = (1 + g_error) * (1 + 2 * k * u / (1 - k * u)) - 1
    rounded = {key: _up(t * (1 + r_error)) for key, t in rounded.items()}
    rounding = _up(sum(rounded.values(), torch.zeros(n, dtype=torch.float64)) * (1 + k * u))
    sup = torch.stack([t.detach().reshape(t.shape[0], -1).abs().amax(dim=1).double().cpu()
                       for t in inputs]).amax(dim=0).clamp(min=1.0)
    per_sample = torch.nextafter(activation + dynamic, torch.full_like(dynamic, math.inf))
    bound = _up(sup * weight + per_sample)
    if roundings:
        bound = _up(bound + rounding)
    log_bound = torch.logaddexp(torch.logaddexp(sup.log() + log_weight, rounding.log()),
                                torch.logaddexp(torch.full_like(sup, log_activation),
                                                dynamic.log()))
    log_bound = torch.nextafter(log_bound + 1e-12 * log_bound.abs(), torch.full_like(sup, math.inf))
    bound[saturated] = math.inf
    log_bound[saturated] = math.inf
    certified = ~saturated
    if bool(certified.any()) and math.isfinite(weight) and math.isfinite(activation):
        weight_part, rounding_part = sup[certified] * weight, rounding[certified]
        whole = weight_part + per_sample[certified] + rounding_part
        weight_share = float((weight_part / whole).nan_to_num(0.0).mean())
        rounding_share = float((rounding_part / whole).nan_to_num(0.0).mean())
    else:
        weight_share = rounding_share = math.nan
    return DeploymentReport(
        bound=bound, log_bound=log_bound, weight_term=weight, log_weight_term=log_weight,
        activation_term=activation, log_activation_term=log_activation,
        activation_terms={p.key: round_up(to_float(float(terms[p.key].m), terms[p.key].e),
                                          t_error) for p in points if not p.dynamic},
        dynamic_term=dynamic, rounding_term=rounding, rounding_terms=rounded,
        rounding_share=rounding_share, safe_radius=radii,
        safe_input_radius=min(radii.values(), default=math.inf),
        saturated=saturated, saturated_points=per_point, weight_share=weight_share,
        activation_share=1.0 - weight_share - rounding_share, arithmetic=ROUNDED if roundings
        else ARITHMETIC,
        notes=[OBSERVING.format(names=", ".join(observing[:3]) + (", ..." if len(observing) > 3
                                                                   else ""))] if observing else [])


#: ``(recognises(quantized) -> bool, report(model, quantized, x) -> DeploymentReport)`` pairs
#: that adapters register for the models their framework wrapped (:func:`register_wrapped`)
WRAPPED: list = []


def register_wrapped(recognises, report):
    """Certify the models ``recognises`` accepts (a framework's wrapped models) by ``report``,
    in :func:`deployment_report` and :func:`pathmetric.output_bound` (the NNI adapter registers
    its quantizers' wrapped models when imported)."""
    WRAPPED.append((recognises, report))


def _wrapped_report(quantized: nn.Module):
    return next((report for recognises, report in WRAPPED if recognises(quantized)), None)


def _refuse_wrappers(quantized: nn.Module):
    """Refuse a model some of whose modules run another module's forward (a compression
    framework's wrapper, NNI's ``ModuleWrapper``): its quantization lives in the wrapper's
    Python state, which capture does not read as quantization points."""
    for name, module in quantized.named_modules():
        forward = module.__dict__.get("forward")
        owner = getattr(forward, "__self__", None)
        if isinstance(owner, nn.Module) and owner is not module:
            why = (f"its forward is {type(owner).__module__}.{type(owner).__qualname__}.forward, "
                   "a wrapper whose quantization capture cannot read as points; for a model "
                   "NNI's quantizers wrapped import pathmetric.adapters.nni (it certifies them "
                   "by deployment_report_from_wrapped(model, wrapped, x)); for a pruned one, unwrap it "
                   "(pruner.unwrap_model()) or pass the sped-up model; else pass the model the "
                   "framework exports")
            raise UnsupportedModelError(f"'{name or '<model>'}' ({type(module).__name__}): {why}",
                                        [("forward", name, why)])


def output_bound(model: nn.Module, quantized: nn.Module, x) -> torch.Tensor:
    """Per-sample certified bound on ``||R_theta(x) - Rq(x)||_1`` for a deployed ``quantized``
    model (``inf`` where a point saturates): :attr:`DeploymentReport.bound`."""
    return deployment_report(model, quantized, x).bound


metric.DEPLOYED = (has_quantization_points, output_bound)


def gap_search(model: nn.Module, quantized: nn.Module, x: torch.Tensor, steps: int = 30,
               step: float = 0.02, seed: int = 0,
               box: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A search for inputs where the measured gap ``f(x) = ||R(x) - Rq(x)||_1`` is large, on
    ``quantized`` itself: a converted graph carries no gradient through its integer rounding, so
    the ascent is derivative-free (SPSA: ``g = (f(x + c u) - f(x - c u)) / (2c) * u`` with ``u``
    a random sign vector, then ``x <- x + c * sign(g)``, ``c = step * (hi - lo)``), projected on
    ``box = (lo, hi)`` (default: the range of the values of ``x``); from each sample of ``x``
    (clamped to the box), one sample at a time (graphs are exported at batch size 1). Returns
    every iterate (``steps + 1`` per sample, the start first) and its measured gap: evidence for
    :func:`deployment_report`, which certifies the iterates."""
    lo, hi = box if box is not None else (float(x.min()), float(x.max()))
    size = step * (hi - lo)
    generator = torch.Generator().manual_seed(seed)

    def gap(v):
        with torch.no_grad():
            return float((model(v) - quantized(v)).abs().sum())
    iterates, gaps = [], []
    for start in x.split(1):
        v = start.clamp(lo, hi)
        iterates.append(v)
        gaps.append(gap(v))
        for _ in range(steps):
            u = torch.randint(0, 2, v.shape, generator=generator).to(v.dtype) * 2 - 1
            slope = (gap((v + size * u).clamp(lo, hi)) - gap((v - size * u).clamp(lo, hi)))
            v = (v + size * torch.sign(torch.as_tensor(slope)) * u).clamp(lo, hi)
            iterates.append(v)
            gaps.append(gap(v))
    return torch.cat(iterates), torch.tensor(gaps, dtype=torch.float64)
