"""Brute-force path enumeration on tiny networks, independent of the engine.

A tiny network is a list of layer specs (a small DSL). From it we build both an ``nn.Module`` and
an explicit neuron DAG whose edge coefficients are read off PyTorch itself: the Jacobian of each
linear op (conv, pooling, interpolation) and max-pooling windows found by probing with one-hot
inputs. ``paths(dag)`` then enumerates every path with its product ``Phi_p``, so path-norms and
path-metrics are sums over an explicit list.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- the DSL and its nn.Module

class Block(nn.Module):
    """``x + f(x)`` (kind 'res') or ``cat([x, f(x)], 1)`` (kind 'cat')."""

    def __init__(self, kind, body):
        super().__init__()
        self.kind, self.body = kind, body

    def forward(self, x):
        y = self.body(x)
        return x + y if self.kind == "res" else torch.cat([x, y], dim=1)


class Op(nn.Module):
    """A parameter-free op ``fn`` of kind 'linear' (fixed coefficients), 'max' (max-pooling),
    'leaky' (``max(x, slope * x)``), 'identity' (ReLU written another way), 'clamp' (``slope`` =
    (low, high), either None), 'hardsigmoid', 'abs', 'maximum'/'minimum' (of ``x`` and ``x``
    rolled by one along the last axis), 'const' (``x + slope``) or 'pad' (constant ``slope`` on
    each side of the last axis)."""

    def __init__(self, fn, kind, slope=None):
        super().__init__()
        self.fn, self.kind, self.slope = fn, kind, slope

    def forward(self, x):
        return self.fn(x)


class Head(nn.Module):
    def __init__(self, features, outputs):
        super().__init__()
        self.fc = nn.Linear(features, outputs)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


class MatMul(nn.Module):
    """``x @ W`` with a parameter ``W`` along the last axis."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, n))

    def forward(self, x):
        return x @ self.weight


class AddBias(nn.Module):
    """``x + b`` with a per-channel parameter ``b``."""

    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c, 1))

    def forward(self, x):
        return x + self.bias


class LayerScale(nn.Module):
    """``x * gamma.view(1, -1, 1)``: a learnt per-channel scale, viewed in forward."""

    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1)


class ViewedBias(nn.Module):
    """``x + b[:, None]`` with a per-channel parameter ``b`` of shape (c,)."""

    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x + self.bias[:, None]


def make_op(spec) -> Op:
    kind = spec[0]
    if kind == "maxpool":
        _, k, s, p, d, ceil = spec
        return Op(lambda x: F.max_pool1d(x, k, s, p, d, ceil_mode=ceil), "max")
    if kind == "amax":
        return Op(lambda x: F.adaptive_max_pool1d(x, spec[1]), "max")
    if kind == "avgpool":
        _, k, s, p, ceil, incl = spec
        return Op(lambda x: F.avg_pool1d(x, k, s, p, ceil_mode=ceil, count_include_pad=incl),
                  "linear")
    if kind == "aavg":
        return Op(lambda x: F.adaptive_avg_pool1d(x, spec[1]), "linear")
    if kind == "upsample":
        _, scale, mode, align = spec
        return Op(lambda x: F.interpolate(x, scale_factor=scale, mode=mode,
                                          align_corners=align if mode == "linear" else None),
                  "linear")
    if kind == "leaky":
        return Op(lambda x: F.leaky_relu(x, spec[1]), "leaky", spec[1])
    if kind == "rrelu":
        _, lower, upper = spec
        return Op(lambda x: F.rrelu(x, lower, upper, training=False), "leaky", (lower + upper) / 2)
    if kind == "threshold":
        return Op(lambda x: F.threshold(x, 0.0, 0.0), "identity")
    if kind == "relu6":
        return Op(F.relu6, "clamp", (0.0, 6.0))
    if kind == "hardtanh":
        return Op(lambda x: F.hardtanh(x, spec[1], spec[2]), "clamp", spec[1:])
    if kind == "clamp":
        return Op(lambda x: torch.clamp(x, spec[1], spec[2]), "clamp", spec[1:])
    if kind == "clamp_min":
        return Op(lambda x: x.clamp_min(spec[1]), "clamp", (spec[1], None))
    if kind == "hardsigmoid":
        return Op(F.hardsigmoid, "hardsigmoid")
    if kind == "abs":
        return Op(torch.abs, "abs")
    if kind == "maximum":
        return Op(lambda x: torch.maximum(x, torch.roll(x, 1, -1)), "maximum")
    if kind == "minimum":
        return Op(lambda x: torch.minimum(x, torch.roll(x, 1, -1)), "minimum")
    if kind == "channel_max":
        return Op(lambda x: torch.max(x, 1, keepdim=True).values, "max")
    if kind == "amax_len":
        return Op(lambda x: x.amax(-1, keepdim=True), "max")
    if kind == "same_maxpool":   # timm's "same" max-pooling: -inf padding, then max-pooling
        return Op(lambda x: torch.max_pool1d(F.pad(x, (1, 1), value=-math.inf), 3, 1), "max")
    if kind == "const":
        return Op(lambda x: x + spec[1], "const", spec[1])
    if kind == "pad":
        return Op(lambda x: F.pad(x, (1, 1), value=spec[1]), "pad", spec[1])
    if kind == "bicubic":
        return Op(lambda x: F.interpolate(x.unsqueeze(-2), scale_factor=(1.0, spec[1]),
                                          mode="bicubic", align_corners=spec[2]).squeeze(-2),
                  "linear")
    if kind == "antialias":
        return Op(lambda x: F.interpolate(x.unsqueeze(-2), scale_factor=(1.0, spec[1]),
                                          mode=spec[2], antialias=True).squeeze(-2), "linear")
    raise ValueError(kind)


