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
- a parameter passed through ops that only move its entries (``gamma.view(1, -1, 1, 1)``,
  ``gamma[:, None, None]``: the ``rearrange`` rule's ops) is a :class:`ParamView`, still a
  parameter coordinate; any other tensor computed from parameters (weight normalisation) is
  refused where it is used;
- parameters or buffers read into Python (``float(p)``, ``p.item()``) are refused: the number
  would be frozen into the graph;
- the cached graph is keyed on the module tree, the forward code, hooks, plain attributes and
  the identities of parameters and buffers (:func:`_cache_key`).
"""
from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from . import rules
from .ir import Buffer, Derived, Graph, Node, Param, ParamView, Value, function_name, references
from ..errors import ModelCaptureError, SupportReport, UnsupportedModelError


def as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(x, torch.Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple of tensors, "
                    f"got {type(example_inputs).__name__}")


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


class RandomDraws:
    """Watches the default random generators (CPU, and the current CUDA device's when CUDA is
    initialised) across calls: a call that moves one, or that is handed a ``torch.Generator``,
    draws random numbers, so the function analysed would not be a function of the input.
    :meth:`restore` puts the generators back as they were at the start."""

    def __init__(self):
        self.start = self.states()
        self.last = self.start

    @staticmethod
    def states() -> tuple:
        states = (torch.random.get_rng_state(),)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states += (torch.cuda.get_rng_state(),)
        return states

    def moved(self) -> bool:
        """Whether a generator moved since the last check (the check moves ``last`` along)."""
        now = self.states()
        moved = len(now) != len(self.last) or not all(
            torch.equal(a, b) for a, b in zip(now, self.last))
        self.last = now
        return moved

    def drawn_by(self, args, kwargs) -> str | None:
        """Why the call just made draws random numbers, or None."""
        if any(isinstance(x, torch.Generator) for x in pytree.tree_leaves((args, kwargs))):
            return ("draws random numbers from the torch.Generator passed to it: the function "
                    "analysed must be deterministic")
        if self.moved():
            return ("draws random numbers (the default random generator moved): the function "
                    "analysed must be deterministic (dropout with training=True, torch.rand*, "
                    "bernoulli, RReLU in training mode, ...); remove it or disable it in eval mode")
        return None

    def restore(self):
        torch.random.set_rng_state(self.start[0])
        if len(self.start) > 1:
            torch.cuda.set_rng_state(self.start[1])


class _Recorder(TorchFunctionMode):
    """Records the torch calls that depend on the model inputs.

    ``values`` maps a tensor's id to its graph value, or to None when the tensor is the result of
    a refused call (*tainted*: calls reading it are consequences of that refusal and are listed
    only when they would be refused by themselves). ``stale`` holds activations that an in-place
    op on an alias changed behind the graph's back. ``derived`` maps tensors computed from buffers
    alone to their :class:`Derived` reference, ``views`` parameters rearranged to their
    :class:`ParamView`, ``param_derived`` the other tensors computed from parameters.
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
        self.views: dict = {}           # id(tensor) -> (tensor, ParamView)
        self.derivations: dict = {}     # Derived name -> (Node, item)
        self.nodes: list = []
        self.unsupported: list = []
        self.random = RandomDraws()

    def track(self, tensor, value):
        self.values[id(tensor)] = (tensor, value)
        address = _storage(tensor)
        if address is not None:
            self.by_storage.setdefault(address, set()).add(id(tensor))

    def add_input(self, tensor):
        self.track(tensor, Value(len(self.nodes)))
        self.nodes.append(Node("input", None, (), {}, "", "", tuple(tensor.shape),
                               dtype=tensor.dtype))

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
            if key in self.views:
                return self.views[key][1]
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
        from_params = any(id(x) in self.params or id(x) in self.views or
                          id(x) in self.param_derived for x in tensors)
        from_buffers = any(id(x) in self.buffers or id(x) in self.derived for x in tensors)
        if not (from_params or from_buffers):
            return
        if name.split(".")[-1] in _PYTHON_READS:
            state = next(self.params.get(id(x)) or self.buffers.get(id(x)) or "a tensor computed "
                         "from them" for x in tensors if id(x) in self.params or id(x) in
                         self.buffers or id(x) in self.views or id(x) in self.param_derived
                         or id(x) in self.derived)
            self.refuse(name, f"the value of a parameter or buffer ({state}) is read into Python, "
                              "so it would be frozen as a constant; keep it a tensor")
            return
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        source = self._rearranged_parameter(func, args, kwargs) if from_params else None
        if source is not None:
            single = isinstance(out, torch.Tensor)
            rest = (tuple(args[1:]), dict(kwargs))
            for k, t in enumerate(outputs):
                if id(t) not in self.params:   # (``p.contiguous()`` may return ``p`` itself)
                    op = (func,) + rest + (None if single else k,)
                    self.views[id(t)] = (t, ParamView(source.name, source.ops + (op,)))
            return
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

    def _rearranged_parameter(self, func, args, kwargs):
        """The :class:`ParamView` (with no op yet for a plain parameter) that a call rearranges
        when it is an op of the ``rearrange`` rule whose only tensor argument is its first, a
        parameter or a view of one; else None."""
        rule = rules.lookup(func)
        if rule is None or rule.name != "rearrange" or not args or any(
                isinstance(x, torch.Tensor) for x in pytree.tree_leaves((args[1:], kwargs))):
            return None
        key = id(args[0])
        if key in self.params:
            return ParamView(self.params[key], ())
        return self.views[key][1] if key in self.views else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        written = written_tensor(func, args, kwargs) if tensors else None
        if written is not None and _storage(written) in self.guarded:
            args, kwargs = _into_copy(written, args, kwargs)  # the parameter stays intact
        out = func(*args, **kwargs)   # (the model's own errors propagate from here)
        try:
            return self._record(func, args, kwargs, tensors, written, out)
        except Exception as exc:  # the engine's own failure on this call: a refusal naming it
            self.refuse(function_name(func), f"the engine cannot record this call "
                                             f"({type(exc).__name__}: {exc})", out)
            return out

    def _record(self, func, args, kwargs, tensors, written, out):
        """Record the call ``func(*args, **kwargs)`` that returned ``out`` (see the class)."""
        name = function_name(func)
        drew = self.random.drawn_by(args, kwargs)
        if drew:
            self.refuse(name, drew, out)
            return out
        if not tensors:
            return out
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
        if any(t.is_complex() for t in out_tensors):
            self.refuse(name, "its result is complex: the path-lifting model is real", out)
            return out
        if any(id(x) in self.param_derived for x in tensors):
            self.refuse(name, "a tensor computed from parameters during forward (weight "
                              "normalisation, parametrisation) is not supported", out)
            return out
        enc_args, enc_kwargs = pytree.tree_map(self.encode, (tuple(args), dict(kwargs)))
        problem = rule.check(*enc_args, **enc_kwargs) if rule.check else None
        try:
            roles = rule.bind(enc_args, enc_kwargs)
        except TypeError as exc:
            problem = problem or f"its arguments do not match the rule {rule.name}: {exc}"
        viewed = [role for role, value in roles.items() if role not in rule.param_views and any(
            isinstance(leaf, ParamView) for leaf in pytree.tree_leaves(value))]
        if viewed and not problem:
            problem = (f"a parameter rearranged in forward (view, reshape, indexing) is its "
                       f"'{viewed[0]}' argument; such a parameter is taken as an elementwise weight "
                       "(x * gamma.view(...)) or bias (x + b.view(...)) only: pass the parameter "
                       "itself")
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
        dtype = out.dtype if isinstance(out, torch.Tensor) else tuple(t.dtype for t in out)
        self.nodes.append(Node(rule.name, func, enc_args, enc_kwargs, path, module_type, shape,
                               inplace=written is not None, dtype=dtype, roles=roles, facts=rule))
        return out


@contextlib.contextmanager
def _eval_mode_with_paths(model: nn.Module, paths: list):
    """Eval mode (the ``training`` flags set directly: a user ``train()`` override is not run)
    and a module-path stack for the duration; the hooks are removed afterwards (the flags are
    restored by :func:`_model_untouched`)."""
    handles = []
    seen = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        module.training = False
        entry = (name, type(module).__name__)
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, entry=entry: paths.append(entry)))
        handles.append(module.register_forward_hook(
            lambda _m, _a, _o: paths.pop() and None, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _contents(value):
    """A copy of the items of a mutable container (list, dict, set), None for anything else."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, set)):
        return list(value) if isinstance(value, list) else set(value)
    return None


def _put_back(container, items):
    """Refill ``container`` with the ``items`` :func:`_contents` copied from it."""
    if isinstance(container, list):
        container[:] = items
    else:
        container.clear()
        container.update(items)


@contextlib.contextmanager
def _model_untouched(model):
    """Leave ``model`` exactly as it was: every module's ``__dict__`` (plain attributes, flags,
    the parameter, buffer, submodule and hook dicts, and the items of other lists, dicts and
    sets it holds: forward may rebind or append to them), every parameter's ``data``,
    ``requires_grad`` and ``grad``, and buffer values bit for bit (train-mode batch statistics
    write into them inside the op). Yields a list that then names the parameters and buffers
    that forward rebound or wrote into: a refusal, as the function analysed would not be the
    model's (writes into parameters through the recorder already went to copies)."""
    modules = []
    for module in model.modules():
        state = dict(module.__dict__)
        modules.append((module, state, {k: c for k, v in state.items()
                                        if (c := _contents(v)) is not None}))
    params = [(n, p, p.data, p.requires_grad, p.grad, p._version)
              for n, p in model.named_parameters()]
    buffers = [(n, b, b.detach().clone()) for n, b in model.named_buffers()]
    changed: list = []
    try:
        yield changed
    finally:
        now_params = dict(model.named_parameters(remove_duplicate=False))
        now_buffers = dict(model.named_buffers(remove_duplicate=False))
        changed.extend(n for n, p, *_ in params if now_params.get(n) is not p)
        changed.extend(n for n, b, _ in buffers if now_buffers.get(n) is not b)
        for module, state, contents in modules:
            module.__dict__.clear()
            module.__dict__.update(state)
            for key, items in contents.items():
                _put_back(state[key], items)
        with torch.no_grad():
            for name, p, data, requires_grad, grad, version in params:
                if p.data.data_ptr() != data.data_ptr() or p.data.shape != data.shape \
                        or p.data.dtype != data.dtype:
                    p.data = data
                    changed.append(name)
                elif p._version != version:
                    changed.append(name)
                if p.requires_grad != requires_grad:
                    p.requires_grad_(requires_grad)
                if p.grad is not grad:
                    p.grad = grad
            for name, tensor, copy in buffers:
                if tensor.dtype != copy.dtype or tensor.shape != copy.shape:
                    tensor.data = copy
                    changed.append(name)
                elif not torch.equal(tensor, copy):
                    tensor.copy_(copy)
                    changed.append(name)


def _forward(model, inputs, what, recorder=None):
    """``model(*inputs)`` in eval mode without gradients, the model left as it was
    (:func:`_model_untouched`) and the random generators too; returns the output, the names of
    the parameters and buffers forward changed and why it draws random numbers (or None)."""
    paths = recorder.paths if recorder is not None else []
    random = recorder.random if recorder is not None else RandomDraws()
    with _model_untouched(model) as changed:
        try:
            with _eval_mode_with_paths(model, paths), recorder or contextlib.nullcontext():
                out = _run(model, inputs, what)
        finally:
            drew = (random.drawn_by((), {}) if recorder is None else None)
            random.restore()
    return out, changed, drew


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
            f"{type(model).__name__} failed to run {what} on inputs of shape {shapes}: "
            f"{type(exc).__name__}: {exc}") from exc


