"""Capture: turn an ``nn.Module`` and example inputs into the engine's own graph.

The model is run once, in eval mode, under a ``TorchFunctionMode`` that sees every torch function
called on a tensor. Calls whose arguments depend on the model input become graph nodes; module
forms and functional forms of an op are one node kind because every ``nn.Module`` of PyTorch ends
in the same functional call (``nn.Conv2d`` in ``F.conv2d``, ``nn.ReLU`` in ``F.relu``, ...).
Parameters and buffers are kept by name and read again at every evaluation, so the cached graph
stays valid when values change; it is captured anew when the set of parameters changes.

Python control flow runs concretely on the example shape, so shape-dependent code (``x.size(0)``,
input checks of segmentation models) is fine. A second run on another random input replays the
graph and compares it with the model: an op that escaped capture cannot give a silent wrong number.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from . import rules
from .errors import ModelCaptureError, SupportReport, UnsupportedModelError


@dataclass(frozen=True)
class Value:
    """Output ``item`` (None for a single tensor) of graph node ``node``."""
    node: int
    item: int | None = None


@dataclass(frozen=True)
class Param:
    """A model parameter, by ``named_parameters()`` name."""
    name: str


@dataclass(frozen=True)
class Buffer:
    """A model buffer, by ``named_buffers()`` name."""
    name: str


@dataclass
class Node:
    rule: str          # rule name in ``rules.RULES`` ("input" for a model input)
    func: object       # the torch function that was called
    args: tuple
    kwargs: dict
    module: str        # path of the innermost module running when the call was made
    module_type: str
    shape: object      # output shape, or tuple of shapes for multi-output ops
    _flat: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def call(self, resolve):
        """``(args, kwargs)`` with every leaf replaced by ``resolve(leaf)`` (nested arguments are
        flattened once)."""
        if self._flat is None:
            nested = any(isinstance(x, (list, tuple, dict))
                         for x in list(self.args) + list(self.kwargs.values()))
            self._flat = pytree.tree_flatten((self.args, self.kwargs)) if nested else ()
        if not self._flat:
            return (tuple(resolve(x) for x in self.args),
                    {key: resolve(x) for key, x in self.kwargs.items()})
        leaves, spec = self._flat
        return pytree.tree_unflatten([resolve(x) for x in leaves], spec)


@dataclass
class Graph:
    nodes: list
    outputs: list                  # Values whose entries are summed into the path-norm
    input_shapes: tuple
    param_names: tuple             # parameters used, in order of first use
    uses: dict = field(default_factory=dict)  # parameter name -> number of nodes using it
    scratch: object = field(default=None, repr=False, compare=False)  # lifted.Scratch
    head: str | None = None        # 'softmax'/'log_softmax' set aside after the outputs (logits)
    head_outputs: tuple = ()       # what the model returns when a head is set aside
    _buffer_names: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def signature(self):
        """What two models must share for a path-metric between them to make sense."""
        return [(n.rule, n.module, n.shape, _refs(n.args, n.kwargs)) for n in self.nodes]

    def buffer_names(self) -> tuple:
        """Buffers the operations read, in order of first use."""
        if self._buffer_names is None:
            self._buffer_names = tuple(dict.fromkeys(
                r.name for n in self.nodes for r in _refs(n.args, n.kwargs)
                if isinstance(r, Buffer)))
        return self._buffer_names

    def shared_parameters(self) -> list:
        return sorted(name for name, count in self.uses.items() if count > 1)

    def users(self) -> dict:
        """Node index -> indices of the nodes that read its output."""
        out: dict = {i: [] for i in range(len(self.nodes))}
        for j, node in enumerate(self.nodes):
            for ref in pytree.tree_leaves((node.args, node.kwargs)):
                if isinstance(ref, Value) and j not in out[ref.node]:
                    out[ref.node].append(j)
        return out

    def layers(self) -> dict:
        """Conv, transposed conv and linear layers: layer name -> (node index, weight, bias names).

        A layer is named after its weight parameter without the ``.weight`` suffix, which is the
        module path for ``nn.Conv2d``/``nn.Linear`` and stays meaningful for functional calls.
        """
        out = {}
        for index, node in enumerate(self.nodes):
            if node.rule in ("conv", "conv_transpose", "linear") and isinstance(node.args[1], Param):
                weight = node.args[1].name
                bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
                name = weight[:-len(".weight")] if weight.endswith(".weight") else weight
                out[name] = (index, weight, bias.name if isinstance(bias, Param) else None)
        return out

    def rule_counts(self) -> dict:
        counts: dict = {}
        for node in self.nodes:
            if node.rule != "input":
                counts[node.rule] = counts.get(node.rule, 0) + 1
        return counts


def _refs(args, kwargs):
    return tuple(x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, (Param, Buffer)))


def as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(x, torch.Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple of tensors, "
                    f"got {type(example_inputs).__name__}")


def _function_name(func) -> str:
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    name = getattr(func, "__name__", repr(func))
    if isinstance(owner, type) and owner in torch.Tensor.__mro__:
        return f"Tensor.{name}"
    module = getattr(func, "__module__", "") or ""
    if module.startswith(("torch.nn.functional", "torch._C._nn")):
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") else name


class _Recorder(TorchFunctionMode):
    """Records the torch calls that depend on the model inputs."""

    def __init__(self, params: dict, buffers: dict, paths: list):
        super().__init__()
        self.params = params            # id -> name
        self.buffers = buffers          # id -> name
        self.paths = paths              # stack of (module path, module type)
        self.values: dict = {}          # id(tensor) -> (tensor, Value)
        self.param_derived: dict = {}   # id(tensor) -> tensor computed from parameters
        self.nodes: list = []
        self.unsupported: list = []

    def add_input(self, tensor):
        self.values[id(tensor)] = (tensor, Value(len(self.nodes)))
        self.nodes.append(Node("input", None, (), {}, "", "", tuple(tensor.shape)))

    def where(self):
        return self.paths[-1] if self.paths else ("", type(None).__name__)

    def refuse(self, op, why, out=None):
        """Note an unsupported call; its outputs stay tracked so later ones are reported too."""
        path, module_type = self.where()
        entry = (op, path, f"{why} ({module_type})" if module_type else why)
        if entry not in self.unsupported:
            self.unsupported.append(entry)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.values[id(t)] = (t, None)

    def encode(self, x):
        if isinstance(x, torch.Tensor):
            key = id(x)
            if key in self.values:
                return self.values[key][1]
            if key in self.params:
                return Param(self.params[key])
            if key in self.buffers:
                return Buffer(self.buffers[key])
            return x.detach().clone()
        return x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = pytree.tree_leaves((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        tracked = any(id(x) in self.values for x in tensors)
        if not tracked:
            if any(id(x) in self.params or id(x) in self.param_derived for x in tensors):
                for t in pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        self.param_derived[id(t)] = t
            return out
        name = _function_name(func)
        rule = rules.lookup(func)
        out_tensors = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if rule is None:
            if not out_tensors and rules.is_query(func):
                return out
            why = ("a value that depends on the input is read into Python"
                   if not out_tensors else "not a linear, ReLU or max-pooling operation")
            self.refuse(name, rules.REFUSED.get(name, why), out)
            return out
        if any(id(x) in self.param_derived for x in tensors):
            self.refuse(name, "a weight computed from parameters during forward "
                              "(weight normalisation, parametrisation) is not supported", out)
            return out
        enc_args, enc_kwargs = pytree.tree_map(self.encode, (tuple(args), dict(kwargs)))
        problem = rule.check(*enc_args, **enc_kwargs) if rule.check else None
        if problem:
            self.refuse(name, problem, out)
            return out
        index = len(self.nodes)
        path, module_type = self.where()
        if isinstance(out, torch.Tensor):
            shape = tuple(out.shape)
            self.values[id(out)] = (out, Value(index))
        elif isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
            shape = tuple(tuple(t.shape) for t in out)
            for k, t in enumerate(out):
                self.values[id(t)] = (t, Value(index, k))
        else:
            self.refuse(name, "unexpected output structure")
            return out
        self.nodes.append(Node(rule.name, func, enc_args, enc_kwargs, path, module_type, shape))
        return out


@contextlib.contextmanager
def _eval_mode_with_paths(model: nn.Module, paths: list):
    """Eval mode and a module-path stack for the duration; flags and hooks restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    handles = []
    seen = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        entry = (name, type(module).__name__)
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, entry=entry: paths.append(entry)))
        handles.append(module.register_forward_hook(
            lambda _m, _a, _o: paths.pop() and None, always_call=True))
    try:
        model.train(False)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag


