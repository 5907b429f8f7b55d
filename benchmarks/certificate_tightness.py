"""Certificate tightness on the digits CNN: the certified bound ``pm.path_metric`` against the
largest output gap ``||R(x) - R'(x)||_1`` actually found, for whole-model RTN quantization at 2..8
bits and for one-shot pruning (path-magnitude ``pm.prune`` and global magnitude) at several
sparsities.

Gaps are searched (1) on all 1797 digits images and (2) by projected sign-gradient ascent on the
input inside the data's sup-norm ball ``||x||_inf <= B`` (B = 1 for digits, so the certificate's
factor ``max(||x||_inf, 1)`` is 1 there) and inside the data box ``[0, 1]^64``. Asserts that no
gap ever exceeds the per-sample ``pm.output_bound``. Reports ``certified / found`` and how stable
it is across bit-widths and sparsities, and evaluates the calibrated estimate of
``evidence_common.calibrated_estimate`` (ratio fitted on 8 training images and two settings,
checked on the others).

    python benchmarks/certificate_tightness.py [--tiny] [--out DIR]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import pathmetric as pm

import evidence_common as ec

FULL = dict(bits=(2, 3, 4, 5, 6, 7, 8), sparsities=(0.1, 0.3, 0.5, 0.7, 0.9), starts=64, steps=150,
            calib_bits=(4, 6), calib_sparsities=(0.3, 0.7))
TINY = dict(bits=(2, 4, 8), sparsities=(0.3, 0.7), starts=8, steps=10, calib_bits=(4,), calib_sparsities=(0.3,))
CALIB_INPUTS = 8


def settings(model, example, cfg):
    """``[(family, setting label, x-value, compressed model)]``."""
    layers = ec.prunable(model, example)
    out = [("RTN", f"{b} bits", b, ec.quantized(model, layers, b)) for b in cfg["bits"]]
    for s in cfg["sparsities"]:
        out.append(("prune path-magnitude", f"{s:.0%}", s, pm.prune(model, s, example).model.eval()))
        out.append(("prune magnitude", f"{s:.0%}", s,
                    ec.masked(model, ec.magnitude_masks(model, example, s))))
    return out


def spread(values):
    """``(min, max, max/min, geometric std)`` of positive values."""
    logs = [math.log(v) for v in values]
    mean = sum(logs) / len(logs)
    gstd = math.exp(math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs)))
    return min(values), max(values), max(values) / min(values), gstd


def run(tiny=False, out: Path = ec.RESULTS, seed=0):
    """Run the experiment; return the rows and write the table and plot into ``out``."""
    cfg = TINY if tiny else FULL
    model, data, example = ec.setup(seed)
    x_all = torch.cat([data[0], data[2]])
    x_test = data[2]
    radius = float(x_all.abs().amax())
    x_calib = data[0][:CALIB_INPUTS]
    rows = []
    t0 = time.perf_counter()
    for family, label, value, other in settings(model, example, cfg):
        cert = pm.path_metric(model, other, example)
        gaps = ec.output_gap(model, other, x_all)
        bounds = pm.output_bound(model, other, x_all).double()
        assert bool((gaps <= bounds).all()), f"certificate violated on data: {family} {label}"
        ball, _ = ec.adversarial_gap(model, other, x_all, radius=radius, starts=cfg["starts"],
                                     steps=cfg["steps"], seed=seed)
        box, _ = ec.adversarial_gap(model, other, x_all, box=(0.0, radius), starts=cfg["starts"],
                                    steps=cfg["steps"], seed=seed)
        scale = max(radius, 1.0)
        assert max(ball, box) <= cert * scale, f"certificate violated by search: {family} {label}"
        rows.append(dict(family=family, setting=label, value=value, certified=cert,
                         data_gap=float(gaps.max()), test_gap=float(ec.output_gap(model, other, x_test).max()),
                         box_gap=box, ball_gap=ball, other=other))
    seconds = time.perf_counter() - t0

    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        calib = cfg["calib_bits"] if family == "RTN" else cfg["calib_sparsities"]
        fit = [r for r in fam if r["value"] in calib]
        ratio = ec.fit_ratio(model, [r["other"] for r in fit], x_calib)
        for r in fam:
            est = ec.calibrated_estimate(model, r["other"], example, ratio, CALIB_INPUTS)
            r.update(estimated=est.estimated, calibration=r["value"] in calib, calib_ratio=ratio)
    for r in rows:
        del r["other"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, radius, cfg, seconds, out / "certificate_tightness.md")
    plot(rows, out / "certificate_tightness.png")
    return rows


def write_table(rows, radius, cfg, seconds, path):
    lines = ["# Certificate tightness (digits CNN)\n",
             "`certified` = `pm.path_metric(model, compressed)`, a bound on `||R(x) - R'(x)||_1 / max(||x||_inf, 1)` "
             f"for every input. Found gaps: max over the 1797 digits images (`data`), over the 450 test images "
             f"(`test`), and by projected sign-gradient ascent ({cfg['starts']} starts, {cfg['steps']} steps) "
             f"in the box [0, {radius:g}]^64 (`box`) and in the sup-norm ball radius {radius:g} (`ball`, the "
             "certificate's own domain). No gap exceeded the per-sample `pm.output_bound` (asserted). "
             f"Run time {seconds:.0f} s.\n",
             "\n## Per setting\n"]
    keys = ["family", "setting", "certified", "data_gap", "box_gap", "ball_gap"]
    lines.append(ec.markdown_table(
        keys + ["cert/data", "cert/ball"],
        [[r[k] for k in keys] + [r["certified"] / r["data_gap"], r["certified"] / r["ball_gap"]] for r in rows]))
    lines.append("\n## Stability of the ratio certified / found across the settings of a family\n")
    body = []
    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        for key, lab in (("data_gap", "data"), ("ball_gap", "ball")):
            body.append([family, lab, *spread([r["certified"] / r[key] for r in fam])])
    lines.append(ec.markdown_table(["family", "gap", "min ratio", "max ratio", "max/min", "geometric std"], body))
    lines.append("\n## Calibrated estimate (NOT a bound)\n")
    lines.append(f"`estimated = certified / ratio`, ratio = geometric mean of certified / (max gap on {CALIB_INPUTS} "
                 "training images) over the calibration settings of the same family (marked `calib`). Compared "
                 "with the largest gap on the 450 test images and with the adversarial ball search.\n")
    lines.append(ec.markdown_table(
        ["family", "setting", "calib", "ratio", "certified", "estimated", "test gap", "estimated/test", "estimated/ball"],
        [[r["family"], r["setting"], "calib" if r["calibration"] else "", r["calib_ratio"], r["certified"],
          r["estimated"], r["test_gap"], r["estimated"] / r["test_gap"], r["estimated"] / r["ball_gap"]]
         for r in rows]))
    held = [r["estimated"] / r["test_gap"] for r in rows if not r["calibration"]]
    if held:
        lines.append(f"\nHeld-out settings: estimated / test gap ranges over [{min(held):.3g}, {max(held):.3g}].\n")
    Path(path).write_text("\n".join(lines))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, len(families) + 1, figsize=(5 * (len(families) + 1), 4))
    for ax, family in zip(axes, families):
        fam = [r for r in rows if r["family"] == family]
        xs = [r["value"] for r in fam]
        for key, lab, style in (("certified", "certified", "k-o"), ("estimated", "calibrated estimate", "k:"),
                                ("ball_gap", "adversarial (ball)", "C3-s"), ("box_gap", "adversarial (box)", "C1-^"),
                                ("data_gap", "max on data", "C0-v")):
            ax.semilogy(xs, [r[key] for r in fam], style, ms=4, label=lab)
        ax.set_title(family)
        ax.set_xlabel("bits" if family == "RTN" else "sparsity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("L1 output gap")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for i, family in enumerate(families):
        fam = [r for r in rows if r["family"] == family]
        ax.semilogy(range(len(fam)), [r["certified"] / r["ball_gap"] for r in fam], "o-", color=f"C{i}", label=f"{family} / ball")
        ax.semilogy(range(len(fam)), [r["certified"] / r["data_gap"] for r in fam], "o--", color=f"C{i}", label=f"{family} / data")
    ax.set_title("certified / found (per setting, in order)")
    ax.set_xlabel("setting index (bits or sparsities, increasing)")
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds, for tests")
    parser.add_argument("--out", type=Path, default=ec.RESULTS)
    args = parser.parse_args()
    for r in run(args.tiny, args.out):
        print(f"{r['family']:22s} {r['setting']:8s} certified {r['certified']:.3e}  data {r['data_gap']:.3e}  "
              f"ball {r['ball_gap']:.3e}  ratio(ball) {r['certified'] / r['ball_gap']:.1f}  "
              f"estimated {r['estimated']:.3e}")


if __name__ == "__main__":
    main()
