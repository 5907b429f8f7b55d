"""Certificate tightness on the digits CNN and the breast-cancer MLP: the certified bound
``pm.path_metric`` against the largest output gap ``||R(x) - R'(x)||_1`` actually found, for
whole-model RTN quantization at 2..8 bits and for one-shot pruning (path-magnitude ``pm.prune`` and
global magnitude) at several sparsities.

Gaps are searched (1) on every input of the dataset and (2) by projected sign-gradient ascent on
the input inside the data's sup-norm ball ``||x||_inf <= B`` (B = the data's largest sup-norm, 1
for digits) and inside the data's box ``[min, max]^d``. Asserts that no gap ever exceeds the
per-sample ``pm.output_bound`` (nor ``max(B, 1) * certified`` in the search). Reports
``certified / found`` and how stable it is across bit-widths and sparsities, and evaluates the
calibrated estimates of ``pm.calibrate`` / ``pm.estimate`` (ratio fitted on 8 training inputs
and two settings, for the largest gap on data and for the worst case found by search, checked on
the other settings).

    python benchmarks/certificate_tightness.py [--tiny] [--out DIR]
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import evidence_common as ec
import torch

import pathmetric as pm

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


def run(tiny=False, out: Path = ec.RESULTS, seed=0, datasets=tuple(ec.DATASETS)):
    """Run the experiment on every dataset; return ``{dataset: rows}`` and write the table and plot
    into ``out``."""
    cfg = TINY if tiny else FULL
    results = {d: measure(d, cfg, seed) for d in datasets}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Certificate tightness\n"]
    for dataset, (rows, info) in results.items():
        lines += section(dataset, rows, cfg, **info)
    (out / "certificate_tightness.md").write_text("\n".join(lines))
    plot({d: rows for d, (rows, _) in results.items()}, out / "certificate_tightness.png")
    return {d: rows for d, (rows, _) in results.items()}


def measure(dataset, cfg, seed):
    """Rows (one per compression setting) and facts of the data for one dataset's model."""
    model, data, example = ec.setup(seed, dataset)
    x_all = torch.cat([data[0], data[2]])
    x_test = data[2]
    radius = float(x_all.abs().amax())
    box = (float(x_all.min()), float(x_all.max()))
    x_calib = data[0][:CALIB_INPUTS]
    scale = x_all.flatten(1).abs().amax(1).clamp(min=1.0).double()
    rows = []
    t0 = time.perf_counter()
    for family, label, value, other in settings(model, example, cfg):
        cert = pm.path_metric(model, other, example)
        gaps = ec.output_gap(model, other, x_all)
        bounds = pm.output_bound(model, other, x_all).double()
        assert bool((gaps <= bounds).all()), f"certificate violated on data: {dataset} {family} {label}"
        ball, at_ball = ec.adversarial_gap(model, other, x_all, radius=radius, starts=cfg["starts"],
                                           steps=cfg["steps"], seed=seed)
        in_box, at_box = ec.adversarial_gap(model, other, x_all, box=box, starts=cfg["starts"],
                                            steps=cfg["steps"], seed=seed)
        assert max(ball, in_box) <= cert * max(radius, 1.0), f"certificate violated by search: {family} {label}"
        rows.append(dict(family=family, setting=label, value=value, certified=cert,
                         data_gap=float((gaps / scale).max()),
                         test_gap=float((gaps[-len(x_test):] / scale[-len(x_test):]).max()),
                         box_gap=in_box / max(float(at_box.abs().max()), 1.0),
                         ball_gap=ball / max(float(at_ball.abs().max()), 1.0), other=other))
    seconds = time.perf_counter() - t0

    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        calib = cfg["calib_bits"] if family == "RTN" else cfg["calib_sparsities"]
        fit = [r for r in fam if r["value"] in calib]
        for target, key in (("data", "est_data"), ("worst-case", "est_worst")):
            fitted = pm.calibrate(model, [r["other"] for r in fit], x_calib, target, steps=cfg["steps"],
                                  seed=seed)
            for r in fam:
                est = pm.estimate(model, r["other"], example, fitted)
                r.update({key: est.estimated, key + "_ratio": fitted.ratio,
                          "calibration": r["value"] in calib})
    for r in rows:
        del r["other"]
    return rows, dict(radius=radius, box=box, n_all=len(x_all), n_test=len(x_test), seconds=seconds)


