"""Classical parameter-Lipschitz bound vs path-metric bound for the same weight change.

For each model and change, both certify ``||R_theta(x) - R_theta'(x)||_1`` for ``||x||_inf <= 1``:

- classical (arXiv 2205.11874, Thm III.1): ``(W + 1) W L^2 R^(L-1) ||theta - theta'||_inf``;
- path-metric (arXiv 2405.15006): ``||Phi(theta) - Phi(theta')||_1`` (two lifted passes);

see :func:`pathmetric.reports.classical_vs_path`. The ratio classical / path-metric is written to
``benchmarks/results/classical_vs_path.md``. torchvision models are randomly initialised
(``weights=None``: nothing is downloaded); the digits CNN is the trained one shipped with
pathmetric. Changes: round-to-nearest per-channel symmetric quantization of every conv/linear
weight at 8 and 4 bits, and 50 % unstructured path-magnitude pruning.

    python benchmarks/classical_vs_path.py [--sizes 64,224] [--tiny] [--out DIR]
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torchvision

import pathmetric as pm
from pathmetric import reports
from pathmetric.app.digits import pretrained
from pathmetric.metric import quantized_weights


def changes(model, x, prune):
    yield "8-bit quantization", quantized_weights(model, x, 8)
    yield "4-bit quantization", quantized_weights(model, x, 4)
    if prune:
        yield "50% path-magnitude pruning", pm.prune(model, 0.5, x).model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,224", help="input resolutions for the ImageNet models")
    parser.add_argument("--tiny", action="store_true", help="32x32 inputs, resnet18 only (seconds)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [32] if args.tiny else [int(s) for s in args.sizes.split(",")]
    cases = [("digits CNN (trained)", pretrained(), torch.zeros(1, 1, 8, 8))]
    for name in ["resnet18"] if args.tiny else ["resnet18", "vgg11_bn"]:
        for size in sizes:
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None).eval()
            cases.append((f"{name} (random init)", model, torch.zeros(1, 3, size, size)))
    rows = []
    started = time.time()
    for label, model, x in cases:
        for change, other in changes(model, x, prune=not args.tiny):
            t = time.time()
            r = reports.classical_vs_path(model, other, x)
            rows.append((label, "x".join(map(str, x.shape[1:])), change, r, time.time() - t))
            print(f"{label:22} {rows[-1][1]:>9} {change:27} classical 10^{r['classical_log_bound'] / math.log(10):7.2f} "
                  f"path 10^{r['log_path_bound'] / math.log(10):7.2f} ratio 10^{r['log_ratio'] / math.log(10):6.2f} "
                  f"({rows[-1][4]:.1f} s)", flush=True)
    lines = [
        "# Classical parameter-Lipschitz bound vs path-metric bound",
        "",
        "Both bound `max_x ||R_theta(x) - R_theta'(x)||_1` over `||x||_inf <= 1` for the same change "
        "theta -> theta'. Classical: arXiv 2205.11874 Thm III.1, `(W + 1) W L^2 R^(L-1) "
        "||theta - theta'||_inf` with L = conv/linear layers on the longest path, W = largest layer "
        "(neurons, input included), R = max(1, largest layer operator norm max(||W_l||_inf->inf, "
        "||b_l||_inf)), BatchNorm folded into the conv before it. Path-metric: "
        "`||Phi(theta) - Phi(theta')||_1` from `pm.path_metric` (arXiv 2405.15006). Ratio > 1: the "
        "path-metric bound is sharper. Logs base 10. torchvision models randomly initialised "
        "(`weights=None`, BatchNorm statistics at their defaults); the digits CNN is the trained "
        "checkpoint shipped with pathmetric. Produced by `python benchmarks/classical_vs_path.py"
        + (" --tiny" if args.tiny else f" --sizes {args.sizes}") + f"` on one CPU thread, "
        f"{time.time() - started:.0f} s in all.",
        "",
        "| model | input | change | L | W | R | largest entry change | log10 classical | log10 path-metric | log10 ratio | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, shape, change, r, seconds in rows:
        lines.append(
            f"| {label} | {shape} | {change} | {r['classical_L']} | {r['classical_W']} | "
            f"{r['classical_R']:.4g} | {r['classical_delta_inf']:.3g} | "
            f"{r['classical_log_bound'] / math.log(10):.2f} | {r['log_path_bound'] / math.log(10):.2f} | "
            f"{r['log_ratio'] / math.log(10):.2f} | {seconds:.1f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classical_vs_path.md").write_text("\n".join(lines) + "\n")
    print(f"written to {out / 'classical_vs_path.md'}")


if __name__ == "__main__":
    main()