def build(specs, channels, length, outputs, generator) -> nn.Module:
    """The nn.Module of a spec list on (1, channels, length) inputs, random float64 weights."""
    layers, c, n = [], channels, length
    for spec in specs:
        module, c, n = _layer(spec, c, n, generator)
        layers.append(module)
    layers.append(Head(c * n, outputs))
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.InstanceNorm1d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def _layer(spec, c, n, generator):
    kind = spec[0]
    if kind == "conv":
        _, out, k, s, p, d, g, bias = spec
        module = nn.Conv1d(c, out, k, s, p, d, g, bias=bias)
        n = (n + 2 * p - d * (k - 1) - 1) // s + 1
        return module, out, n
    if kind == "bn":
        return nn.BatchNorm1d(c), c, n
    if kind == "instancenorm":
        return nn.InstanceNorm1d(c, affine=True, track_running_stats=True), c, n
    if kind == "matmul":
        return MatMul(n), c, n
    if kind == "bias":
        return AddBias(c), c, n
    if kind == "scale":
        return LayerScale(c), c, n
    if kind == "vbias":
        return ViewedBias(c), c, n
    if kind == "relu":
        return nn.ReLU(), c, n
    if kind in ("res", "cat"):
        body, c2, n2 = [], c, n
        for sub in spec[1]:
            module, c2, n2 = _layer(sub, c2, n2, generator)
            body.append(module)
        assert n2 == n and (kind == "cat" or c2 == c)
        return Block(kind, nn.Sequential(*body)), (c + c2 if kind == "cat" else c), n
    op = make_op(spec)
    out = op.fn(torch.zeros(1, c, n))
    return op, out.shape[1], out.shape[-1]


# ---------------------------------------------------------------- the explicit neuron DAG

@dataclass
class Dag:
    """Neurons 0..n-1; ``edges[v]`` = [(u, coefficient)] into v; ``bias[v]``; inputs; outputs."""
    edges: list = field(default_factory=list)
    bias: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)

    def neuron(self, incoming, bias=0.0):
        self.edges.append(incoming)
        self.bias.append(bias)
        return len(self.edges) - 1


