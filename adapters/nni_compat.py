"""NNI 3.0's tracer made to work with recent torch: three patches, applied on import.

``concrete_trace`` (used by NNI's ``ModelSpeedup`` and its dependency detection) breaks on recent
torch in three places; :func:`apply_compat_patches` fixes them (idempotent),
:func:`revert_compat_patches` undoes them exactly, :func:`compat_patches` holds them for a block.
Importing :mod:`pathmetric.adapters.nni` imports this module, so NNI's tutorials (pruner ->
ModelSpeedup) work as written, with no call from the user. :func:`eval_mode` runs NNI's tracing
code on a model in eval mode.
"""
from __future__ import annotations

import contextlib
import functools

from nni.common.concrete_trace_utils import concrete_tracer
from torch import nn

__all__ = ["apply_compat_patches", "revert_compat_patches", "compat_patches", "eval_mode"]

_saved_tracer_state = None   # what apply_compat_patches replaced, while patched


def apply_compat_patches() -> bool:
    """Patch NNI 3.0's ``concrete_trace`` for recent torch; returns False if already patched.

    1. ``ConcreteTracer.default_autowrap_leaf_function`` lists every callable of ``torch._C``;
       recent torch has a few whose ``__module__`` is None (``TensorBase._make_subclass``, ...)
       and the tracer crashes on ``None.startswith``. They are dropped from the table (they are
       never called by a model's forward).
    2. ``Graph.eliminate_dead_code`` now calls ``node.is_impure(impure_random)``; NNI's
       replacement ``node_is_impure_wrapper(node)`` takes one argument. It is wrapped to accept
       and ignore the extra ones.

    3. ``F.max_pool2d`` now runs ``torch.jit.annotate(list[int], [])``; while tracing, ``list``
       is NNI's wrapper object, which cannot be subscripted. The wrappers of ``list``, ``dict``,
       ... get a ``__getitem__`` that returns ``clz[item]`` (the generic alias).

    All three are undone exactly by :func:`revert_compat_patches`.
    """
    global _saved_tracer_state
    if _saved_tracer_state is not None:
        return False
    table = concrete_tracer.ConcreteTracer.default_autowrap_leaf_function
    impure, iterable = (concrete_tracer.node_is_impure_wrapper,
                        concrete_tracer._create_wrapped_leaf_iterable_class)
    _saved_tracer_state = (dict(table), impure, iterable)
    for func in [f for f in table if getattr(f, "__module__", "") is None]:
        del table[func]

    @functools.wraps(impure)
    def node_is_impure_wrapper(node, *_args, **_kwargs):
        return impure(node)

    @functools.wraps(iterable)
    def create_wrapped_leaf_iterable_class(tracer, clz):
        wrapper = iterable(tracer, clz)
        type(wrapper).__getitem__ = lambda _self, item: clz[item]
        return wrapper

    concrete_tracer.node_is_impure_wrapper = node_is_impure_wrapper
    concrete_tracer._create_wrapped_leaf_iterable_class = create_wrapped_leaf_iterable_class
    return True


def revert_compat_patches() -> None:
    """Restore NNI's tracer exactly as it was before :func:`apply_compat_patches`."""
    global _saved_tracer_state
    if _saved_tracer_state is None:
        return
    table, impure, iterable = _saved_tracer_state
    live = concrete_tracer.ConcreteTracer.default_autowrap_leaf_function
    live.clear()
    live.update(table)
    concrete_tracer.node_is_impure_wrapper = impure
    concrete_tracer._create_wrapped_leaf_iterable_class = iterable
    _saved_tracer_state = None


@contextlib.contextmanager
def compat_patches():
    """The compatibility patches for the duration of the block (left as found afterwards)."""
    applied = apply_compat_patches()
    try:
        yield
    finally:
        if applied:
            revert_compat_patches()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Every module of ``model`` in eval mode for the block (NNI's tracing and shape-tracking
    forwards then leave BatchNorm statistics alone); the flags are restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.train(flag)


apply_compat_patches()   # on import: NNI's tutorials (pruner -> ModelSpeedup) work as written