def check_capturable(model):
    """Refuse what cannot be captured at all: a non-module, TorchScript, meta tensors."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    scripted = next((name for name, m in model.named_modules()
                     if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        why = ("a TorchScript module (torch.jit.script / torch.jit.trace): it runs outside "
               "Python, where its operations cannot be captured; pass the original nn.Module")
        raise UnsupportedModelError(f"{type(model).__name__}: '{scripted or '<model>'}' is {why}",
                                    [("torch.jit", scripted, why)])
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise ModelCaptureError(
                f"'{name}' is on the meta device (no values): materialise the model first "
                "(model.to_empty(device=...) and load_state_dict)")


def trace(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport]:
    """Record ``model``; return the graph (None if unsupported) and the support report.

    The model runs on one random sample (batch size 1) under the recorder; a second run on a
    batch of that sample and another checks that the model treats samples independently and that
    the graph reproduces it (:func:`_check_per_sample`). The graph is not evaluated yet:
    :func:`pathmetric.core.support.capture` runs the lifted network on it once before anyone
    uses it."""
    check_capturable(model)
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
    recorder = _Recorder(params, buffers, [], state, {_storage(p) for p in model.parameters()})
    for x in inputs:
        recorder.add_input(x)
    out, changed, _ = _forward(model, inputs, "its forward", recorder)
    report = SupportReport(unsupported=recorder.unsupported)
    graph = _graph_of(recorder, out, inputs, report)
    if changed and report.ok:
        report.unsupported.append(
            ("forward", "", f"the forward changes {changed[:3]} (train-mode batch statistics, a "
                            "buffer or parameter rebound or its .data replaced, an in-place "
                            "update of model state); the engine restored them"))
    elif graph is not None and report.ok:
        problem = _check_per_sample(model, graph, examples, generator, inputs, out)
        if problem:
            report.unsupported.append(problem)
    low = sorted({str(t.dtype) for t in list(model.parameters()) + list(inputs)
                  if t.dtype in (torch.float16, torch.bfloat16)})
    if low:
        report.notes.append(LOW_PRECISION_NOTE.format(dtypes=", ".join(low)))
    if not report.ok:
        return None, report
    return graph, report


LOW_PRECISION_NOTE = (
    "the model computes in {dtypes}: certificates are about the network in exact arithmetic, and "
    "this model's own forward rounds every op (a relative 2^-8 per op in bfloat16, 2^-11 in "
    "float16), which can move its output by more than the bound; analyse its float32 copy")


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
        report.unsupported.append((function_name(node.func), node.module, why))
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
        for ref in references(node.args, node.kwargs):
            if isinstance(ref, (Param, ParamView)):
                used[ref.name] = used.get(ref.name, 0) + 1
    graph.uses = used
    graph.param_names = tuple(used)
    if not used:
        report.unsupported.append(
            ("model", "", "no parameter lies on a path from the input to the output (empty model)"))
        return None
    return graph


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
        if isinstance(x, ParamView):
            return x.of(named[x.name])
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


def _close(expected, got) -> bool:
    if expected.shape != got.shape:
        return False
    if not expected.numel():
        return True
    return torch.allclose(expected.double(), got.double(), rtol=1e-3, equal_nan=True,
                          atol=1e-4 * (1 + float(expected.double().nan_to_num(0, 0, 0).abs().max())))


def _tensors(out) -> list:
    """The tensors among a model's outputs, in order."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _check_per_sample(model, graph, examples, generator, first, first_out):
    """Why the graph may not stand for the model, or None. The model runs on a batch of the
    capture sample ``first`` and two new samples: each output must keep the batch dimension,
    row 0 must be the capture's output (the model treats samples independently: no reduction,
    roll or flip over dim 0, no branch on the batch size; three samples, as a roll composed with
    a flip is the identity on two, and a permutation of three rows that fixes two is the
    identity) and row 1 the graph's replay on its sample (nothing escaped capture: a value
    computed outside torch or with torch functions disabled, input-dependent control flow). The run must not draw random numbers either. A model that
    cannot run on a batch (``x.view(1, -1)``) is checked on one new sample alone."""
    others = [_sample_inputs(examples, generator, _first_parameter(model)) for _ in range(2)]
    batch = [torch.cat(rows) for rows in zip(first, *others)]
    alone = _tensors(first_out)
    try:
        out, _, drew = _forward(model, batch, "a batch of three samples")
        rows = [[t[k:k + 1] for t in _tensors(out)] for k in range(3)] if all(
            t.dim() > 0 and t.shape[0] == 3 for t in _tensors(out)) else None
    except ModelCaptureError:  # a model written for one sample at a time (x.view(1, -1))
        out, _, drew = _forward(model, others[0], "its forward on a second input")
        rows = [None, _tensors(out)]
        others = others[:1]
    if drew:
        return ("forward", "", drew)
    if rows is None or rows[0] is not None and (len(rows[0]) != len(alone) or not all(
            r.shape == a.shape for r, a in zip(rows[0], alone))):
        shapes = [tuple(t.shape) for t in alone], [tuple(t.shape) for t in _tensors(out)]
        return ("batch dimension", "", f"the outputs at batch size 1 ({shapes[0]}) and 3 "
                                       f"({shapes[1]}) are not one row per sample: an output "
                                       "without a batch dimension (summed over the batch, "
                                       "squeezed) or an op across the batch dimension; the "
                                       "function analysed must map each sample alone")
    if rows[0] is not None and not all(_close(r, a) for r, a in zip(rows[0], alone)):
        return ("batch dimension", "", "a sample's output changes when other samples are in the "
                                       "batch: an op mixes samples across the batch dimension "
                                       "(a reduction, roll, flip or normalisation over dim 0, a "
                                       "branch on the batch size); the function analysed must "
                                       "map each sample alone")
    for inputs, expected in zip(others[:1], rows[1:]):  # rows 0 and 1 right: row 2 is too
        with torch.no_grad():
            got = replay(graph, model, [x.clone() for x in inputs])
        if len(got) != len(expected) or not all(_close(e, g) for e, g in zip(expected, got)):
            single = None if rows[0] is None else _tensors(
                _forward(model, inputs, "a sample alone")[0])  # which of the two went wrong
            if single is not None and not all(_close(e, t) for e, t in zip(expected, single)):
                return ("batch dimension", "", "a sample's output changes when other samples "
                                               "are in the batch: an op mixes samples across "
                                               "the batch dimension; the function analysed must "
                                               "map each sample alone")
            return ("capture", "", f"the captured graph of {type(model).__name__} does not "
                                   "reproduce the model on another input: an operation escaped "
                                   "capture (a value computed outside torch or under "
                                   "torch._C.DisableTorchFunction, input-dependent Python "
                                   "control flow). Please report the model.")
    return None
