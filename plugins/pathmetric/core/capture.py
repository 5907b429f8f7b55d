"""Capture: turn an ``nn.Module`` and example inputs into the engine's own graph.

The model is run once, in eval mode, under the :class:`~pathmetric.core.recorder.Recorder`, a
``TorchFunctionMode`` that sees every torch function called on a tensor. Calls whose arguments
depend on the model input become graph nodes; module forms and functional forms of an op are one
node kind because every ``nn.Module`` of PyTorch ends in the same functional call (``nn.Conv2d``
in ``F.conv2d``, ``nn.ReLU`` in ``F.relu``, ...). Parameters and buffers are kept by name and read
again at every evaluation, so the cached graph stays valid when values change; it is captured
anew when anything else the model's forward reads changes (``support._cache_key``).

Python control flow runs concretely on the example shape, so shape-dependent code (``x.size(0)``,
input checks of segmentation models) is fine. Every run of the model leaves it and the random
generators as they were (:mod:`pathmetric.core.isolation`); a second run on a batch of three
samples checks that samples are mapped independently and that the graph reproduces the model
(:mod:`pathmetric.core.replay`): an op that escaped capture cannot give a silent wrong number.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import ModelCaptureError, SupportReport, UnsupportedModelError
from . import rules
from .ir import Graph, Param, ParamView, function_name, references
from .isolation import changes_refused, first_parameter, forward, restore_parameters, sample_inputs
from .recorder import Recorder, storage
from .replay import check_per_sample


def as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(x, torch.Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple of tensors, "
                    f"got {type(example_inputs).__name__}")


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


def check_finite(name, tensor):
    """ValueError if ``tensor`` (the parameter or buffer ``name``) is a float tensor with a NaN or
    infinite entry. One reduction decides it when the sum is finite (an infinite or NaN entry
    makes the sum infinite or NaN); a sum that overflows is decided entry by entry."""
    if tensor.is_floating_point() and not (bool(torch.isfinite(tensor.sum()))
                                           or bool(torch.isfinite(tensor).all())):
        raise ValueError(f"'{name}' holds NaN or infinite values")


def record(model: nn.Module, example_inputs) -> tuple[Graph | None, SupportReport]:
    """Record ``model``; return the graph (None if unsupported) and the support report.

    The model runs on one random sample (batch size 1) under the recorder; a second run on a
    batch of that sample and another checks that the model treats samples independently and that
    the graph reproduces it (:func:`check_per_sample`). The graph is not evaluated yet:
    :func:`pathmetric.core.support.capture` runs the lifted network on it once before anyone
    uses it."""
    check_capturable(model)
    examples = as_tuple(example_inputs)
    values: dict = {}   # the parameters' copy (restore_parameters), each checked in cache
    for name, p in model.named_parameters():
        check_finite(name, values.setdefault(name, p.detach().clone()))
    for name, b in model.named_buffers():
        check_finite(name, b)
    generator = torch.Generator().manual_seed(0)
    inputs = sample_inputs(examples, generator, first_parameter(model))
    params = {id(p): n for n, p in model.named_parameters()}
    buffers = {id(b): n for n, b in model.named_buffers()}
    state = {storage(t): n for n, t in list(model.named_parameters()) + list(model.named_buffers())
             if storage(t) is not None}
    recorder = Recorder(params, buffers, [], state, {storage(p) for p in model.parameters()})
    for x in inputs:
        recorder.add_input(x)
    first = [x.clone() for x in inputs]   # as drawn: a forward may write into its input
    try:   # (the parameters are compared with ``values`` after the last run: below)
        out, changed, drew = forward(model, inputs, "its forward", None, recorder)
    except Exception:
        restore_parameters(model, values)
        raise
    report = SupportReport(unsupported=recorder.unsupported)
    if drew:   # (Python's or NumPy's generator: the recorder checks torch's after every call)
        report.unsupported.append(("forward", "", drew))
    graph = _graph_of(recorder, out, inputs, report)
    if graph is not None and report.ok and not changed:
        # the check's runs compare the parameters with ``values``: a write of this run too
        problem = check_per_sample(model, graph, examples, generator, first, out, values)
        if problem:
            report.unsupported.append(problem)
    else:
        changed += [n for n in restore_parameters(model, values) if n not in changed]
        if changed and report.ok:
            report.unsupported.append(changes_refused(changed))
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
