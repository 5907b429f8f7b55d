"""Capture: turn an ``nn.Module`` and example inputs into the engine's own graph.

The model is run once, in eval mode, under a ``TorchFunctionMode`` that sees every torch function
called on a tensor. Calls whose arguments depend on the model input become graph nodes; module
forms and functional forms of an op are one node kind because every ``nn.Module`` of PyTorch ends
in the same functional call (``nn.Conv2d`` in ``F.conv2d``, ``nn.ReLU`` in ``F.relu``, ...).
Parameters and buffers are kept by name and read again at every evaluation, so the cached graph
stays valid when values change; it is captured anew when the model's structure changes.

Python control flow runs concretely on the example shape, so shape-dependent code (``x.size(0)``,
input checks of segmentation models) is fine. A second run on another random input replays the
graph and compares it with the model: an op that escaped capture cannot give a silent wrong number.

Nothing the model does may escape the graph unseen; each of these is tracked or refused:

- in-place ops: on a whole activation they are graph nodes like any other; one that writes through
  a view or alias (``y[:, :2].mul_(2)``) leaves the other aliases *stale*, and reading a stale
  tensor is refused; writing into a parameter or buffer is refused (writes into parameters go
  to copies; buffers, which train-mode ``F.batch_norm`` writes inside the op, are restored bit
  for bit after every capture run);
- tensors computed from buffers in forward (``self.s.view(1, -1, 1, 1)``) are :class:`Derived`
  references, recomputed from the buffers of the model evaluated (and compared between two
  models like the buffers themselves);
- parameters or buffers read into Python (``float(p)``, ``p.item()``) are refused: the number
  would be frozen into the graph;
- the cached graph is keyed on the module tree, the forward code, hooks, plain attributes and
  the identities of parameters and buffers (:func:`_cache_key`).
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from . import rules
from ..errors import ModelCaptureError, SupportReport, UnsupportedModelError


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


@dataclass(frozen=True)
class Derived(Buffer):
    """A tensor computed in forward from buffers (and constants) only, e.g. ``s.view(1, -1, 1, 1)``:
    ``Graph.derived[name]`` says how; it is recomputed from the buffers of the model evaluated."""


@dataclass
class Node:
    rule: str          # rule name in ``rules.RULES`` ("input" for a model input)
    func: object       # the torch function that was called
    args: tuple
    kwargs: dict
    module: str        # path of the innermost module running when the call was made
    module_type: str
    shape: object      # output shape, or tuple of shapes for multi-output ops
    inplace: bool = False  # the call writes into its first argument
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
    derived: dict = field(default_factory=dict)  # Derived name -> (Node over buffers, item)
    scratch: object = field(default=None, repr=False, compare=False)  # lifted.Scratch
    head: str | None = None        # 'softmax'/'log_softmax' set aside after the outputs (logits)
    head_outputs: tuple = ()       # what the model returns when a head is set aside
    _buffer_names: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def signature(self):
        """What two models must share for a path-metric between them to make sense."""
        return ([(n.rule, n.module, n.shape, _refs(n.args, n.kwargs)) for n in self.nodes]
                + [(name, _function_name(n.func), n.shape, _refs(n.args, n.kwargs), item)
                   for name, (n, item) in self.derived.items()])

    def with_derived(self, tensors: dict) -> dict:
        """``tensors`` (name -> tensor of one model) and the buffer-derived tensors computed
        from them, by their :class:`Derived` names."""
        memo: dict = {}
        out = dict(tensors)
        out.update({name: self.derive(Derived(name), tensors, memo) for name in self.derived})
        return out

    def derive(self, ref: "Derived", tensors: dict, memo: dict):
        """The value of the buffer-derived tensor ``ref`` computed from ``tensors`` (name ->
        tensor of one model); ``memo`` caches the values of one evaluation."""
        if ref.name not in memo:
            node, item = self.derived[ref.name]

            def resolve(x):
                if isinstance(x, Derived):
                    return self.derive(x, tensors, memo)
                return tensors[x.name] if isinstance(x, Buffer) else x
            args, kwargs = node.call(resolve)
            with torch.no_grad():
                out = node.func(*args, **kwargs)
            memo[ref.name] = out if item is None else out[item]
        return memo[ref.name]

    def buffer_names(self) -> tuple:
        """Buffers the operations read, in order of first use."""
        if self._buffer_names is None:
            self._buffer_names = tuple(dict.fromkeys(
                r.name for n in self.nodes + [d for d, _ in self.derived.values()]
                for r in _refs(n.args, n.kwargs)
                if isinstance(r, Buffer) and not isinstance(r, Derived)))
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


_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                    "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
                    "__imatmul__", "__setitem__"}
# Calls that turn a tensor into Python numbers: on a parameter or buffer the value would be frozen.
_PYTHON_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__complex__",
                 "numpy", "__array__", "__reduce_ex__"}
_INPLACE_FLAG: dict = {}


def _inplace_flag_position(func):
    """Position of an ``inplace`` parameter of a Python function (``F.relu``), else None."""
    if func not in _INPLACE_FLAG:
        try:
            params = list(inspect.signature(func).parameters)
            _INPLACE_FLAG[func] = params.index("inplace") if "inplace" in params else None
        except (TypeError, ValueError):
            _INPLACE_FLAG[func] = None
    return _INPLACE_FLAG[func]


def written_tensor(func, args, kwargs):
    """The tensor a call writes into (its first argument for ``x.add_(y)``, ``x += y``,
    ``x[i] = y``, ``F.relu(x, inplace=True)``; ``out=``), or None."""
    out = kwargs.get("out")
    if isinstance(out, torch.Tensor):
        return out
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    name = getattr(func, "__name__", "")
    if name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__")):
        return args[0]
    try:
        position = _inplace_flag_position(func)
    except TypeError:  # unhashable callables
        return None
    if position is not None:
        flag = args[position] if len(args) > position else kwargs.get("inplace", False)
        if flag is True:
            return args[0]
    return None


def _quantized(name, tensors) -> bool:
    return "quantize" in name or "_dynamic" in name or any(t.is_quantized for t in tensors)


def _into_copy(written, args, kwargs):
    """``(args, kwargs)`` with the tensor an in-place call writes into replaced by a copy."""
    copy = written.detach().clone()
    if kwargs.get("out") is written:
        return args, {**kwargs, "out": copy}
    return (copy,) + tuple(args[1:]), kwargs


def _storage(tensor):
    """The address of ``tensor``'s memory (None for an empty or storage-less tensor)."""
    try:
        return tensor.untyped_storage().data_ptr() if tensor.numel() else None
    except (RuntimeError, NotImplementedError):
        return None


