"""``pathmetric report``: path-norms, per-layer sensitivity, the generalization bound, the
classical bound beside the path-metric one, symmetries."""
from __future__ import annotations

import math

from .common import (
    bit_widths,
    emit,
    fmt_log,
    head_fields,
    load,
    model_args,
    positive,
    positive_number,
    progress,
    table,
)


def cmd_report(args) -> int:
    import pathmetric as pm

    from .. import reports
    from ..metric import quantized_weights

    model, x = load(args)
    with progress(6, "report", args.json) as bar:
        support = pm.check_support(model, x)
        bar.update()
        if not support.ok:
            result = {"model": args.model, "supported": False,
                      "unsupported": [list(u) for u in support.unsupported],
                      **head_fields(support)}
            if args.json:
                emit(args, result, "")
            raise pm.UnsupportedModelError(str(support), support.unsupported)
        norms = {str(q): {"value": pm.path_norm(model, x, q=q), "log": pm.log_path_norm(model, x, q=q)}
                 for q in (1, 2, 4)}
        bar.update()
        sens = pm.layer_sensitivity(model, x, bits=args.bits)
        bar.update()
        gen = reports.generalization_bound(model, x, n=args.n, input_bound=args.input_bound,
                                           lipschitz=args.lipschitz)
        bar.update()
        compare = reports.classical_vs_path(model, quantized_weights(model, x, args.compare_bits),
                                            x, input_bound=args.input_bound)
        bar.update()
        sym = reports.symmetries(model, x)
        bar.update()
    if args.plot:
        sens.plot(args.plot)
    result = {"model": args.model, "input_shape": list(x.shape), "supported": True,
              "ops": support.ops, **head_fields(support), "path_norms": norms,
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
                   [[fmt_log(compare["classical_log_bound"]), fmt_log(compare["log_path_bound"]),
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


def register(sub) -> None:
    """Add ``report`` to the subcommands ``sub`` of the ``pathmetric`` parser."""
    p = sub.add_parser("report", help="path-norms, sensitivity, generalization and classical bounds")
    model_args(p)
    p.add_argument("--bits", type=bit_widths, default=(2, 4, 8),
                   help="sensitivity bit-widths, comma-separated (default 2,4,8)")
    p.add_argument("--n", type=positive, default=1_281_167,
                   help="training samples of the generalization bound (default: ImageNet's)")
    p.add_argument("--input-bound", type=positive_number, default=1.0,
                   help="B >= sup ||x||_inf (default 1)")
    p.add_argument("--lipschitz", type=positive_number, default=1.0,
                   help="Lipschitz constant of the loss (default 1)")
    p.add_argument("--compare-bits", type=positive, default=8,
                   help="bit-width of the change on which classical and path-metric bounds are "
                        "compared (default 8)")
    p.add_argument("--plot", help="write the per-layer sensitivity plot to this file")
    p.set_defaults(run=cmd_report)
