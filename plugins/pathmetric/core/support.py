"""Support: the captured graph every analysis uses, decided once and cached per model.

A model is supported when capture records it (:func:`pathmetric.core.capture.record`) *and* the
lifted network evaluates on its graph once (a rule may refuse at evaluation: PReLU slopes
outside [0, 1], ...). Both decisions are made here, above the capture and the interpreter, so
:func:`check_support` and every computation share them. The graph is cached per model and
captured anew when the model's structure changes (:func:`_cache_key`).
"""
from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import types
import weakref

import torch
from torch import nn

from ..errors import SupportReport, UnsupportedModelError
from .algebras import NormLifting
from .capture import as_tuple, check_capturable, record
from .ir import Graph
from .rules.quantization import module_state

#: the lifted pass run once at capture: the default path-norm pass (``q = 1``, float64, the
#: model's own parameters), whose outputs a cold ``path_norm`` uses instead of running it again
TRIAL = {"q": 1.0, "dtype": torch.float64}


def decide(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport, list | None]:
    """Capture ``model`` and evaluate its lifted network once (:data:`TRIAL`): the support
    decision, the graph (None if unsupported), the support report and the lifted outputs of
    that evaluation (None if unsupported)."""
    graph, report = record(model, example_inputs)
    if graph is None:
        return None, report, None
    outputs = _evaluate_once(graph, model, report)
    return (graph, report, outputs) if report.ok else (None, report, None)