class _Recorder(TorchFunctionMode):
    """Records the torch calls that depend on the model inputs.

    ``values`` maps a tensor's id to its graph value, or to None when the tensor is the result of
    a refused call (*tainted*: calls reading it are consequences of that refusal and are listed
    only when they would be refused by themselves). ``stale`` holds activations that an in-place
    op on an alias changed behind the graph's back. ``derived`` maps tensors computed from buffers
    alone to their :class:`Derived` reference, ``param_derived`` those computed from parameters.
    """

    def __init__(self, params: dict, buffers: dict, paths: list, state: dict, guarded: set):
        super().__init__()
        self.params = params            # id -> name
        self.buffers = buffers          # id -> name
        self.state = state              # storage address -> name of a parameter or buffer
        self.guarded = guarded          # storage addresses of parameters (writes go to copies)
        self.paths = paths              # stack of (module path, module type)
        self.values: dict = {}          # id(tensor) -> (tensor, Value or None if tainted)
        self.by_storage: dict = {}      # storage address -> ids of tracked tensors using it
        self.stale: dict = {}           # id(tensor) -> (tensor, in-place op, module path)
        self.param_derived: dict = {}   # id(tensor) -> tensor computed from parameters
        self.derived: dict = {}         # id(tensor) -> (tensor, Derived)
        self.derivations: dict = {}     # Derived name -> (Node, item)
        self.nodes: list = []
        self.unsupported: list = []

    def track(self, tensor, value):
        self.values[id(tensor)] = (tensor, value)
        address = _storage(tensor)
        if address is not None:
            self.by_storage.setdefault(address, set()).add(id(tensor))

    def add_input(self, tensor):
        self.track(tensor, Value(len(self.nodes)))
        self.nodes.append(Node("input", None, (), {}, "", "", tuple(tensor.shape)))

    def where(self):
        return self.paths[-1] if self.paths else ("", type(None).__name__)

    def refuse(self, op, why, out=None):
        """Note an unsupported call; its outputs are tainted (see the class docstring)."""
        path, module_type = self.where()
        entry = (op, path, f"{why} ({module_type})" if module_type else why)
        if entry not in self.unsupported:
            self.unsupported.append(entry)
        self.taint(out)

    def taint(self, out):
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.stale.pop(id(t), None)
                self.track(t, None)

    def encode(self, x):
        if isinstance(x, torch.Tensor):
            key = id(x)
            if key in self.values:
                value = self.values[key][1]
                return Value(-1) if value is None else value  # a tainted activation
            if key in self.params:
                return Param(self.params[key])
            if key in self.buffers:
                return Buffer(self.buffers[key])
            if key in self.derived:
                return self.derived[key][1]
            return x.detach().clone()
        return x

    def _written(self, name, written):
        """An in-place write: refused into model state; other aliases of an activation go stale."""
        address = _storage(written)
        if address is None:
            return
        if address in self.state:
            self.refuse(name, f"writes into the model's parameter or buffer "
                              f"'{self.state[address]}' during forward (the engine restores it, "
                              "but the function analysed would not be the model's)")
        path = self.where()[0]
        for key in self.by_storage.get(address, ()):
            if key != id(written) and self.values[key][1] is not None:
                self.stale[key] = (self.values[key][0], name, path)

    def _constant(self, name, func, args, kwargs, tensors, out):
        """A call on no activation: follow what parameters and buffers become."""
        from_params = any(id(x) in self.params or id(x) in self.param_derived for x in tensors)
        from_buffers = any(id(x) in self.buffers or id(x) in self.derived for x in tensors)
        if not (from_params or from_buffers):
            return
        if name.split(".")[-1] in _PYTHON_READS:
            state = next(self.params.get(id(x)) or self.buffers.get(id(x)) or "a tensor computed "
                         "from them" for x in tensors if id(x) in self.params or id(x) in
                         self.buffers or id(x) in self.param_derived or id(x) in self.derived)
            self.refuse(name, f"the value of a parameter or buffer ({state}) is read into Python, "
                              "so it would be frozen as a constant; keep it a tensor")
            return
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if from_params:
            for t in outputs:
                self.param_derived[id(t)] = t
            return
        enc_args, enc_kwargs = pytree.tree_map(self.encode, (tuple(args), dict(kwargs)))
        path, module_type = self.where()
        node = Node("derived", func, enc_args, enc_kwargs, path, module_type,
                    tuple(out.shape) if isinstance(out, torch.Tensor) else None)
        single = isinstance(out, torch.Tensor)
        for k, t in enumerate(outputs):
            ref = Derived(f"{path + '.' if path else ''}<{name} #{len(self.derivations)}>")
            self.derivations[ref.name] = (node, None if single else k)
            self.derived[id(t)] = (t, ref)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        written = written_tensor(func, args, kwargs) if tensors else None
        if written is not None and _storage(written) in self.guarded:
            args, kwargs = _into_copy(written, args, kwargs)  # the parameter stays intact
        out = func(*args, **kwargs)
        if not tensors:
            return out
        name = _function_name(func)
        if written is not None:
            self._written(name, written)
        tracked = [x for x in tensors if id(x) in self.values]
        if not tracked:
            self._constant(name, func, args, kwargs, tensors, out)
            return out
        stale = next((self.stale[id(x)] for x in tracked if id(x) in self.stale), None)
        if stale is not None:
            self.refuse(name, f"reads an activation that '{stale[1]}' in "
                              f"'{stale[2] or '<model>'}' changed in place through a view or "
                              "alias of it; write that op out of place", out)
            return out
        tainted = any(self.values[id(x)][1] is None for x in tracked)
        rule = rules.lookup(func)
        out_tensors = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if rule is None:
            if not out_tensors and rules.is_query(func):
                return out
            if tainted and name not in rules.REFUSED:
                self.taint(out)  # a consequence of the earlier refusal
                return out
            why = ("writes into an activation in place" if written is not None
                   else "a value that depends on the input is read into Python" if not out_tensors
                   else "a quantized (integer) operation: analyse the float model, whose "
                        "quantization pathmetric certifies" if _quantized(name, out_tensors)
                   else "not a linear, ReLU or max-pooling operation")
            self.refuse(name, rules.REFUSED.get(name, why), out)
            return out
        if isinstance(kwargs.get("out"), torch.Tensor):
            self.refuse(name, "an out= argument writes into an existing tensor; assign the "
                              "result instead", out)
            return out
        if any(id(x) in self.param_derived for x in tensors):
            self.refuse(name, "a tensor computed from parameters during forward (weight "
                              "normalisation, parametrisation) is not supported", out)
            return out
        enc_args, enc_kwargs = pytree.tree_map(self.encode, (tuple(args), dict(kwargs)))
        problem = rule.check(*enc_args, **enc_kwargs) if rule.check else None
        if problem:
            self.refuse(name, problem, out)
            return out
        if tainted:
            self.taint(out)
            return out
        index = len(self.nodes)
        path, module_type = self.where()
        if isinstance(out, torch.Tensor):
            shape = tuple(out.shape)
            self.track(out, Value(index))
        elif isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
            shape = tuple(tuple(t.shape) for t in out)
            for k, t in enumerate(out):
                self.track(t, Value(index, k))
        else:
            self.refuse(name, "unexpected output structure")
            return out
        self.stale.pop(id(written), None)
        self.nodes.append(Node(rule.name, func, enc_args, enc_kwargs, path, module_type, shape,
                               inplace=written is not None))
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
        if not x.is_floating_point():
            why = (f"the model takes a {x.dtype} input (indices for an embedding, say): the "
                   "path-lifting model's input is a real vector; analyse the part of the model "
                   "after the embedding, with its output as input")
            raise UnsupportedModelError(f"input: {why}", [("input", "", why)])
        shape = (1,) + tuple(x.shape[1:])
        dtype = like.dtype if like is not None and like.is_floating_point() else x.dtype
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


