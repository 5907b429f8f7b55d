"""The ``pathmetric`` command: report, prune, quant-plan, demo, and adapters' subcommands (nni).

Adapters add subcommands through the ``pathmetric.cli`` entry point group (``nni prune`` comes
from :mod:`pathmetric.adapters.nni_cli`), so this module names no compression framework.

Every subcommand prints a readable table, or with ``--json`` one JSON object on stdout (numbers
as the library returns them; ``Infinity`` only where a value exceeds float64, logs are finite).
Progress bars go to stderr and only on a terminal. See docs/cli.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from importlib.metadata import entry_points

import torch

from . import models


# --------------------------------------------------------------------------- helpers

def progress(total, desc, quiet):
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
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def load(args):
    torch.manual_seed(args.seed)   # random weights are reproducible
    model = models.load_model(args.model, args.checkpoint)
    x = models.example_inputs(args.model, args.input_shape)
    models.check_input_shape(model, tuple(x.shape))
    return model, x


#: where the result goes while ``--json`` sends everything else to stderr (None: sys.stdout)
_result_stream = None


def emit(args, result: dict, text: str):
    print(json.dumps(result, indent=2, default=str) if args.json else text,
          file=_result_stream or sys.stdout, flush=True)


def _head_fields(support) -> dict:
    """The softmax head set aside (None without one) and the notes saying so, for every JSON."""
    return {"head": support.head, "notes": list(support.notes)}


def _head_certificate(model, x, bound: float, out: dict, text: list):
    """When a log_softmax head was set aside (head factor ``n + 1``), add the certificate on the
    log-probabilities, ``bound * (n + 1)``, to ``out`` and ``text``."""
    import pathmetric as pm

    factor = pm.head_factor(model, x)
    if factor != 1.0:
        out["head_factor"] = factor
        out["log_probabilities_certified_bound"] = bound * factor
        text.append(f"log-probabilities ({out['head']} head): ||log p(x) - log p'(x)||_1 <= "
                    f"max(||x||_inf, 1) * {bound * factor:.6e} (logits bound x {factor:g})")


@contextlib.contextmanager
def _stdout_for_result_only():
    """With ``--json``: while a command runs, ``print`` goes to stderr and, when stdout is file
    descriptor 1, that descriptor points at stderr too (log handlers holding the old stream,
    C code), so that frameworks' prints and log lines (NNI's ModelSpeedup prints to stdout)
    cannot mix with the result, which is written to the original stdout."""
    global _result_stream
    result = sys.stdout
    result.flush()
    try:
        saved = os.dup(1) if result.fileno() == 1 else None
    except (AttributeError, OSError, ValueError):   # a captured or replaced sys.stdout
        saved = None
    if saved is not None:
        os.dup2(2, 1)
        result = os.fdopen(os.dup(saved), "w")
    _result_stream = result
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _result_stream = None
        if saved is not None:
            sys.stdout.flush()
            result.close()
            os.dup2(saved, 1)
            os.close(saved)


def table(header, rows) -> str:
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
    from .. import reports

    model, x = load(args)
    with progress(6, "report", args.json) as bar:
        support = pm.check_support(model, x)
        bar.update()
        if not support.ok:
            result = {"model": args.model, "supported": False,
                      "unsupported": [list(u) for u in support.unsupported],
                      **_head_fields(support)}
            emit(args, result, str(support))
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
              "ops": support.ops, **_head_fields(support), "path_norms": norms,
              "sensitivity": [{"layer": l, "bits": b, "path_metric": v} for (l, b), v in sens.items()],
              "generalization": gen, "classical_vs_path": {"change": f"{args.compare_bits}-bit "
                                                           "per-channel quantization of every layer",
                                                           **compare},
              "symmetries": sym}
    text = [f"model {args.model}, input {tuple(x.shape)}: {support}", "",
            "L_q path-norms",
            table(["q", "||Phi||_q", "ln ||Phi||_q"],
                   [[q, v["value"], v["log"]] for q, v in norms.items()]), "",
            "Per-layer sensitivity: certified path-metric of quantizing one layer", str(sens), "",
            "Generalization bound (arXiv 2310.01225 Thm 3.1): L*4*C*B*||Phi||_1/sqrt(n)",
            table(["D", "P", "K", "M", "d_in", "d_out", "n", "C", "C'", "bound", "bound (C')",
                    "log10 bound"],
                   [[gen["D"], gen["P"], gen["K"], gen["M"], gen["d_in"], gen["d_out"], gen["n"],
                     gen["C"], gen["C_sharp"], gen["bound"], gen["bound_sharp"],
                     gen["log_bound"] / math.log(10)]]), "",
            f"Certified ||R(x)-R'(x)||_1 for {args.compare_bits}-bit quantization of every layer, "
            f"||x||_inf <= {args.input_bound}",
            table(["classical (2205.11874)", "path-metric (2405.15006)", "ratio (log10)"],
                   [[_fmt_log(compare["classical_log_bound"]), _fmt_log(compare["log_path_bound"]),
                     compare["log_ratio"] / math.log(10)]]),
            f"  classical: L={compare['classical_L']} W={compare['classical_W']} "
            f"R={compare['classical_R']:.4g} ||theta-theta'||_inf={compare['classical_delta_inf']:.3e}",
            "",
            "Symmetries (arXiv 2305.11417)",
            table(["parameters", "rescaling dims", "permutation groups", "ln|perm group|"],
                   [[sym["parameters"], sym["rescaling_dims"], sym["permutation_groups"],
                     sym["permutation_log_factor"]]])]
    if args.plot:
        text.append(f"\nsensitivity plot written to {args.plot}")
    emit(args, result, "\n".join(text))
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
    from .. import reports

    model, x = load(args)
    with progress(2, "prune", args.json) as bar:
        result = pm.prune(model, args.sparsity, x, structured=args.structured, scope=args.scope,
                          max_layer_sparsity=args.max_layer_sparsity, rounds=args.rounds)
        bar.update()
        compare = reports.classical_vs_path(model, result.model, x)
        bar.update()
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    layers = [{"parameter": name, "shape": list(mask.shape),
               "sparsity": 1.0 - float(mask.double().mean())}
              for name, mask in sorted(result.masks.items(), key=lambda kv: order.get(kv[0], -1))]
    out = {"model": args.model, "sparsity_target": args.sparsity, "structured": args.structured,
           "sparsity": result.sparsity, "certified_bound": result.certified_bound,
           "log_path_norm_before": pm.log_path_norm(model, x),
           "log_path_norm_after": pm.log_path_norm(result.model, x),
           "classical_log_bound": compare["classical_log_bound"],
           "log_ratio_classical_vs_path": compare["log_ratio"], "layers": layers, "out": args.out,
           **_head_fields(pm.check_support(model, x))}
    if args.out:
        torch.save(result.model.state_dict(), args.out)
    text = [table(["parameter", "shape", "sparsity"],
                   [[r["parameter"], "x".join(map(str, r["shape"])), r["sparsity"]] for r in layers]),
            "",
            f"{'structured' if args.structured else 'unstructured'} path-magnitude pruning, "
            f"sparsity {result.sparsity:.4f} (target {args.sparsity})",
            f"certified: ||R(x) - R_pruned(x)||_1 <= max(||x||_inf, 1) * {result.certified_bound:.6e}",
            f"classical bound (2205.11874) for the same change, ||x||_inf <= 1: "
            f"{_fmt_log(compare['classical_log_bound'])} "
            f"(10^{compare['log_ratio'] / math.log(10):.1f} x the path-metric one)"]
    _head_certificate(model, x, result.certified_bound, out, text)
    if args.out:
        text.append(f"pruned state_dict written to {args.out} "
                    f"(reload: --checkpoint {args.out} with model {args.model})")
    emit(args, out, "\n".join(text))
    return 0


# --------------------------------------------------------------------------- quant-plan

def cmd_quant_plan(args) -> int:
    import pathmetric as pm

    model, x = load(args)
    with progress(1, "quant-plan", args.json) as bar:
        plan = pm.mixed_precision_plan(model, x, bits=args.bits, avg_bits=args.avg_bits,
                                       scheme=args.scheme, granularity=args.granularity)
        bar.update()
    out = {"model": args.model, "bits": plan.bits, "avg_bits": plan.avg_bits,
           "certified_bound": plan.certified_bound, "additive_bound": plan.additive_bound,
           **_head_fields(pm.check_support(model, x))}
    text = [f"certified mixed-precision plan, budget {args.avg_bits} bits/weight, "
            f"candidates {list(args.bits)}\n{plan}\n"
            f"=> ||R(x) - R_quantized(x)||_1 <= max(||x||_inf, 1) * {plan.certified_bound:.6e}"]
    _head_certificate(model, x, plan.certified_bound, out, text)
    emit(args, out, "\n".join(text))
    return 0


# --------------------------------------------------------------------------- demo

def cmd_demo(args) -> int:
    from .digits import run_demo

    result = run_demo(sparsities=args.sparsities, epochs=args.epochs, seed=args.seed,
                      plot=args.plot, quiet=args.json)
    if args.json:
        print(json.dumps(result, indent=2, default=str), file=_result_stream or sys.stdout,
              flush=True)
    return 0


# --------------------------------------------------------------------------- parser

def model_args(p, positional=True):
    """The model options every subcommand shares (``positional``: the model spec comes first)."""
    if positional:
        p.add_argument("model", help="torchvision:NAME, timm:NAME, smp:ARCH:ENCODER, "
                                     "file.py:FACTORY or digits")
    p.add_argument("--checkpoint", help="weights to load into the model: a state_dict saved with "
                                        "torch.save (plain, or under 'state_dict' / 'model'; "
                                        "smaller conv/linear/BatchNorm layers, as `nni prune "
                                        "--out` writes, resize the model), or a whole module of "
                                        "the same class (unpickled: trusted files only)")
    p.add_argument("--input-shape", help="example input shape, batch first, e.g. 1,3,64,64 "
                                         "(default 1,3,224,224; 1,1,8,8 for digits)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights of models built without a checkpoint "
                        "(default 0: results are reproducible)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (and nothing else there)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="pathmetric", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("report", help="path-norms, sensitivity, generalization and classical bounds")
    model_args(p)
    p.add_argument("--bits", type=_bits, default=(2, 4, 8),
                   help="sensitivity bit-widths, comma-separated (default 2,4,8)")
    p.add_argument("--n", type=_positive, default=1_281_167,
                   help="training samples of the generalization bound (default: ImageNet's)")
    p.add_argument("--input-bound", type=float, default=1.0, help="B >= sup ||x||_inf (default 1)")
    p.add_argument("--lipschitz", type=float, default=1.0,
                   help="Lipschitz constant of the loss (default 1)")
    p.add_argument("--compare-bits", type=_positive, default=8,
                   help="bit-width of the change on which classical and path-metric bounds are "
                        "compared (default 8)")
    p.add_argument("--plot", help="write the per-layer sensitivity plot to this file")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("prune", help="path-magnitude pruning with its certificate")
    model_args(p)
    p.add_argument("--sparsity", type=_fraction, required=True,
                   help="share of the weights (or channels with --structured) to prune, in [0, 1)")
    p.add_argument("--structured", action="store_true", help="prune output channels")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="rank across all layers (global, default) or within each layer")
    p.add_argument("--max-layer-sparsity", type=_fraction, default=0.95,
                   help="never prune more than this share of one layer, in [0, 1) (default 0.95)")
    p.add_argument("--rounds", type=_positive, default=1,
                   help="prune in this many rounds, rescoring between them (default 1)")
    p.add_argument("--out", help="write the pruned state_dict here")
    p.set_defaults(run=cmd_prune)

    p = sub.add_parser("quant-plan", help="certified mixed-precision plan")
    model_args(p)
    p.add_argument("--avg-bits", type=float, required=True,
                   help="budget: average bits per weight of the plan")
    p.add_argument("--bits", type=_bits, default=(2, 4, 8),
                   help="candidate bit-widths, comma-separated (default 2,4,8)")
    p.add_argument("--scheme", choices=("symmetric", "asymmetric"), default="symmetric",
                   help="quantization scheme (default symmetric)")
    p.add_argument("--granularity", choices=("per_tensor", "per_channel"), default="per_channel",
                   help="one scale per tensor or per output channel (default per_channel)")
    p.set_defaults(run=cmd_quant_plan)

    p = sub.add_parser("demo", help="rescaling-invariant pruning on scikit-learn digits")
    p.add_argument("--sparsities", type=lambda s: tuple(_fraction(v) for v in s.split(",")),
                   default=(0.5, 0.7, 0.8, 0.9),
                   help="sparsities to compare, comma-separated, each in [0, 1)")
    p.add_argument("--epochs", type=_positive, default=2, help="fine-tuning epochs after pruning")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rescaling")
    p.add_argument("--plot", default="pathmetric_demo.png", help="where to write the figure")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (and nothing else there)")
    p.set_defaults(run=cmd_demo)
    for entry in entry_points(group="pathmetric.cli"):
        entry.load()(sub)
    return top


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv=None) -> int:
    """Run a subcommand. A user error (bad model spec, checkpoint, config, shape, unsupported
    model) exits 2 with one line on stderr; any other failure exits 1 with one line (set
    PATHMETRIC_TRACEBACK=1 for the traceback)."""
    args = parser().parse_args(argv)
    import pathmetric as pm
    try:
        with _stdout_for_result_only() if args.json else contextlib.nullcontext():
            return args.run(args)
    except (pm.UnsupportedModelError, pm.ModelCaptureError, ValueError, TypeError,
            OSError) as exc:
        print(f"pathmetric {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the command line prints no traceback
        if os.environ.get("PATHMETRIC_TRACEBACK"):
            raise
        print(f"pathmetric {args.command}: internal error: {type(exc).__name__}: "
              f"{_one_line(exc)} (PATHMETRIC_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