def _jacobian(fn, n_in, shape):
    """Matrix J (out x in) of a linear map, applied to the standard basis."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape((n_in,) + shape[1:])
    return fn(eye).reshape(n_in, -1).T


def _linear_layer(dag, ids, shape, fn, bias_of=None):
    """New neurons ``fn(ids)`` with coefficients from the Jacobian and optional biases."""
    n_in = ids.numel()
    jac = _jacobian(fn, n_in, (1,) + shape)
    out_shape = fn(torch.zeros((1,) + shape, dtype=torch.float64)).shape[1:]
    flat = ids.reshape(-1)
    new = []
    for j in range(jac.shape[0]):
        incoming = [(int(flat[i]), float(jac[j, i])) for i in range(n_in) if jac[j, i] != 0]
        new.append(dag.neuron(incoming, bias_of(j, out_shape) if bias_of else 0.0))
    return torch.tensor(new).reshape(out_shape), tuple(out_shape)


def _max_layer(dag, ids, shape, fn):
    """Max neurons over the windows of ``fn``, found by probing one input at a time."""
    n_in = ids.numel()
    probe = torch.full((n_in, n_in), -1e9, dtype=torch.float64)
    probe.fill_diagonal_(1.0)
    hits = fn(probe.reshape((n_in,) + shape)).reshape(n_in, -1) > 0
    out_shape = fn(torch.zeros((1,) + shape, dtype=torch.float64)).shape[1:]
    flat = ids.reshape(-1)
    new = [dag.neuron([(int(flat[i]), 1.0) for i in range(n_in) if hits[i, j]])
           for j in range(hits.shape[1])]
    return torch.tensor(new).reshape(out_shape), tuple(out_shape)


def to_dag(model: nn.Sequential, channels, length) -> Dag:
    dag = Dag()
    ids = torch.tensor([dag.neuron([]) for _ in range(channels * length)]).reshape(channels, length)
    dag.inputs = ids.reshape(-1).tolist()
    shape = (channels, length)
    for module in model:
        ids, shape = _module(dag, module, ids, shape)
    dag.outputs = ids.reshape(-1).tolist()
    return dag


def _module(dag, module, ids, shape):
    if isinstance(module, nn.Conv1d):
        b = module.bias
        return _linear_layer(dag, ids, shape, lambda x: F.conv1d(
            x, module.weight, None, module.stride, module.padding, module.dilation, module.groups),
            (lambda j, s: float(b[j // s[-1]])) if b is not None else None)
    if isinstance(module, (nn.BatchNorm1d, nn.InstanceNorm1d)):
        s = module.weight / torch.sqrt(module.running_var + module.eps)
        t = module.bias - module.running_mean * s
        return _linear_layer(dag, ids, shape, lambda x: x * s[:, None],
                             lambda j, sh: float(t[j // sh[-1]]))
    if isinstance(module, nn.ReLU) or isinstance(module, Op) and module.kind == "identity":
        return ids, shape
    if isinstance(module, MatMul):
        return _linear_layer(dag, ids, shape, lambda x: x @ module.weight)
    if isinstance(module, AddBias):
        b = module.bias
        return _linear_layer(dag, ids, shape, lambda x: x, lambda j, s: float(b[j // s[-1], 0]))
    if isinstance(module, LayerScale):   # identity neurons, incoming edge weight gamma_c
        g = module.gamma
        new = [dag.neuron([(int(u), float(g[c]))]) for c in range(shape[0])
               for u in ids[c].reshape(-1)]
        return torch.tensor(new).reshape(ids.shape), shape
    if isinstance(module, ViewedBias):   # identity neurons with bias b_c
        b = module.bias
        new = [dag.neuron([(int(u), 1.0)], float(b[c])) for c in range(shape[0])
               for u in ids[c].reshape(-1)]
        return torch.tensor(new).reshape(ids.shape), shape
    if isinstance(module, Op) and module.kind in ELEMENTWISE:
        new = [ELEMENTWISE[module.kind](dag, u, module.slope) for u in ids.reshape(-1).tolist()]
        return torch.tensor(new).reshape(ids.shape), shape
    if isinstance(module, Op) and module.kind in ("maximum", "minimum"):
        sign = 1.0 if module.kind == "maximum" else -1.0
        flat, rolled = ids, torch.roll(ids, 1, -1)
        new = []
        for u, w in zip(flat.reshape(-1).tolist(), rolled.reshape(-1).tolist()):
            top = dag.neuron([(u, sign), (w, sign)])   # a 2-max-pooling neuron
            new.append(top if sign > 0 else dag.neuron([(top, -1.0)]))
        return torch.tensor(new).reshape(ids.shape), shape
    if isinstance(module, Op) and module.kind == "pad":
        side = lambda: [[dag.neuron([], module.slope)] for _ in range(shape[0])]  # noqa: E731
        padded = torch.cat([torch.tensor(side()), ids, torch.tensor(side())], dim=1)
        return padded, (shape[0], shape[1] + 2)
    if isinstance(module, Head):
        w, b = module.fc.weight, module.fc.bias
        return _linear_layer(dag, ids, shape, lambda x: torch.flatten(x, 1) @ w.T,
                             lambda j, s: float(b[j]))
    if isinstance(module, Block):
        y, yshape = ids, shape
        for sub in module.body:
            y, yshape = _module(dag, sub, y, yshape)
        if module.kind == "cat":
            return torch.cat([ids, y], 0), (shape[0] + yshape[0],) + shape[1:]
        flat_x, flat_y = ids.reshape(-1), y.reshape(-1)
        new = [dag.neuron([(int(a), 1.0), (int(c), 1.0)]) for a, c in zip(flat_x, flat_y)]
        return torch.tensor(new).reshape(ids.shape), shape
    if isinstance(module, Op) and module.kind == "max":
        return _max_layer(dag, ids, shape, module.fn)
    if isinstance(module, Op) and module.kind == "leaky":
        new = []
        for u in ids.reshape(-1).tolist():
            scaled = dag.neuron([(u, module.slope)])
            new.append(dag.neuron([(u, 1.0), (scaled, 1.0)]))
        return torch.tensor(new).reshape(ids.shape), shape
    if isinstance(module, Op):
        return _linear_layer(dag, ids, shape, module.fn)
    raise TypeError(type(module))


def _clamp(dag, u, bounds):
    """``clamp(v, a, b) = a + relu(v - a) - relu(v - b)``; ``a + relu(v - a)``; ``v - relu(v - b)``."""
    low, high = bounds
    incoming = [] if low is not None else [(u, 1.0)]
    if low is not None:
        incoming.append((dag.neuron([(u, 1.0)], -low), 1.0))
    if high is not None:
        incoming.append((dag.neuron([(u, 1.0)], -high), -1.0))
    return dag.neuron(incoming, 0.0 if low is None else low)


def _hardsigmoid(dag, u, _):
    """``(relu(v + 3) - relu(v - 3)) / 6``."""
    return dag.neuron([(dag.neuron([(u, 1.0)], 3.0), 1 / 6), (dag.neuron([(u, 1.0)], -3.0), -1 / 6)])


def _abs(dag, u, _):
    """``relu(v) + relu(-v)``."""
    return dag.neuron([(dag.neuron([(u, 1.0)]), 1.0), (dag.neuron([(u, -1.0)]), 1.0)])


def _const(dag, u, c):
    return dag.neuron([(u, 1.0)], c)


ELEMENTWISE = {"clamp": _clamp, "hardsigmoid": _hardsigmoid, "abs": _abs, "const": _const}


def paths(dag: Dag) -> dict:
    """Every path ``(start, kind, neurons...)`` -> ``Phi_p`` (product of edge coefficients,
    times the start bias for paths that start at a bias)."""
    out_edges = [[] for _ in dag.edges]
    for v, incoming in enumerate(dag.edges):
        for u, c in incoming:
            out_edges[u].append((v, c))
    outputs = set(dag.outputs)
    result = {}

    def walk(v, key, value):
        if v in outputs:
            result[key] = value
        parallel: dict = {}
        for w, c in out_edges[v]:  # parallel edges (max(u, u), |u|) are distinct paths
            parallel[w] = parallel.get(w, -1) + 1
            walk(w, key + ((w, parallel[w]) if parallel[w] else w,), value * c)

    for v in dag.inputs:
        walk(v, ("x", v), 1.0)
    for v, b in enumerate(dag.bias):
        if b != 0.0:
            walk(v, ("b", v), b)
    return result


def lq_norm_q(phi: dict, q: float) -> float:
    """``||Phi||_q^q`` with compensated summation."""
    return math.fsum(abs(v) ** q for v in phi.values())


def l1_distance(phi: dict, other: dict) -> float:
    keys = set(phi) | set(other)
    return math.fsum(abs(phi.get(k, 0.0) - other.get(k, 0.0)) for k in keys)
