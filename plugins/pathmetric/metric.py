"""Certified path-metrics between two parameter sets of one architecture (arXiv 2405.15006)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .core.algebras import PairLifting, total_of
from .core.capture import as_tuple
from .core.interpreter import named_tensors, precision_dtype
from .core.ir import fact
from .core.scaled import scaled_sum, to_float
from .core.support import capture
from .quantize import quantize_weights


def round_up(value: float, relative_error: float) -> float:
    """``value * (1 + relative_error)``, rounded towards +inf: a certificate is never rounded down."""
    if value == 0.0:
        return 0.0
    return math.nextafter(value * (1.0 + relative_error), math.inf)


def _other_tensors(model, other, example_inputs, graph) -> dict:
    mine = named_tensors(model)
    if isinstance(other, nn.Module):
        difference = graph.difference(capture(other, example_inputs))
        if difference:
            raise ValueError("the two models do not have the same architecture: every op, "
                             "module, shape and constant must be equal; first difference: "
                             + difference)
        return named_tensors(other)
    if isinstance(other, dict):
        unknown = sorted(set(other) - set(mine))
        if unknown:
            raise KeyError(f"replacement tensors for unknown parameters/buffers: {unknown[:5]}")
        merged = dict(mine)
        for name, tensor in other.items():
            if tuple(tensor.shape) != tuple(mine[name].shape):
                raise ValueError(f"replacement for '{name}' has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(mine[name].shape)}")
            merged[name] = tensor.detach().to(mine[name].device)
        return merged
    raise TypeError("other must be an nn.Module of the same architecture or a dict "
                    "{parameter name: tensor}")


def certified_distance(graph, tensors_a: dict, tensors_b: dict, dtype=torch.float64):
    """Certified ``||Phi(theta) - Phi(theta')||_1`` as a scaled scalar plus its error bound.

    One (A, D) pass between theta'' (theta with sign-conflicting coordinates zeroed) and theta';
    when no coordinate changes sign theta'' = theta and this pass is the whole answer, exact
    when ``|theta'| <= |theta|``. Otherwise a second pass adds ``d(theta, theta'')``.
    """
    with torch.no_grad():
        ev = PairLifting(graph, tensors_a, tensors_b, stage="from_mid", dtype=dtype)
        outputs, _ = ev.run()
        parts = [total_of(outputs, 1)]
        error = ev.relative_error()
        if ev.conflicts:
            ev = PairLifting(graph, tensors_a, tensors_b, stage="to_mid", dtype=dtype)
            outputs, _ = ev.run()
            parts.append(total_of(outputs, 1))
    return parts, error


def _distance_parts(model, other, example_inputs, precision) -> tuple[list, float]:
    """The scaled parts of ``||Phi(theta) - Phi(theta')||_1`` and their relative rounding error,
    ``other`` a model or a dict of replacements (see :func:`path_metric`)."""
    graph = capture(model, example_inputs)
    tensors_b = _other_tensors(model, other, example_inputs, graph)
    return certified_distance(graph, named_tensors(model), tensors_b, precision_dtype(precision))


def _to_float(parts, error) -> float:
    return round_up(sum(to_float(float(part.m), part.e) for part in parts), error)


def path_metric(model: nn.Module, other, example_inputs, precision="float64") -> float:
    """Certified upper bound on ``||Phi(theta) - Phi(theta')||_1`` (rounded up).

    ``other`` is a model of the same architecture or a dict ``{parameter or buffer name: tensor}``
    of replacements. Exact (up to the outward rounding) when every lifted parameter keeps its sign
    and does not grow in magnitude (pruning, shrinking, rounding toward zero); otherwise the
    ``N(max) - N(min)`` bound, through theta'' where signs conflict (docs/design.md,
    "The path-metric certificate").
    """
    return _to_float(*_distance_parts(model, other, example_inputs, precision))


def log_round_up(parts, error) -> float:
    """Natural log of the sum of scaled ``parts`` times ``1 + error``, rounded towards +inf
    (``-inf`` for zero): finite for any depth."""
    value = scaled_sum(parts).log()
    if value == -math.inf:
        return value
    slack = 8 * math.ulp(abs(value) + abs(scaled_sum(parts).e) + 1.0)  # log and e ln 2 rounding
    return math.nextafter(value + math.log1p(error) + slack, math.inf)


def log_path_metric(model: nn.Module, other, example_inputs, precision="float64") -> float:
    """Natural log of :func:`path_metric`'s certificate (rounded up), finite at any depth where
    ``path_metric`` returns ``inf`` past float64 (``-inf`` when the distance is zero)."""
    return log_round_up(*_distance_parts(model, other, example_inputs, precision))


def path_metric_with_log(model: nn.Module, other, example_inputs,
                         precision="float64") -> tuple[float, float]:
    """``(path_metric, log_path_metric)`` from one lifted pass: the float certificate, ``inf``
    past float64, and its natural log, finite at any depth (rank by the log)."""
    parts, error = _distance_parts(model, other, example_inputs, precision)
    return _to_float(parts, error), log_round_up(parts, error)


def sup_norms(inputs) -> torch.Tensor:
    """``||x||_inf`` per sample over every input tensor of the tuple ``inputs`` (float64)."""
    return torch.stack([t.detach().reshape(t.shape[0], -1).abs().amax(dim=1).double()
                        for t in inputs]).amax(dim=0)


def log_output_bound(model: nn.Module, other, x) -> torch.Tensor:
    """Natural log of :func:`output_bound` per sample: ``log max(||x||_inf, 1) +
    log_path_metric`` (rounded up), finite at any depth."""
    inputs = as_tuple(x)
    log_metric = log_path_metric(model, other, inputs)
    bound = torch.log(torch.clamp(sup_norms(inputs), min=1.0)) + log_metric
    return torch.nextafter(bound, torch.full_like(bound, math.inf))


def head_factor(model: nn.Module, example_inputs) -> float:
    """Factor that carries a bound on the logits to the model's outputs when a softmax head was
    set aside (docs/design.md, "Output heads"): 1 for ``softmax`` (``||softmax(a) - softmax(b)||_1 <=
    ||a - b||_1``), ``n + 1`` for ``log_softmax`` with ``n`` classes, 1 without a head."""
    graph = capture(model, example_inputs)
    if not graph.head or "log_softmax" not in graph.head:
        return 1.0
    return 1.0 + max(graph.nodes[v.node].shape[1] if v.item is None else
                     graph.nodes[v.node].shape[v.item][1] for v in graph.outputs)


def head_output_bound(model: nn.Module, other, x) -> torch.Tensor:
    """Per-sample certified bound on the L1 change of what the model returns (probabilities or
    log-probabilities after a softmax head): ``head_factor * output_bound``."""
    bound = output_bound(model, other, x) * head_factor(model, x)
    return torch.nextafter(bound, torch.full_like(bound, math.inf))


def output_bound(model: nn.Module, other, x) -> torch.Tensor:
    """Per-sample certified bound on ``||R_theta(x) - R_theta'(x)||_1``:
    ``max(||x||_inf, 1) * path_metric(model, other)`` (sup-norm over every input tensor)."""
    inputs = as_tuple(x)
    if any(t.dim() == 0 for t in inputs):
        raise ValueError("output_bound needs inputs with a batch dimension")
    metric = path_metric(model, other, inputs)
    if inputs[0].shape[0] == 0:  # an empty batch: no sample, no bound
        return torch.empty(0, dtype=torch.float64, device=inputs[0].device)
    bound = torch.clamp(sup_norms(inputs), min=1.0) * metric
    return torch.nextafter(bound, torch.full_like(bound, math.inf))


def layer_weights(model, example_inputs, layers=None) -> dict:
    """``{layer: (weight name, weight, dim)}`` for the conv/linear ``layers`` (default: all),
    ``dim`` the dim of the weight indexing output channels (the rule's ``channel_params``)."""
    graph = capture(model, example_inputs)
    table = graph.layers()
    chosen = list(table) if layers is None else list(layers)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        raise KeyError(f"unknown layers {unknown[:5]}; known: {list(table)[:8]}...")
    named = dict(model.named_parameters())
    return {name: (table[name].weight, named[table[name].weight].detach(),
                   fact(graph.nodes[table[name].node], "channel_params",
                        "which parameter slices belong to an output channel")["weight"])
            for name in chosen}


def quantized_weights(model, example_inputs, bits, scheme="symmetric", granularity="per_channel",
                      group_size=None, layers=None) -> dict:
    """``{weight name: quantized weight}`` for the conv/linear ``layers`` (default: all)."""
    return {name: quantize_weights(w, bits, scheme, granularity, group_size, dim)
            for name, w, dim in layer_weights(model, example_inputs, layers).values()}


def log_quantization_bound(model: nn.Module, example_inputs, bits=8, scheme="symmetric",
                           granularity="per_channel", group_size=None, layers=None,
                           precision="float64") -> float:
    """Natural log of :func:`quantization_bound` (rounded up), finite at any depth."""
    replaced = quantized_weights(model, example_inputs, bits, scheme, granularity, group_size,
                                 layers)
    return log_path_metric(model, replaced, example_inputs, precision)


def quantization_bound(model: nn.Module, example_inputs, bits=8, scheme="symmetric",
                       granularity="per_channel", group_size=None, layers=None,
                       precision="float64") -> float:
    """Certified path-metric between ``model`` and its round-to-nearest weight quantization
    (``pm.quantize_weights`` on the weights of ``layers``, default every conv/linear layer;
    biases and BatchNorm stay in full precision), without building the quantized model."""
    replaced = quantized_weights(model, example_inputs, bits, scheme, granularity, group_size,
                                 layers)
    return path_metric(model, replaced, example_inputs, precision)
