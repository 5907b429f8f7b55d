"""The recorder: a ``TorchFunctionMode`` that turns the torch calls of one run of the model into
graph nodes (:class:`Recorder`).

Nothing the model does may escape the graph unseen; each of these is tracked or refused:

- in-place ops: on a whole activation they are graph nodes like any other; one that writes through
  a view or alias (``y[:, :2].mul_(2)``) leaves the other aliases *stale*, and reading a stale
  tensor is refused; writing into a parameter or buffer is refused (writes into parameters go
  to copies; buffers, which train-mode ``F.batch_norm`` writes inside the op, are restored bit
  for bit after every run: :mod:`pathmetric.core.isolation`);
- tensors computed from buffers in forward (``self.s.view(1, -1, 1, 1)``) are :class:`Derived`
  references, recomputed from the buffers of the model evaluated (and compared between two
  models like the buffers themselves);
- a parameter passed through ops that only move its entries (``gamma.view(1, -1, 1, 1)``,
  ``gamma[:, None, None]``: the ``rearrange`` rule's ops) is a :class:`ParamView`, still a
  parameter coordinate; any other tensor computed from parameters (weight normalisation) is
  refused where it is used;
- parameters or buffers read into Python (``float(p)``, ``p.item()``) are refused: the number
  would be frozen into the graph;
- calls that draw random numbers (the default generators move, or a ``torch.Generator`` is
  passed) and calls with a complex result are refused; a failure of the engine's own code on a
  call is a refusal naming the call, not the model's error.
"""
from __future__ import annotations

import functools
import inspect
import weakref

import torch
from torch.overrides import TorchFunctionMode

from . import rules
from .ir import Buffer, Derived, Node, Param, ParamView, Value, function_name, leaves, mapped
from .isolation import RandomDraws

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


def storage(tensor):
    """The address of ``tensor``'s memory (None for an empty or storage-less tensor)."""
    try:
        return tensor.untyped_storage().data_ptr() if tensor.numel() else None
    except (RuntimeError, NotImplementedError):
        return None


class Recorder(TorchFunctionMode):
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
        self.values: dict = {}          # id(tensor) -> (weak reference, Value or None if tainted)
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
        """Map ``tensor`` to its graph value for as long as it lives: a weak reference, so the
        run frees activations as the model's own forward does (holding them all costs about 0.4
        of a forward on resnet50, in fresh memory) and the entry goes with the tensor, before a
        new one can take its id."""
        key, address = id(tensor), storage(tensor)
        self.values[key] = (weakref.ref(tensor, functools.partial(self._gone, key, address)), value)
        if address is not None:
            self.by_storage.setdefault(address, set()).add(key)

    def _gone(self, key, address, _reference):
        self.values.pop(key, None)
        self.by_storage.get(address, set()).discard(key)

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
        for t in leaves(out):
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
        address = storage(written)
        if address is None:
            return
        if address in self.state:
            self.refuse(name, f"writes into the model's parameter or buffer "
                              f"'{self.state[address]}' during forward (the engine restores it, "
                              "but the function analysed would not be the model's)")
        path = self.where()[0]
        for key in self.by_storage.get(address, ()):
            entry = self.values.get(key)
            if key != id(written) and entry is not None and entry[1] is not None:
                self.stale[key] = (entry[0](), name, path)   # (held: its id stays its own)

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
        outputs = [t for t in leaves(out) if isinstance(t, torch.Tensor)]
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
        enc_args, enc_kwargs = mapped(self.encode, (tuple(args), dict(kwargs)))
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
        when its rule only moves entries (``moves_entries``) and its only tensor argument is its
        first, a parameter or a view of one; else None."""
        rule = rules.lookup(func)
        if rule is None or not rule.moves_entries or not args or any(
                isinstance(x, torch.Tensor) for x in leaves((args[1:], kwargs))):
            return None
        key = id(args[0])
        if key in self.params:
            return ParamView(self.params[key], ())
        return self.views[key][1] if key in self.views else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        arguments = leaves((args, kwargs))
        tensors = [x for x in arguments if isinstance(x, torch.Tensor)]
        written = written_tensor(func, args, kwargs) if tensors else None
        if written is not None and storage(written) in self.guarded:
            args, kwargs = _into_copy(written, args, kwargs)  # the parameter stays intact
        out = func(*args, **kwargs)   # (the model's own errors propagate from here)
        try:
            return self._record(func, args, kwargs, arguments, written, out)
        except Exception as exc:  # noqa: BLE001  (the engine's own failure on this call: refused)
            self.refuse(function_name(func), f"the engine cannot record this call "
                                             f"({type(exc).__name__}: {exc})", out)
            return out

    def _record(self, func, args, kwargs, arguments, written, out):
        """Record the call ``func(*args, **kwargs)`` that returned ``out`` (see the class);
        ``arguments`` are its arguments flattened."""
        name = function_name(func)
        drew = self.random.drawn_by(arguments, everything=False)  # (the rest: per run)
        if drew:
            self.refuse(name, drew, out)
            return out
        tensors = [x for x in arguments if isinstance(x, torch.Tensor)]
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
        out_tensors = [t for t in leaves(out) if isinstance(t, torch.Tensor)]
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
        enc_args, enc_kwargs = mapped(self.encode, (tuple(args), dict(kwargs)))
        problem = rule.check(*enc_args, **enc_kwargs) if rule.check else None
        try:
            roles = rule.bind(enc_args, enc_kwargs)
        except TypeError as exc:
            problem = problem or f"its arguments do not match the rule {rule.name}: {exc}"
        viewed = [role for role, value in roles.items() if role not in rule.param_views and any(
            isinstance(leaf, ParamView) for leaf in leaves(value))]
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
                               inplace=written is not None, dtype=dtype, roles=roles, rule=rule))
        return out
