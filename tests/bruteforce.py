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
    """A parameter-free op ``fn`` of kind 'linear' (fixed coefficients), 'max' (max-pooling) or
    'leaky' (``max(x, slope * x)``)."""

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
            if isinstance(m, nn.BatchNorm1d):
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
    n = op.fn(torch.zeros(1, c, n)).shape[-1]
    return op, c, n


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
    if isinstance(module, nn.BatchNorm1d):
        s = module.weight / torch.sqrt(module.running_var + module.eps)
        t = module.bias - module.running_mean * s
        return _linear_layer(dag, ids, shape, lambda x: x * s[:, None],
                             lambda j, sh: float(t[j // sh[-1]]))
    if isinstance(module, nn.ReLU):
        return ids, shape
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
        for w, c in out_edges[v]:
            walk(w, key + (w,), value * c)

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