def _check_capturable(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        why = ("a TorchScript module (torch.jit.script / torch.jit.trace) runs outside Python, "
               "where its operations cannot be captured; pass the original nn.Module")
        raise UnsupportedModelError(f"{type(model).__name__}: {why}", [("torch.jit", "", why)])
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise ModelCaptureError(
                f"'{name}' is on the meta device (no values): materialise the model first "
                "(model.to_empty(device=...) and load_state_dict)")


@contextlib.contextmanager
def _model_state_restored(model):
    """Buffers are put back bit for bit afterwards (train-mode batch statistics write into them
    inside the op); parameters are guarded by the recorder, which redirects in-place writes into
    them to copies, and checked by version counter. Yields a list that then holds the names of
    the tensors the model changed."""
    buffers = {name: (b, b.detach().clone()) for name, b in model.named_buffers()}
    versions = {name: p._version for name, p in model.named_parameters()}
    changed: list = []
    try:
        yield changed
    finally:
        with torch.no_grad():
            for name, (tensor, copy) in buffers.items():
                if not torch.equal(tensor, copy) or tensor.dtype != copy.dtype:
                    tensor.copy_(copy)
                    changed.append(name)
        changed.extend(name for name, p in model.named_parameters()
                       if p._version != versions.get(name))


def trace(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport]:
    """Capture ``model``; return the graph (None if unsupported) and the support report."""
    _check_capturable(model)
    examples = as_tuple(example_inputs)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"'{name}' holds NaN or infinite values")
    generator = torch.Generator().manual_seed(0)
    inputs = _sample_inputs(examples, generator, _first_parameter(model))
    params = {id(p): n for n, p in model.named_parameters()}
    buffers = {id(b): n for n, b in model.named_buffers()}
    state = {_storage(t): n for n, t in list(model.named_parameters()) + list(model.named_buffers())
             if _storage(t) is not None}
    paths: list = []
    recorder = _Recorder(params, buffers, paths, state, {_storage(p) for p in model.parameters()})
    for x in inputs:
        recorder.add_input(x)
    with _model_state_restored(model) as changed:
        with _eval_mode_with_paths(model, paths):
            with recorder:
                out = _run(model, inputs, "its forward")
        report = SupportReport(unsupported=recorder.unsupported)
        graph = _graph_of(recorder, out, inputs, report)
        if graph is not None:
            _check_replay(model, graph, examples, generator)
    if changed and report.ok:
        report.unsupported.append(
            ("forward", "", f"the forward changes {changed[:3]} (train-mode batch statistics or "
                            "an in-place update of model state); the engine restored them"))
    if not report.ok:
        return None, report
    _evaluate_once(graph, model, report)
    return (graph if report.ok else None), report