def section(dataset, rows, cfg, radius, box, n_all, n_test, seconds):
    lines = [f"\n# {ec.DATASETS[dataset]}\n",
             "`certified` = `pm.path_metric(model, compressed)`, a bound on `||R(x) - R'(x)||_1 / max(||x||_inf, 1)` "
             f"for every input. Found gaps, each divided by that factor `max(||x||_inf, 1)` of its input: max over all {n_all} inputs (`data`), over the {n_test} test inputs "
             f"(`test`), and by projected sign-gradient ascent ({cfg['starts']} starts, {cfg['steps']} steps) "
             f"in the box [{box[0]:.3g}, {box[1]:.3g}]^d (`box`) and in the sup-norm ball of radius {radius:.3g} "
             f"(`ball`; the certificate's factor there is {max(radius, 1.0):.3g}). No gap exceeded the per-sample "
             f"`pm.output_bound` (asserted). Run time {seconds:.0f} s.\n",
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
    lines.append("`estimated = certified / ratio`; ratio = geometric mean, over the calibration settings of the "
                 f"same family (marked `calib`), of certified / the gap observed from {CALIB_INPUTS} training inputs: "
                 "`data` = their largest gap, compared with the largest gap on the test inputs; `worst-case` = the "
                 "gap gradient ascent finds from them in their sup-norm ball, compared with the `ball` search above.\n")
    lines.append(ec.markdown_table(
        ["family", "setting", "calib", "certified", "est. data", "test gap", "est. data / test", "est. worst-case",
         "ball gap", "est. worst-case / ball"],
        [[r["family"], r["setting"], "calib" if r["calibration"] else "", r["certified"], r["est_data"],
          r["test_gap"], r["est_data"] / r["test_gap"], r["est_worst"], r["ball_gap"], r["est_worst"] / r["ball_gap"]]
         for r in rows]))
    for key, ref, lab in (("est_data", "test_gap", "data estimate / test gap"),
                          ("est_worst", "ball_gap", "worst-case estimate / ball gap")):
        held = [r[key] / r[ref] for r in rows if not r["calibration"]]
        if held:
            lines.append(f"\nHeld-out settings, {lab}: [{min(held):.3g}, {max(held):.3g}].\n")
    return lines


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for rows in results.values() for r in rows))
    fig, grid = plt.subplots(len(results), len(families) + 1, figsize=(5 * (len(families) + 1), 4 * len(results)),
                             squeeze=False)
    for axes, (dataset, rows) in zip(grid, results.items()):
        for ax, family in zip(axes, families):
            fam = [r for r in rows if r["family"] == family]
            xs = [r["value"] for r in fam]
            for key, lab, style in (("certified", "certified", "k-o"), ("est_worst", "estimate (worst-case)", "k--"),
                                    ("est_data", "estimate (data)", "k:"),
                                    ("ball_gap", "adversarial (ball)", "C3-s"), ("box_gap", "adversarial (box)", "C1-^"),
                                    ("data_gap", "max on data", "C0-v")):
                ax.semilogy(xs, [r[key] for r in fam], style, ms=4, label=lab)
            ax.set_title(f"{dataset}: {family}", fontsize=10)
            ax.set_xlabel("bits" if family == "RTN" else "sparsity")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("L1 output gap")
        axes[0].legend(fontsize=7)
        ax = axes[-1]
        for i, family in enumerate(families):
            fam = [r for r in rows if r["family"] == family]
            ax.semilogy(range(len(fam)), [r["certified"] / r["ball_gap"] for r in fam], "o-", color=f"C{i}",
                        label=f"{family} / ball")
            ax.semilogy(range(len(fam)), [r["certified"] / r["data_gap"] for r in fam], "o--", color=f"C{i}",
                        label=f"{family} / data")
        ax.set_title(f"{dataset}: certified / found", fontsize=10)
        ax.set_xlabel("setting index (bits or sparsities, increasing)")
        ax.legend(fontsize=6, loc="lower right", ncol=2)
        ax.grid(alpha=0.3)
    ec.save_figure(fig, path, dpi=100)


def main():
    args = ec.command_line(__doc__)
    for dataset, rows in run(args.tiny, args.out).items():
        for r in rows:
            print(f"{dataset:14s} {r['family']:22s} {r['setting']:8s} certified {r['certified']:.3e}  "
                  f"data {r['data_gap']:.3e}  ball {r['ball_gap']:.3e}  "
                  f"ratio(ball) {r['certified'] / r['ball_gap']:.1f}  estimated data {r['est_data']:.3e} "
                  f"worst-case {r['est_worst']:.3e}")


if __name__ == "__main__":
    main()
