"""Support: the captured graph every analysis uses, decided once and cached per model.

A model is supported when capture records it (:func:`pathmetric.core.capture.record`) *and* the
lifted network evaluates on its graph once (a rule may refuse at evaluation: PReLU slopes
outside [0, 1], ...). Both decisions are made here, above the capture and the interpreter, so
:func:`check_support` and every computation share them. The graph is cached per model and
captured anew when the model's structure changes (:func:`_cache_key`).
"""
from __future__ import annotations

import enum
import inspect
import weakref

import torch
from torch import nn

from ..errors import SupportReport, UnsupportedModelError
from .algebras import NormLifting
from .capture import as_tuple, check_capturable, record
from .ir import Graph
from .rules.quantization import module_state


def decide(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport]:
    """Capture ``model`` and evaluate its lifted network once: the support decision, the graph
    (None if unsupported) and the support report."""
    graph, report = record(model, example_inputs)
    if graph is None:
        return None, report
    _evaluate_once(graph, model, report)
    return (graph if report.ok else None), report


def _evaluate_once(graph, model, report):
    """Run the lifted network once, so that ``check_support`` and every computation share one
    decision: whatever a rule refuses (PReLU slopes outside [0, 1], ...) or cannot evaluate is
    reported here, at capture, with its op and module."""
    ev = NormLifting(graph, model)
    try:
        with torch.no_grad():
            ev.run()
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


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_PLAIN = {bool, int, float, str, type(None), complex, bytes}
_VALUES = (torch.dtype, torch.device, torch.memory_format, torch.layout, enum.Enum, slice, range)
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
#: tensors held as plain attributes up to this size are keyed by value (their bytes), larger
#: ones by identity, storage and version counter
_TENSOR_BYTES_BY_VALUE = 1 << 22


def _fingerprint(value, depth=0):
    """``value`` (state a forward may read) as a key that changes whenever the value does:
    plain values as they are, containers item by item, numpy values and small tensors by their
    bytes (a ``.data`` write bumps no version counter), callables and other objects by
    identity and their attributes."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, torch._C.TensorBase):  # (the torch.Tensor check is slower)
        key = (id(value), value._version, value.data_ptr(), value.dtype, tuple(value.shape))
        if value.numel() * value.element_size() <= _TENSOR_BYTES_BY_VALUE and not value.is_meta:
            data = value.detach().cpu().contiguous().reshape(-1)
            key += (data.view(torch.uint8).numpy().tobytes(),)
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
    if isinstance(value, _VALUES):
        return (kind, value)
    if kind.__module__ == "numpy":
        return ("numpy", str(getattr(value, "dtype", kind)), getattr(value, "shape", ()),
                value.tobytes() if hasattr(value, "tobytes") else repr(value))
    if isinstance(value, nn.Module) or callable(value):
        return ("object", id(value))
    attributes = getattr(value, "__dict__", None)
    return ("object", id(value), _fingerprint(attributes, depth + 1) if attributes else None)


def _attributes(module) -> tuple:
    """What a module's forward may read besides parameters and buffers: every attribute that is
    not the module's own bookkeeping (settings, flags, lists and dicts, tensors, numpy values,
    an instance-level ``forward``: :func:`_fingerprint`) and its forward hooks (handle ids)."""
    state = module.__dict__
    out = [(key, _fingerprint(value)) for key, value in state.items()
           if key not in _MODULE_INTERNALS]
    out.extend(tuple(state[key]) for key in _HOOKS if state.get(key))
    return tuple(out)


def _code_state(cls, seen: dict) -> tuple:
    """For a module class defined outside torch: its class attributes along the MRO (settings,
    methods by identity) and the globals and closure cells its ``forward`` reads, following the
    plain functions it calls two levels deep; ``()`` for torch's own classes, whose code reads
    only module attributes. ``seen`` caches the classes of one key."""
    if cls in seen:
        return seen[cls]
    out: list = []
    for klass in cls.__mro__:
        if klass is nn.Module or klass.__module__.startswith("torch."):
            break
        out.append((klass, _fingerprint({k: v for k, v in vars(klass).items()
                                         if not (k.startswith("__") and k.endswith("__"))})))
    if out:
        out.append(_reads(getattr(cls, "forward", None), 2))
    seen[cls] = tuple(out)
    return seen[cls]


def _reads(function, depth) -> tuple:
    """The globals and closure cells ``function`` reads (names in its code), fingerprinted;
    functions among them are followed ``depth`` levels deeper."""
    code = getattr(function, "__code__", None)
    if code is None or depth < 0:
        return ()
    names = getattr(function, "__globals__", {})
    cells = tuple(c.cell_contents for c in (function.__closure__ or ()) if _filled(c))
    values = [(name, names[name]) for name in code.co_names if name in names] + list(
        enumerate(cells))
    return tuple((name, _fingerprint(value), _reads(value, depth - 1)
                  if inspect.isfunction(value) else ()) for name, value in values
                 if not inspect.ismodule(value) and not isinstance(value, type))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def _cache_key(model: nn.Module, example_inputs):
    """What the captured graph depends on besides parameter and buffer values: input shapes, the
    module tree (identities, types, forward code, hooks, every attribute: :func:`_attributes`),
    what user module classes read (class attributes, globals: :func:`_code_state`), the
    identities and shapes of parameters and buffers, and torch's global module hooks
    (``Tensor.size`` is read unbound: attribute access on a ``Parameter`` costs tens of
    microseconds)."""
    from torch.nn.modules import module as module_globals
    shapes = tuple((tuple(x.shape[1:]), x.dtype) for x in as_tuple(example_inputs))
    size = torch.Tensor.size
    classes: dict = {}
    tree = tuple(
        (name, id(m), type(m), type(m).forward, _attributes(m), _code_state(type(m), classes),
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
    check_capturable(model)
    key = _cache_key(model, example_inputs)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    graph, report = decide(model, example_inputs)
    if graph is None:
        raise _refusal(model, report.unsupported)
    per_model.clear()
    per_model[key] = graph
    return graph


def check_support(model: nn.Module, example_inputs) -> SupportReport:
    """Report every operation of ``model`` outside the path-lifting model, at once: the same
    decision as every computation (which raise :class:`UnsupportedModelError` with this list)."""
    try:
        _, report = decide(model, example_inputs)
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