def _graph_of(recorder, out, inputs, report):
    """The graph of a recorded run (None, with the reasons in ``report``, if unsupported)."""
    outputs = []
    for leaf in pytree.tree_leaves(out):
        if isinstance(leaf, torch.Tensor):
            entry = recorder.values.get(id(leaf))
            if id(leaf) in recorder.stale:
                _, op, path = recorder.stale[id(leaf)]
                report.unsupported.append(
                    ("output", "", f"a model output was changed in place by '{op}' in "
                                   f"'{path or '<model>'}' through a view or alias of it; write "
                                   "that op out of place"))
            elif entry is None:
                if not report.unsupported:
                    report.unsupported.append(
                        ("output", "", "a model output does not depend on the input"))
            elif entry[1] is not None:
                outputs.append(entry[1])
    if not outputs and not report.unsupported:
        report.unsupported.append(("output", "", "the model returns no tensor computed from its input"))
    returned = outputs
    outputs, report.head, refused = rules.set_aside_head(recorder.nodes, outputs)
    for index, why in refused + rules.check_graph(recorder.nodes, outputs):
        node = recorder.nodes[index]
        report.unsupported.append((_function_name(node.func), node.module, why))
    if report.head:
        report.notes.append(rules.HEAD_NOTE.format(head=report.head))
    graph = Graph(recorder.nodes, outputs, tuple(tuple(x.shape) for x in inputs), (), {},
                  derived=recorder.derivations, head=report.head,
                  head_outputs=tuple(returned) if report.head else ())
    report.ops = graph.rule_counts()
    if not report.ok:
        return None
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
        return None
    return graph


