"""Validation of a capture: the graph evaluated with the model's own semantics (:func:`replay`) and
the per-sample check (:func:`check_per_sample`) that the graph stands for the model on every
batch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import ModelCaptureError
from .ir import Graph, Value
from .isolation import changes_refused, first_parameter, forward, sample_inputs
from .recorder import storage


def replay(graph: Graph, model: nn.Module, inputs, before=None):
    """Evaluate the captured graph with the model's own semantics (used to validate a capture).

    An in-place call writes into a copy when the tensor it writes is read again (by a later
    operation, as an output), is not a graph value or shares memory with an input, so the
    replay computes what the graph says, not what an aliasing write would do to other tensors
    (the recorder refuses a read of an alias that an in-place call changed); a value is dropped
    after its last reader. ``before(index, node, resolve)``, when given, is called before each
    operation runs, ``resolve`` giving the values it reads (graph values, the model's
    parameters and buffers)."""
    named: dict = dict(model.named_parameters())
    named.update(model.named_buffers())
    results: list = []
    reference = graph.resolver(named)
    drops = graph.last_reads()
    fed = {storage(x) for x in inputs}

    def resolve(x):
        if isinstance(x, Value):
            value = results[x.node]
            return value if x.item is None else value[x.item]
        return reference(x)

    feed = iter(inputs)
    for index, node in enumerate(graph.nodes):
        if node.rule_name == "input":
            results.append(next(feed))
            continue
        if before is not None:
            before(index, node, resolve)
        args, kwargs = node.call(resolve)
        written = node.args[0] if node.inplace else None
        if node.inplace and not (isinstance(written, Value) and written.node in drops.get(
                index, ()) and storage(args[0]) not in fed):
            args = (args[0].clone(),) + tuple(args[1:])
        results.append(node.func(*args, **kwargs))
        for i in drops.get(index, ()):
            results[i] = None
    return [resolve(v) for v in graph.head_outputs or graph.outputs]


def close(expected, got) -> bool:
    if expected.shape != got.shape:
        return False
    if not expected.numel():
        return True
    return torch.allclose(expected.double(), got.double(), rtol=1e-3, equal_nan=True,
                          atol=1e-4 * (1 + float(expected.double().nan_to_num(0, 0, 0).abs().max())))


def output_tensors(out) -> list:
    """The tensors among a model's outputs, in order."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def check_per_sample(model, graph, examples, generator, first, first_out, values):
    """Why the graph may not stand for the model, or None: :func:`_check_draw`, or for a graph
    with quantization points :func:`_check_quantized_draw`."""
    check = _check_quantized_draw if graph.quantized() else _check_draw
    return check(model, graph, examples, generator, first, first_out, values)


MIXES_SAMPLES = ("batch dimension", "", "a sample's output changes when other samples are in "
                 "the batch: an op mixes samples across the batch dimension (a reduction, roll, "
                 "flip or normalisation over dim 0, a branch on the batch size); the function "
                 "analysed must map each sample alone")


def _escaped(model, where: str, end: str) -> tuple:
    """The refusal of a graph whose replay ``where`` differs from the model's run."""
    return ("capture", "", f"the captured graph of {type(model).__name__} does not reproduce "
                           f"the model {where}: an operation escaped capture (a value computed "
                           "outside torch or under torch._C.DisableTorchFunction, "
                           f"input-dependent Python control flow){end}")