def _sample_inputs(examples, generator, like=None):
    """Random inputs of the example shapes with batch size 1, in the model's dtype and device
    (only the shapes of ``example_inputs`` matter)."""
    out = []
    for x in examples:
        if x.dim() == 0:
            raise ModelCaptureError("example inputs need a batch dimension")
        shape = (1,) + tuple(x.shape[1:])
        dtype = like.dtype if like is not None and like.is_floating_point() else (
            x.dtype if x.is_floating_point() else torch.get_default_dtype())
        device = like.device if like is not None else x.device
        out.append(torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype))
    return out


def _first_parameter(model):
    return next(iter(model.parameters()), None)


def _run(model, inputs, what):
    try:
        with torch.no_grad():
            return model(*inputs)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # the model's own error, reported with the input shapes
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise ModelCaptureError(
            f"{type(model).__name__} failed to run {what} on inputs of shape {shapes} "
            f"(the engine uses batch size 1): {type(exc).__name__}: {exc}") from exc


def trace(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport]:
    """Capture ``model``; return the graph (None if unsupported) and the support report."""
    examples = as_tuple(example_inputs)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"'{name}' holds NaN or infinite values")
    generator = torch.Generator().manual_seed(0)
    inputs = _sample_inputs(examples, generator, _first_parameter(model))
    params = {id(p): n for n, p in model.named_parameters()}
    buffers = {id(b): n for n, b in model.named_buffers()}
    paths: list = []
    recorder = _Recorder(params, buffers, paths)
    for x in inputs:
        recorder.add_input(x)
    with _eval_mode_with_paths(model, paths):
        with recorder:
            out = _run(model, inputs, "its forward")
    report = SupportReport(unsupported=recorder.unsupported)
    outputs = []
    for leaf in pytree.tree_leaves(out):
        if isinstance(leaf, torch.Tensor):
            entry = recorder.values.get(id(leaf))
            if entry is None:
                if not report.unsupported:
                    report.unsupported.append(
                        ("output", "", "a model output does not depend on the input"))
            else:
                outputs.append(entry[1])
    if not outputs and not report.unsupported:
        report.unsupported.append(("output", "", "the model returns no tensor computed from its input"))
    returned = outputs = [v for v in outputs if v is not None]  # None: after a refused op
    outputs, report.head, refused = rules.set_aside_head(recorder.nodes, outputs)
    for index, why in refused + rules.check_graph(recorder.nodes, outputs):
        node = recorder.nodes[index]
        report.unsupported.append((_function_name(node.func), node.module, why))
    if report.head:
        report.notes.append(rules.HEAD_NOTE.format(head=report.head))
    graph = Graph(recorder.nodes, outputs, tuple(tuple(x.shape) for x in inputs), (), {},
                  head=report.head, head_outputs=tuple(returned) if report.head else ())
    report.ops = graph.rule_counts()
    if not report.ok:
        return None, report
    used: dict = {}
    for node in graph.nodes:
        for ref in _refs(node.args, node.kwargs):
            if isinstance(ref, Param):
                used[ref.name] = used.get(ref.name, 0) + 1
    graph.uses = used
    graph.param_names = tuple(used)
    if not used:
        report.unsupported.append(
            ("model", "", "no parameter lies on a path from the input to the output (empty model)"))
        return None, report
    _check_replay(model, graph, examples, generator)
    return graph, report


