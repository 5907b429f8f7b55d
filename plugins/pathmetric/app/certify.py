"""``pathmetric certify``: the certificate of a deployed (quantized) model against its float model.

    pathmetric certify digits --quantized digits_int8.pt2 [--inputs x.pt | --samples 256]

The quantized model is a program saved with ``torch.export.save`` (a converted PT2E graph from
torchao's ``convert_pt2e`` or Intel Neural Compressor's ``convert``, exported again), loaded with
``torch.export.load``; the inputs are a tensor saved with ``torch.save`` (batch first) or
``--samples`` N(0, 1) inputs of ``--input-shape``. It prints the weight term, the activation
term per quantization point, the saturated samples and the per-sample bounds
(``pm.deployment_report``; see docs/deployed.md).
"""
from __future__ import annotations

import math

import torch

from .common import emit, load, model_args, table


def register(subparsers):
    """Add the ``certify`` subcommand to the ``pathmetric`` parser's ``subparsers``."""
    p = subparsers.add_parser("certify", help="certificate of a deployed int8 model (weights "
                                              "and activations) against the float model")
    model_args(p)
    p.add_argument("--quantized", required=True,
                   help="the deployed model: a program saved by torch.export.save (.pt2)")
    p.add_argument("--inputs", help="inputs to certify: a tensor saved by torch.save, batch first")
    p.add_argument("--samples", type=int, default=64,
                   help="without --inputs: this many N(0, 1) inputs of --input-shape (default 64)")
    p.set_defaults(run=lambda args: cmd_certify(args, load, emit, table))


def _inputs(args, x) -> torch.Tensor:
    if args.samples < 1:
        raise ValueError(f"--samples must be a positive integer, got {args.samples}")
    if args.inputs:
        inputs = torch.load(args.inputs, map_location="cpu", weights_only=True)
        if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"--inputs {args.inputs}: expected a tensor of shape (N, "
                             f"{', '.join(map(str, x.shape[1:]))}), got "
                             f"{tuple(getattr(inputs, 'shape', ())) or type(inputs).__name__}")
        return inputs.float()
    generator = torch.Generator().manual_seed(args.seed)
    return torch.randn((args.samples,) + tuple(x.shape[1:]), generator=generator)


def cmd_certify(args, load, emit, table) -> int:
    """Run ``pathmetric certify`` (see the module docstring)."""
    import pathmetric as pm

    model, x = load(args)
    quantized = torch.export.load(args.quantized).module()
    inputs = _inputs(args, x)
    report = pm.deployment_report(model, quantized, inputs)
    certified = report.bound[~report.saturated]
    result = {
        "samples": len(inputs), "saturated": report.saturated_count,
        "weight_term": report.weight_term, "log_weight_term": report.log_weight_term,
        "activation_term": report.activation_term,
        "activation_terms": report.activation_terms, "saturated_points": report.saturated_points,
        "weight_share": report.weight_share, "activation_share": report.activation_share,
        "max_certified_bound": float(certified.max()) if len(certified) else math.inf,
        "safe_input_radius": report.safe_input_radius, "safe_radius": report.safe_radius,
        "dynamic_term": report.dynamic_term.tolist(),
        "rounding_term": report.rounding_term.tolist(),
        "rounding_terms": {key: t.tolist() for key, t in report.rounding_terms.items()},
        "rounding_share": report.rounding_share,
        "bounds": report.bound.tolist(), "arithmetic": report.arithmetic}
    per_sample = "".join(
        f" + the {what} term of each sample (largest {float(t.max()):.6e})"
        for what, t in (("dynamic-point", report.dynamic_term),
                        ("half-precision rounding", report.rounding_term)) if bool(t.any()))
    rows = [(key, term, report.saturated_points[key])
            for key, term in report.activation_terms.items()]
    text = "\n".join([
        f"deployed model {args.quantized} against {args.model}, {len(inputs)} inputs",
        f"||R(x) - Rq(x)||_1 <= max(||x||_inf, 1) * {report.weight_term:.6e} + "
        f"{report.activation_term:.6e}" + per_sample,
        f"arithmetic: {report.arithmetic}",
        f"saturated samples (not certified, bound inf): {report.saturated_count} of {len(inputs)}",
        f"largest certified bound: {result['max_certified_bound']:.6e}",
        f"no point saturates for ||x||_inf <= {report.safe_input_radius:.6g}", "",
        table(("point", "activation term", "saturated samples"), rows)])
    emit(args, result, text)
    return 0
