"""The ``pathmetric`` command: report, prune, quant-plan, nni, demo.

Every subcommand prints a readable table, or with ``--json`` one JSON object on stdout (numbers
as the library returns them; ``Infinity`` only where a value exceeds float64, logs are finite).
Progress bars go to stderr and only on a terminal. See docs/cli.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from . import models


# --------------------------------------------------------------------------- helpers

def _progress(total, desc, quiet):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=True if quiet else None, file=sys.stderr,
                leave=False)


def _bits(text: str) -> tuple:
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        bits = ()
    if not bits or min(bits) < 1:
        raise argparse.ArgumentTypeError(f"bits must be positive integers like 2,4,8; got {text!r}")
    return bits


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return value


def _load(args):
    model = models.load_model(args.model, args.checkpoint)
    return model, models.example_inputs(args.model, args.input_shape)


def _emit(args, result: dict, text: str):
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(text)


def _table(header, rows) -> str:
    cells = [list(map(str, header))] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.3e}"
    return str(value)


def quantized_change(model, example_inputs, bits: int) -> dict:
    """``{weight name: pm.quantize_weights(weight, bits)}`` for every conv/linear layer."""
    import pathmetric as pm
    modules = dict(model.named_modules())
    return {f"{layer}.weight": pm.quantize_weights(modules[layer].weight.detach(), bits)
            for layer in pm.prunable_layers(model, example_inputs)}


# --------------------------------------------------------------------------- report

def cmd_report(args) -> int:
    import pathmetric as pm
    from . import reports

    model, x = _load(args)
    with _progress(6, "report", args.json) as bar:
        support = pm.check_support(model, x)
        bar.update()
        if not support.ok:
            result = {"model": args.model, "supported": False,
                      "unsupported": [list(u) for u in support.unsupported]}
            _emit(args, result, str(support))
            return 2
        norms = {str(q): {"value": pm.path_norm(model, x, q=q), "log": pm.log_path_norm(model, x, q=q)}
                 for q in (1, 2, 4)}
        bar.update()
        sens = pm.layer_sensitivity(model, x, bits=args.bits)
        bar.update()
        gen = reports.generalization_bound(model, x, n=args.n, input_bound=args.input_bound,
                                           lipschitz=args.lipschitz)
        bar.update()
        compare = reports.classical_vs_path(model, quantized_change(model, x, args.compare_bits),
                                            x, input_bound=args.input_bound)
        bar.update()
        sym = reports.symmetries(model, x)
        bar.update()
    if args.plot:
        from .plots import sensitivity_plot
        sensitivity_plot(sens, args.plot)
    result = {"model": args.model, "input_shape": list(x.shape), "supported": True,
              "ops": support.ops, "path_norms": norms,
              "sensitivity": [{"layer": l, "bits": b, "path_metric": v} for (l, b), v in sens.items()],
              "generalization": gen, "classical_vs_path": {"change": f"{args.compare_bits}-bit "
                                                           "per-channel quantization of every layer",
                                                           **compare},
              "symmetries": sym}
    text = [f"model {args.model}, input {tuple(x.shape)}: {support}", "",
            "L_q path-norms",
            _table(["q", "||Phi||_q", "ln ||Phi||_q"],
                   [[q, v["value"], v["log"]] for q, v in norms.items()]), "",
            "Per-layer sensitivity: certified path-metric of quantizing one layer", str(sens), "",
            "Generalization bound (arXiv 2310.01225 Thm 3.1): L*4*C*B*||Phi||_1/sqrt(n)",
            _table(["D", "P", "K", "M", "d_in", "d_out", "n", "C", "C'", "bound", "bound (C')",
                    "log10 bound"],
                   [[gen["D"], gen["P"], gen["K"], gen["M"], gen["d_in"], gen["d_out"], gen["n"],
                     gen["C"], gen["C_sharp"], gen["bound"], gen["bound_sharp"],
                     gen["log_bound"] / math.log(10)]]), "",
            f"Certified ||R(x)-R'(x)||_1 for {args.compare_bits}-bit quantization of every layer, "
            f"||x||_inf <= {args.input_bound}",
            _table(["classical (2205.11874)", "path-metric (2405.15006)", "ratio (log10)"],
                   [[_fmt_log(compare["classical_log_bound"]), _fmt_log(compare["log_path_bound"]),
                     compare["log_ratio"] / math.log(10)]]),
            f"  classical: L={compare['classical_L']} W={compare['classical_W']} "
            f"R={compare['classical_R']:.4g} ||theta-theta'||_inf={compare['classical_delta_inf']:.3e}",
            "",
            "Symmetries (arXiv 2305.11417)",
            _table(["parameters", "rescaling dims", "permutation groups", "ln|perm group|"],
                   [[sym["parameters"], sym["rescaling_dims"], sym["permutation_groups"],
                     sym["permutation_log_factor"]]])]
    if args.plot:
        text.append(f"\nsensitivity plot written to {args.plot}")
    _emit(args, result, "\n".join(text))
    return 0


def _fmt_log(log_value: float) -> str:
    """``e^log_value`` written as mantissa e exponent, whatever its size."""
    if not math.isfinite(log_value):
        return "0" if log_value < 0 else "inf"
    exponent = math.floor(log_value / math.log(10))
    return f"{10 ** (log_value / math.log(10) - exponent):.3f}e{exponent:+d}"


# --------------------------------------------------------------------------- prune

def cmd_prune(args) -> int:
    import pathmetric as pm
    from . import reports

    model, x = _load(args)
    with _progress(2, "prune", args.json) as bar:
        result = pm.prune(model, args.sparsity, x, structured=args.structured, scope=args.scope,
                          max_layer_sparsity=args.max_layer_sparsity, rounds=args.rounds)
        bar.update()
        compare = reports.classical_vs_path(model, result.model, x)
        bar.update()
    layers = [{"parameter": name, "shape": list(mask.shape),
               "sparsity": 1.0 - float(mask.double().mean())} for name, mask in result.masks.items()]
    out = {"model": args.model, "sparsity_target": args.sparsity, "structured": args.structured,
           "sparsity": result.sparsity, "certified_bound": result.certified_bound,
           "log_path_norm_before": pm.log_path_norm(model, x),
           "log_path_norm_after": pm.log_path_norm(result.model, x),
           "classical_log_bound": compare["classical_log_bound"],
           "log_ratio_classical_vs_path": compare["log_ratio"], "layers": layers, "out": args.out}
    if args.out:
        torch.save(result.model.state_dict(), args.out)
    text = [_table(["parameter", "shape", "sparsity"],
                   [[r["parameter"], "x".join(map(str, r["shape"])), r["sparsity"]] for r in layers]),
            "",
            f"{'structured' if args.structured else 'unstructured'} path-magnitude pruning, "
            f"sparsity {result.sparsity:.4f} (target {args.sparsity})",
            f"certified: ||R(x) - R_pruned(x)||_1 <= max(||x||_inf, 1) * {result.certified_bound:.6e}",
            f"classical bound (2205.11874) for the same change, ||x||_inf <= 1: "
            f"{_fmt_log(compare['classical_log_bound'])} "
            f"(10^{compare['log_ratio'] / math.log(10):.1f} x the path-metric one)"]
    if args.out:
        text.append(f"pruned state_dict written to {args.out} "
                    f"(reload: --checkpoint {args.out} with model {args.model})")
    _emit(args, out, "\n".join(text))
    return 0


# --------------------------------------------------------------------------- quant-plan

def cmd_quant_plan(args) -> int:
    import pathmetric as pm

    model, x = _load(args)
    with _progress(1, "quant-plan", args.json) as bar:
        plan = pm.mixed_precision_plan(model, x, bits=args.bits, avg_bits=args.avg_bits,
                                       scheme=args.scheme, granularity=args.granularity)
        bar.update()
    out = {"model": args.model, "bits": plan.bits, "avg_bits": plan.avg_bits,
           "certified_bound": plan.certified_bound, "additive_bound": plan.additive_bound}
    text = (f"certified mixed-precision plan, budget {args.avg_bits} bits/weight, "
            f"candidates {list(args.bits)}\n{plan}\n"
            f"=> ||R(x) - R_quantized(x)||_1 <= max(||x||_inf, 1) * {plan.certified_bound:.6e}")
    _emit(args, out, text)
    return 0


# --------------------------------------------------------------------------- nni

def cmd_nni(args) -> int:
    from pathmetric.adapters.nni import prune_from_config

    model, x = _load(args)
    with _progress(1, "nni prune", args.json) as bar:
        result = prune_from_config(model, args.config, x, out=args.out)
        bar.update()
    out = {"model": args.model, "config": args.config, "sparsity": result.sparsity,
           "certified_bound": result.certified_bound, "params_before": result.params_before,
           "params_after": result.params_after, "speedup": result.speedup, "out": args.out}
    text = [_table(["module", "weight sparsity"], list(result.sparsity.items())), "",
            f"parameters {result.params_before} -> {result.params_after}"
            f"{' (NNI ModelSpeedup)' if result.speedup else ' (masked in place)'}",
            f"certified: ||R(x) - R_pruned(x)||_1 <= max(||x||_inf, 1) * "
            f"{result.certified_bound:.6e}"]
    if args.out:
        text.append(f"pruned model written to {args.out} (torch.save of the whole module)")
    _emit(args, out, "\n".join(text))
    return 0


# --------------------------------------------------------------------------- demo

def cmd_demo(args) -> int:
    from .digits import run_demo

    result = run_demo(sparsities=args.sparsities, epochs=args.epochs, seed=args.seed,
                      plot=args.plot, quiet=args.json)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


# --------------------------------------------------------------------------- parser

def _model_args(p, nni=False):
    if not nni:
        p.add_argument("model", help="torchvision:NAME, timm:NAME, smp:ARCH:ENCODER, "
                                     "file.py:FACTORY or digits")
    p.add_argument("--checkpoint", help="state_dict to load into the model (torch.save)")
    p.add_argument("--input-shape", help="example input shape, batch first, e.g. 1,3,64,64 "
                                         "(default 1,3,224,224; 1,1,8,8 for digits)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pathmetric", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("report", help="path-norms, sensitivity, generalization and classical bounds")
    _model_args(p)
    p.add_argument("--bits", type=_bits, default=(2, 4, 8), help="sensitivity bit-widths")
    p.add_argument("--n", type=int, default=1_281_167, help="training samples (default ImageNet)")
    p.add_argument("--input-bound", type=float, default=1.0, help="B >= sup ||x||_inf")
    p.add_argument("--lipschitz", type=float, default=1.0, help="Lipschitz constant of the loss")
    p.add_argument("--compare-bits", type=int, default=8,
                   help="bit-width of the change on which classical and path-metric bounds are compared")
    p.add_argument("--plot", help="write the per-layer sensitivity plot to this file")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("prune", help="path-magnitude pruning with its certificate")
    _model_args(p)
    p.add_argument("--sparsity", type=_fraction, required=True)
    p.add_argument("--structured", action="store_true", help="prune output channels")
    p.add_argument("--scope", choices=("global", "layer"), default="global")
    p.add_argument("--max-layer-sparsity", type=float, default=0.95)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", help="write the pruned state_dict here")
    p.set_defaults(run=cmd_prune)

    p = sub.add_parser("quant-plan", help="certified mixed-precision plan")
    _model_args(p)
    p.add_argument("--avg-bits", type=float, required=True)
    p.add_argument("--bits", type=_bits, default=(2, 4, 8))
    p.add_argument("--scheme", choices=("symmetric", "asymmetric"), default="symmetric")
    p.add_argument("--granularity", choices=("per_tensor", "per_channel"), default="per_channel")
    p.set_defaults(run=cmd_quant_plan)

    p = sub.add_parser("nni", help="NNI pruning from a config file (pruner: path_metric)")
    nni_sub = p.add_subparsers(dest="nni_command", required=True)
    q = nni_sub.add_parser("prune", help="prune --config prune.yaml --model SPEC --out pruned.pt")
    q.add_argument("--config", required=True)
    q.add_argument("--model", required=True)
    q.add_argument("--out")
    _model_args(q, nni=True)
    q.set_defaults(run=cmd_nni)

    p = sub.add_parser("demo", help="rescaling-invariant pruning on scikit-learn digits")
    p.add_argument("--sparsities", type=lambda s: tuple(float(v) for v in s.split(",")),
                   default=(0.5, 0.7, 0.8, 0.9))
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs after pruning")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rescaling")
    p.add_argument("--plot", default="pathmetric_demo.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_demo)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import pathmetric as pm
    try:
        return args.run(args)
    except (pm.UnsupportedModelError, pm.ModelCaptureError, ValueError, FileNotFoundError) as exc:
        print(f"pathmetric {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