def _evaluate_once(graph, model, report):
    """Run the lifted network once, so that ``check_support`` and every computation share one
    decision: whatever a rule refuses (PReLU slopes outside [0, 1], ...) or cannot evaluate is
    reported here, at capture, with its op and module."""
    from .interpreter import NormLifting  # lifted builds on capture; issue 14 layers them in core/
    ev = NormLifting(graph, model)
    try:
        with torch.no_grad():
            ev.run()
    except UnsupportedModelError as exc:
        report.unsupported.extend(exc.unsupported)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
        if ev.node is None:
            raise
        report.unsupported.append(
            (ev.node.rule, ev.node.module, f"the lifted network cannot evaluate this call "
                                           f"({type(exc).__name__}: {exc})"))


def replay(graph: Graph, model: nn.Module, inputs):
    """Evaluate the captured graph with the model's own semantics (used to validate a capture).

    In-place calls write into a copy, so the replay computes what the graph says, not what an
    aliasing write would do to other tensors."""
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    results: list = []
    memo: dict = {}

    def resolve(x):
        if isinstance(x, Value):
            value = results[x.node]
            return value if x.item is None else value[x.item]
        if isinstance(x, Derived):
            return graph.derive(x, named, memo)
        if isinstance(x, (Param, Buffer)):
            return named[x.name]
        return x

    feed = iter(inputs)
    for node in graph.nodes:
        if node.rule == "input":
            results.append(next(feed))
            continue
        args, kwargs = node.call(resolve)
        if node.inplace:
            args = (args[0].clone(),) + tuple(args[1:])
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
_PLAIN = {bool, int, float, str, type(None)}


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _attributes(module) -> tuple:
    """What a module's forward may read besides parameters and buffers: its plain settings
    (kernel sizes, slopes, flags, ...), plain tensor attributes (by identity and version),
    callables such as an instance-level ``forward``, and its forward hooks (handle ids)."""
    out = []
    state = module.__dict__
    for key, value in state.items():
        if key[0] == "_" or key == "training":
            continue
        if type(value) in _PLAIN or (type(value) is tuple and all(
                type(v) in _PLAIN for v in value)):
            out.append((key, value))
        elif isinstance(value, torch._C.TensorBase):  # (the torch.Tensor check is slower)
            out.append((key, id(value), value._version))
        elif callable(value):
            out.append((key, id(value)))
    out.extend(tuple(state[key]) for key in _HOOKS if state.get(key))
    return tuple(out)


