"""Support: the captured graph every analysis uses, decided once and cached per model.

A model is supported when capture records it (:func:`pathmetric.core.capture.trace`) *and* the
lifted network evaluates on its graph once (a rule may refuse at evaluation: PReLU slopes
outside [0, 1], ...). Both decisions are made here, above the capture and the interpreter, so
:func:`check_support` and every computation share them. The graph is cached per model and
captured anew when the model's structure changes (:func:`_cache_key`).
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ..errors import SupportReport, UnsupportedModelError
from . import capture as recording
from .capture import as_tuple
from .algebras import NormLifting
from .ir import Graph


def trace(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport]:
    """Capture ``model`` and evaluate its lifted network once; the graph (None if unsupported)
    and the support report."""
    graph, report = recording.trace(model, example_inputs)
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
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
        if ev.node is None:
            raise
        report.unsupported.append(
            (ev.node.rule, ev.node.module, f"the lifted network cannot evaluate this call "
                                           f"({type(exc).__name__}: {exc})"))


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
    recording.check_capturable(model)
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


def cached_graph(model: nn.Module) -> Graph | None:
    """The graph last captured for ``model`` (None if it has not been captured)."""
    per_model = _CACHE.get(model)
    return next(iter(per_model.values())) if per_model else None


def forget(model: nn.Module) -> None:
    """Drop the cached graph of ``model`` (the next analysis captures it anew)."""
    _CACHE.pop(model, None)