def _check_quantized_draw(model, graph, examples, generator, first, first_out, values):
    """:func:`_check_draw` for a graph with quantization points, whose rows are compared only
    with rows of batches of the same size: a float value on a rounding boundary rounds to two
    grid steps when the batch size changes the order of a conv's or a matmul's sums (measured:
    vgg11_bn under X86InductorQuantizer, outputs 2% apart between batch sizes 1 and 3, 0 apart
    between two batches of three), which is not an op mixing samples. The model runs on the
    batch ``(first, a, b)`` and on each of its samples three times over, ``(a, a, a)``: each
    row of the first batch must be row 0 of its sample's copies (no op mixes samples: a
    reduction over the batch, a roll, a flip, a row broadcast), and the graph's replay on the
    first batch must give the model's output on it, every row (nothing escaped capture; a
    branch on the batch size, which the graph, captured at batch size 1, does not take, changes
    it). A model or graph that cannot run on a batch is checked as :func:`_check_draw` checks
    it, on one new sample alone."""
    samples = [first] + [sample_inputs(examples, generator, first_parameter(model))
                         for _ in range(2)]
    batch = [torch.cat(rows) for rows in zip(*samples)]
    runs = []
    try:
        for inputs, what in [(batch, "a batch of three samples")] + [
                ([torch.cat([t] * 3) for t in sample], "a batch of three copies")
                for sample in samples]:
            out, changed, drew = forward(model, inputs, what, values)
            if changed:
                return changes_refused(changed)
            if drew:
                return ("forward", "", drew)
            runs.append(output_tensors(out))
        with torch.no_grad():
            got = replay(graph, model, [t.clone() for t in batch])
    except (ModelCaptureError, RuntimeError):   # one sample at a time (x.view(1, -1))
        return _check_draw(model, graph, examples, generator, first, first_out, values)
    out, copies = runs[0], runs[1:]
    if not all(t.dim() > 0 and t.shape[0] == 3 for run in runs for t in run):
        return _check_draw(model, graph, examples, generator, first, first_out, values)
    if not all(close(c[:1], t[k:k + 1]) for k, run in enumerate(copies)
               for c, t in zip(run, out)):
        return MIXES_SAMPLES
    if len(got) != len(out) or not all(close(t, g) for t, g in zip(out, got)):
        return _escaped(model, "on a batch of three samples",
                        " or the model branches on the batch size")
    return None


def _check_draw(model, graph, examples, generator, first, first_out, values):
    """Why the graph may not stand for the model, or None. The model runs on a batch of the
    capture sample ``first`` and two new samples: each output must keep the batch dimension,
    row 0 must be the capture's output (the model treats samples independently: no reduction,
    roll or flip over dim 0, no branch on the batch size; three samples, as a roll composed with
    a flip is the identity on two, and a permutation of three rows that fixes two is the
    identity) and row 1 the graph's replay on its sample (nothing escaped capture: a value
    computed outside torch or with torch functions disabled, input-dependent control flow). The
    run must not draw random numbers or change the model either (its parameters compared with
    their copy ``values``, which also finds a write of the recording run that bumped no version
    counter). A model that cannot run on a batch (``x.view(1, -1)``) is checked on one new
    sample alone."""
    others = [sample_inputs(examples, generator, first_parameter(model)) for _ in range(2)]
    batch = [torch.cat(rows) for rows in zip(first, *others)]
    alone = output_tensors(first_out)
    try:
        out, changed, drew = forward(model, batch, "a batch of three samples", values)
        rows = [[t[k:k + 1] for t in output_tensors(out)] for k in range(3)] if all(
            t.dim() > 0 and t.shape[0] == 3 for t in output_tensors(out)) else None
    except ModelCaptureError:  # a model written for one sample at a time (x.view(1, -1))
        out, changed, drew = forward(model, others[0], "its forward on a second input", values)
        rows = [None, output_tensors(out)]
        others = others[:1]
    if changed:
        return changes_refused(changed)
    if drew:
        return ("forward", "", drew)
    if rows is None or rows[0] is not None and (len(rows[0]) != len(alone) or not all(
            r.shape == a.shape for r, a in zip(rows[0], alone))):
        shapes = [tuple(t.shape) for t in alone], [tuple(t.shape) for t in output_tensors(out)]
        return ("batch dimension", "", f"the outputs at batch size 1 ({shapes[0]}) and 3 "
                                       f"({shapes[1]}) are not one row per sample: an output "
                                       "without a batch dimension (summed over the batch, "
                                       "squeezed) or an op across the batch dimension; the "
                                       "function analysed must map each sample alone")
    if rows[0] is not None and not all(close(r, a) for r, a in zip(rows[0], alone)):
        return MIXES_SAMPLES
    for inputs, expected in zip(others[:1], rows[1:]):  # rows 0 and 1 right: row 2 is too
        with torch.no_grad():
            got = replay(graph, model, [x.clone() for x in inputs])
        if len(got) != len(expected) or not all(close(e, g) for e, g in zip(expected, got)):
            single = None if rows[0] is None else output_tensors(
                forward(model, inputs, "a sample alone", values)[0])  # which went wrong
            if single is not None and not all(close(e, t) for e, t in zip(expected, single)):
                return MIXES_SAMPLES
            return _escaped(model, "on another input", ". Please report the model.")
    return None