def _cache_key(model: nn.Module, example_inputs):
    """What the captured graph depends on besides parameter and buffer values: input shapes, the
    module tree (identities, types, forward code, hooks, settings), the identities and shapes
    of parameters and buffers, and torch's global module hooks (``Tensor.size`` is read
    unbound: attribute access on a ``Parameter`` costs tens of microseconds)."""
    from torch.nn.modules import module as module_globals
    shapes = tuple((tuple(x.shape[1:]), x.dtype) for x in as_tuple(example_inputs))
    size = torch.Tensor.size
    tree = tuple(
        (name, id(m), type(m), type(m).forward, _attributes(m),
         tuple((k, id(t), size(t)) for k, t in m._parameters.items() if t is not None),
         tuple((k, id(t), size(t)) for k, t in m._buffers.items() if t is not None))
        for name, m in model.named_modules(remove_duplicate=False))
    hooks = tuple(tuple(getattr(module_globals, name, {})) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_module_registration_hooks"))
    return shapes, tree, hooks


def _refusal(model, unsupported) -> UnsupportedModelError:
    first = unsupported[0]
    return UnsupportedModelError(
        f"{type(model).__name__} is outside the path-lifting model: {first[0]} in "
        f"'{first[1] or '<model>'}': {first[2]}. "
        + (f"{len(unsupported) - 1} more listed in .unsupported; " if len(unsupported) > 1 else "")
        + "pathmetric.check_support(model, example_inputs) lists them all. Replace the op by a "
        "supported one (ReLU, max/avg pooling, conv, linear, frozen BatchNorm) or exclude it.",
        unsupported)


def capture(model: nn.Module, example_inputs) -> Graph:
    """The captured graph of ``model`` (cached), or UnsupportedModelError listing every bad op."""
    _check_capturable(model)
    key = _cache_key(model, example_inputs)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    graph, report = trace(model, example_inputs)
    if graph is None:
        raise _refusal(model, report.unsupported)
    per_model.clear()
    per_model[key] = graph
    return graph


def check_support(model: nn.Module, example_inputs) -> SupportReport:
    """Report every operation of ``model`` outside the path-lifting model, at once: the same
    decision as every computation (which raise :class:`UnsupportedModelError` with this list)."""
    try:
        _, report = trace(model, example_inputs)
    except UnsupportedModelError as exc:
        return SupportReport(unsupported=exc.unsupported)
    return report