def _evaluate_once(graph, model, report):
    """Run the lifted network once, so that ``check_support`` and every computation share one
    decision: whatever a rule refuses (PReLU slopes outside [0, 1], ...) or cannot evaluate is
    reported here, at capture, with its op and module. Returns the lifted outputs (None if
    refused)."""
    ev = NormLifting(graph, model, **TRIAL)
    try:
        with torch.no_grad():
            return ev.run()[0]
    except UnsupportedModelError as exc:
        report.unsupported.extend(exc.unsupported)
    except FloatingPointError as exc:
        if ev.node is None:
            raise
        report.unsupported.append(
            (ev.node.rule_name, ev.node.module, "its lifted value is not finite (a division by a "
                                           "zero buffer, a negative running variance, an "
                                           f"overflow): {exc}"))
    except Exception as exc:  # a rule that cannot evaluate this call: refused, naming the op
        if ev.node is None:
            raise
        report.unsupported.append(
            (ev.node.rule_name, ev.node.module, f"the lifted network cannot evaluate this call "
                                           f"({type(exc).__name__}: {exc})"))
    return None


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_PLAIN = {bool, int, float, str, type(None), complex, bytes}
_VALUES = (torch.dtype, torch.device, torch.memory_format, torch.layout, enum.Enum, range)
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _fingerprint(value, depth=0):
    """``value`` (state a forward may read) as a key that changes whenever the value does:
    plain values as they are, containers item by item, numpy values by their bytes, tensors by
    the SHA-256 digest of their bytes besides identity and version (a ``.data`` write bumps no
    version counter; the digest costs about 1 ms per MiB), callables and other objects by
    identity and their attributes."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, torch._C.TensorBase):  # (the torch.Tensor check is slower)
        key = (id(value), value._version, value.data_ptr(), value.dtype, tuple(value.shape))
        if not value.is_meta:
            data = value.detach().cpu().contiguous().reshape(-1)
            key += (hashlib.sha256(data.view(torch.uint8).numpy()).digest(),)
        return key
    if depth > 4:
        return ("object", id(value))
    if kind in (tuple, list) or isinstance(value, (tuple, list)):
        return (kind,) + tuple(_fingerprint(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return (kind,) + tuple((_fingerprint(k, depth + 1), _fingerprint(v, depth + 1))
                               for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return (kind, frozenset(_fingerprint(v, depth + 1) for v in value))
    if isinstance(value, slice):   # unhashable before Python 3.12
        return (kind,) + tuple(_fingerprint(v, depth + 1)
                               for v in (value.start, value.stop, value.step))
    if isinstance(value, _VALUES):
        return (kind, value)
    if kind.__module__ == "numpy":
        return ("numpy", str(getattr(value, "dtype", kind)), getattr(value, "shape", ()),
                value.tobytes() if hasattr(value, "tobytes") else repr(value))
    if isinstance(value, nn.Module) or callable(value):
        return ("object", id(value))
    attributes = getattr(value, "__dict__", None)
    return ("object", id(value), _fingerprint(attributes, depth + 1) if attributes else None)


def _attributes(module, seen: dict) -> tuple:
    """What a module's forward may read besides parameters and buffers: every attribute that is
    not the module's own bookkeeping (settings, flags, lists and dicts, tensors, numpy values,
    an instance-level ``forward``: :func:`_fingerprint`; what a function held as an attribute
    reads: :func:`_reads`) and its forward hooks (handle ids)."""
    state = module.__dict__
    out = [(key, _fingerprint(value)) for key, value in state.items()
           if key not in _MODULE_INTERNALS]
    out.extend(_reads(value, seen) for value in state.values() if type(value) is types.FunctionType)
    out.extend(tuple(state[key]) for key in _HOOKS if state.get(key))
    return tuple(out)


def _code_state(cls, seen: dict) -> tuple:
    """For a module class defined outside torch: its class attributes along the MRO (settings,
    methods by identity) and what the functions among them read (:func:`_reads`: ``forward``
    and every other method, which forward may call through ``self``); ``()`` for torch's own
    classes, whose code reads only module attributes. ``seen`` holds the classes and functions
    already in this key."""
    if cls in seen:
        return seen[cls]
    out: list = []
    for klass in cls.__mro__:
        if klass is nn.Module or klass.__module__.startswith("torch."):
            break
        state = vars(klass)
        out.append((klass, _fingerprint({k: v for k, v in state.items()
                                         if not (k.startswith("__") and k.endswith("__"))}),
                    tuple(_reads(f, seen) for f in map(_function_of, state.values()) if f)))
    seen[cls] = tuple(out)
    return seen[cls]


def _function_of(value):
    """The plain function behind a class attribute (a method, static or class method, a
    property's getter), or None."""
    value = getattr(value, "fget", value)
    value = getattr(value, "__func__", value)
    return value if inspect.isfunction(value) else None


def _own(value) -> bool:
    """Whether ``value`` (a function or module) belongs to torch, whose code reads no model
    state outside the module attributes."""
    name = getattr(value, "__module__" if inspect.isfunction(value) else "__name__", None) or ""
    return name == "torch" or name.startswith("torch.")


def _reads(function, seen: dict) -> tuple:
    """What ``function`` reads besides its arguments, fingerprinted: the globals named in its
    code and in the code nested in it (inner functions, comprehensions, generator
    expressions), ``module.NAME`` for a module among them, and its closure cells; the
    functions among them are followed to any depth (each once per key: ``seen``), torch's own
    excepted."""
    code = getattr(function, "__code__", None)
    if code is None or function in seen:
        return ()
    seen[function] = True
    names = _names(code)
    space = getattr(function, "__globals__", {})
    values = [(name, space[name]) for name in names if name in space]
    values += [(f"{name}.{attribute}", vars(value)[attribute]) for name, value in list(values)
               if inspect.ismodule(value) and not _own(value)
               for attribute in names if attribute in vars(value)]
    values += [(k, c.cell_contents) for k, c in enumerate(function.__closure__ or ())
               if _filled(c)]
    return tuple((name, _fingerprint(value), _reads(value, seen)
                  if inspect.isfunction(value) and not _own(value) else ())
                 for name, value in values
                 if not inspect.ismodule(value) and not isinstance(value, type))


@functools.lru_cache(maxsize=4096)
def _names(code) -> tuple:
    """The global and attribute names of ``code`` and of the code objects nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_names(const))
    return tuple(sorted(names))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def _cache_key(model: nn.Module, example_inputs):
    """What the captured graph depends on besides parameter and buffer values: input shapes, the
    module tree (identities, types, forward code, hooks, every attribute: :func:`_attributes`),
    what user module classes and their functions read (class attributes, globals, module
    attributes, closure cells, to any call depth: :func:`_code_state`), the
    identities and shapes of parameters and buffers, and torch's global module hooks
    (``Tensor.size`` is read unbound: attribute access on a ``Parameter`` costs tens of
    microseconds)."""
    from torch.nn.modules import module as module_globals
    shapes = tuple((tuple(x.shape[1:]), x.dtype) for x in as_tuple(example_inputs))
    size = torch.Tensor.size
    seen: dict = {}   # the classes and functions already in the key
    tree = tuple(
        (name, id(m), type(m), type(m).forward, _attributes(m, seen), _code_state(type(m), seen),
         tuple((k, id(t), size(t)) for k, t in m._parameters.items() if t is not None),
         tuple((k, id(t), size(t)) for k, t in m._buffers.items() if t is not None),
         module_state(m))   # (the flags a quantization module's rule reads at capture)
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
    return capture_lifted(model, example_inputs)[0]


def capture_lifted(model: nn.Module, example_inputs, q=None, dtype=None,
                   overrides=None) -> tuple[Graph, list | None]:
    """:func:`capture`, with the lifted outputs of the capture's evaluation when this call
    captured the model and ``q``, ``dtype`` and ``overrides`` are that evaluation's
    (:data:`TRIAL`, no overrides): the pass the caller would run next, already run on the
    same, unchanged model. None otherwise (run the pass)."""
    check_capturable(model)
    key = _cache_key(model, example_inputs)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key], None
    graph, report, outputs = decide(model, example_inputs)
    if graph is None:
        raise _refusal(model, report.unsupported)
    per_model.clear()
    per_model[key] = graph
    same = overrides is None and {"q": q, "dtype": dtype} == TRIAL
    return graph, (outputs if same else None)


def check_support(model: nn.Module, example_inputs) -> SupportReport:
    """Report every operation of ``model`` outside the path-lifting model, at once: the same
    decision as every computation (which raise :class:`UnsupportedModelError` with this list)."""
    try:
        _, report, _ = decide(model, example_inputs)
    except UnsupportedModelError as exc:
        return SupportReport(unsupported=exc.unsupported)
    return report


def output_head(model: nn.Module, example_inputs) -> str | None:
    """The softmax head set aside after the logits ('softmax' or 'log_softmax'), or None, read off
    the cached graph (:func:`check_support` captures anew at every call); UnsupportedModelError
    for a model outside the path-lifting model."""
    return capture(model, example_inputs).head


def cached_graph(model: nn.Module) -> Graph | None:
    """The graph last captured for ``model`` (None if it has not been captured)."""
    per_model = _CACHE.get(model)
    return next(iter(per_model.values())) if per_model else None


def forget(model: nn.Module) -> None:
    """Drop the cached graph of ``model`` (the next analysis captures it anew)."""
    _CACHE.pop(model, None)
