"""``pathmetric quant-plan``: a certified mixed-precision plan."""
from __future__ import annotations

import argparse

import torch

from .common import (
    bit_widths,
    emit,
    head_certificate,
    head_fields,
    load,
    model_args,
    positive_number,
    progress,
)


def cmd_quant_plan(args) -> int:
    import pathmetric as pm

    model, x = load(args)
    if args.act_bits is not None:
        x = calibration_batch(args, x)
    with progress(1, "quant-plan", args.json) as bar:
        plan = pm.mixed_precision_plan(model, x, bits=args.bits, avg_bits=args.avg_bits,
                                       scheme=args.scheme, granularity=args.granularity,
                                       act_bits=args.act_bits)
        bar.update()
    out = {"model": args.model, "bits": plan.bits, "avg_bits": plan.avg_bits,
           "certified_bound": plan.certified_bound, "additive_bound": plan.additive_bound,
           **head_fields(pm.check_support(model, x))}
    text = [f"certified mixed-precision plan, budget {args.avg_bits} bits/weight, "
            f"candidates {list(args.bits)}\n{plan}\n"
            "(the additive bound is what the plan minimises: the sum over layers of each "
            "layer's quantization cost, an upper bound of the certified path-metric, which is "
            "then computed exactly for the chosen plan)\n"
            f"=> ||R(x) - R_quantized(x)||_1 <= max(||x||_inf, 1) * {plan.certified_bound:.6e}"
            + (f" + {plan.activation_bound:.6e} (activation points), on every x that saturates "
               "no point" if plan.act_bits else "")]
    if plan.act_bits and plan.report is not None:
        out.update(act_bits=plan.act_bits, activation_bound=plan.activation_bound,
                   activation_terms=plan.activation_terms,
                   act_grids={layer: grid._asdict() for layer, grid in plan.act_grids.items()},
                   calibration_samples=len(plan.report.saturated),
                   saturated=plan.saturated_count)
    head_certificate(model, x, plan.certified_bound, out, text)
    out["out"] = args.out
    if args.out:
        torch.save(planned_state_dict(model, x, plan, args.scheme, args.granularity), args.out)
        text.append(f"quantized state_dict written to {args.out} (weights on the plan's grids, "
                    f"float layout; reload: --checkpoint {args.out} with model {args.model})")
    emit(args, out, "\n".join(text))
    return 0


def calibration_batch(args, x) -> torch.Tensor:
    """The batch activation grids are calibrated on: ``--calibration FILE`` (a tensor saved with
    ``torch.save``), or the shipped training digits for ``digits``."""
    if args.calibration:
        batch = torch.load(args.calibration, weights_only=True)
        if not isinstance(batch, torch.Tensor) or tuple(batch.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"--calibration {args.calibration}: expected a tensor of inputs of "
                             f"shape (N, {', '.join(map(str, x.shape[1:]))}), got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        return batch.to(x.dtype)
    if args.model == "digits":
        from .digits import load_digits_tensors
        return load_digits_tensors()[0]
    raise ValueError("--act-bits needs --calibration FILE: a tensor of real inputs saved with "
                     "torch.save (the activation grids are calibrated on it)")


def planned_state_dict(model, x, plan, scheme: str, granularity: str) -> dict:
    """``model``'s state_dict with every planned layer's weight quantized at its bit-width
    (``pathmetric.metric.quantized_weights``, the quantization the plan certifies)."""
    from ..metric import quantized_weights

    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    for bits in sorted(set(plan.bits.values())):
        layers = [layer for layer, b in plan.bits.items() if b == bits]
        state.update(quantized_weights(model, x, bits, scheme, granularity, layers=layers))
    return state


def activation_bits(text: str) -> int:
    """One bit-width between 2 and 16 (``--act-bits``)."""
    widths = bit_widths(text)
    if len(widths) != 1:
        raise argparse.ArgumentTypeError(f"one bit-width, got {text!r}")
    return widths[0]


def register(sub) -> None:
    """Add ``quant-plan`` to the subcommands ``sub`` of the ``pathmetric`` parser."""
    p = sub.add_parser("quant-plan", help="certified mixed-precision plan")
    model_args(p)
    p.add_argument("--avg-bits", type=positive_number, required=True,
                   help="budget: average bits per weight of the plan")
    p.add_argument("--bits", type=bit_widths, default=(2, 4, 8),
                   help="candidate bit-widths, comma-separated (default 2,4,8)")
    p.add_argument("--scheme", choices=("symmetric", "asymmetric"), default="symmetric",
                   help="quantization scheme (default symmetric)")
    p.add_argument("--granularity", choices=("per_tensor", "per_channel"), default="per_channel",
                   help="one scale per tensor or per output channel (default per_channel)")
    p.add_argument("--act-bits", type=activation_bits, default=None,
                   help="quantize every planned layer's input (activation) to this many bits "
                        "too (W/A plan certified as a whole; grids calibrated on --calibration)")
    p.add_argument("--calibration",
                   help="inputs to calibrate the activation grids on: a tensor saved with "
                        "torch.save (default for digits: the training digits)")
    p.add_argument("--out", help="write the quantized state_dict here (the plan applied)")
    p.set_defaults(run=cmd_quant_plan)