def replay(graph: Graph, model: nn.Module, inputs):
    """Evaluate the captured graph with the model's own semantics (used to validate a capture)."""
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    results: list = []

    def resolve(x):
        if isinstance(x, Value):
            value = results[x.node]
            return value if x.item is None else value[x.item]
        if isinstance(x, (Param, Buffer)):
            return named[x.name]
        return x

    feed = iter(inputs)
    for node in graph.nodes:
        if node.rule == "input":
            results.append(next(feed))
            continue
        args, kwargs = node.call(resolve)
        results.append(node.func(*args, **kwargs))
    return [resolve(v) for v in graph.head_outputs or graph.outputs]


def _check_replay(model, graph, examples, generator):
    inputs = _sample_inputs(examples, generator, _first_parameter(model))
    paths: list = []
    with _eval_mode_with_paths(model, paths):
        expected = _run(model, inputs, "its forward")
        with torch.no_grad():
            got = replay(graph, model, [x.clone() for x in inputs])
    expected = [t for t in pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    if len(expected) != len(got) or not all(
            e.shape == g.shape and torch.allclose(
                e.double(), g.double(), rtol=1e-3, equal_nan=True,
                atol=1e-4 * (1 + float(e.double().nan_to_num(0, 0, 0).abs().max())))
            for e, g in zip(expected, got)):
        raise UnsupportedModelError(
            f"the captured graph of {type(model).__name__} does not reproduce the model on a second "
            "input: an operation escaped capture (a value computed outside torch, a random op in "
            "eval mode, or input-dependent Python control flow). Please report the model.",
            [("capture", "", "replay mismatch")])


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cache_key(model: nn.Module, example_inputs):
    shapes = tuple(tuple(x.shape[1:]) for x in as_tuple(example_inputs))
    params = tuple((n, id(p), tuple(p.shape)) for n, p in model.named_parameters())
    buffers = tuple((n, id(b), tuple(b.shape)) for n, b in model.named_buffers())
    return shapes, params, buffers


def capture(model: nn.Module, example_inputs) -> Graph:
    """The captured graph of ``model`` (cached), or UnsupportedModelError listing every bad op."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    key = _cache_key(model, example_inputs)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    graph, report = trace(model, example_inputs)
    if graph is None:
        first = report.unsupported[0]
        raise UnsupportedModelError(
            f"{type(model).__name__} is outside the path-lifting model: {first[0]} in "
            f"'{first[1] or '<model>'}': {first[2]}. "
            + (f"{len(report.unsupported) - 1} more listed in .unsupported; " if len(report.unsupported) > 1 else "")
            + "pathmetric.check_support(model, example_inputs) lists them all. Replace the op by a "
            "supported one (ReLU, max/avg pooling, conv, linear, frozen BatchNorm) or exclude it.",
            report.unsupported)
    per_model.clear()
    per_model[key] = graph
    return graph


def check_support(model: nn.Module, example_inputs) -> SupportReport:
    """Report every operation of ``model`` outside the path-lifting model, at once."""
    try:
        _, report = trace(model, example_inputs)
    except UnsupportedModelError as exc:
        return SupportReport(unsupported=exc.unsupported)
    return report
