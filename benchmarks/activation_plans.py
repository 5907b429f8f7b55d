"""W/A plans with activation bits (issue 22 item 5) on the shipped digits CNN.

Each plan (weights on the engine's symmetric per-channel round-to-nearest grids, every layer's
input on an unsigned per-tensor grid calibrated on the 1,347 training digits) is certified by
``pm.mixed_precision_plan`` / ``pm.certify_plan`` and its model (``Plan.deployed``) is run on the
450 test digits and, along a projected sign-gradient ascent on the gap in the digits' box
[0, 1], on the points the search visits. Recorded: the plan's weight term
``d(theta, theta')``, activation term ``sum_t sum_v (s_v / 2) G(v)``, the bound at the test
set's largest sup-norm, the measured gaps and their worst ratio to the per-sample bound of
``pm.deployment_report`` over the certified samples, the saturated samples (not certified), the
shares of the two terms and the test accuracy.

Second table: Intel Neural Compressor static int8 configs (W8A8 per channel / per tensor, fp32
fallbacks of one layer) as ``path_metric_sampler`` ranks them, by the full certificate of the
converted model (calibrated on 64 training digits) beside the weight term alone, with the
measured test-set gap and accuracy of each converted model.

    python benchmarks/activation_plans.py [--out FILE]

The table is recorded in benchmarks/results/deployed_int8.md, section "Plans with activation
bits".
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import pathmetric as pm
from pathmetric.app import digits

LAYERS = ("conv1", "conv2", "fc1", "fc2")


def plans(model, calibration):
    """``{name: plan}``: uniform W8A8 and W4A8, the knapsack plan at 6 bits per weight (A8),
    and "W4A8 except conv1" (conv1 at 8 bits, its input, the model input, in float)."""
    return {
        "W8A8": pm.certify_plan(model, calibration, dict.fromkeys(LAYERS, 8), act_bits=8),
        "W4A8": pm.certify_plan(model, calibration, dict.fromkeys(LAYERS, 4), act_bits=8),
        "knapsack 6 bits/weight from {4, 8}, A8": pm.mixed_precision_plan(
            model, calibration, bits=(4, 8), avg_bits=6, act_bits=8),
        "W4A8 except conv1 (W8, float input)": pm.certify_plan(
            model, calibration, {"conv1": 8, "conv2": 4, "fc1": 4, "fc2": 4},
            act_bits={"conv1": None, "conv2": 8, "fc1": 8, "fc2": 8}),
    }


def ascent(model, deployed, x, steps=40):
    """The points a projected sign-gradient ascent on ``||R(x) - Rq(x)||_1`` visits from ``x``
    in the box [0, 1] (step decaying from 0.05 to 0)."""
    visited = []
    for step in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad((model(x) - deployed(x)).abs().sum(), x)
        x = (x.detach() + 0.05 * (1 - step / steps) * grad.sign()).clamp(0.0, 1.0)
        visited.append(x)
    return torch.cat(visited)


def accuracy(model, x, y) -> float:
    """Top-1 accuracy, the model called as it is (a converted PT2E graph refuses ``.eval()``)."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def gaps(model, deployed, x):
    with torch.no_grad():
        return (model(x) - deployed(x)).abs().sum(dim=1).double()


def measure(name, plan, model, calibration, x_test, y_test):
    start = time.perf_counter()
    deployed = plan.deployed(model, calibration)
    report = pm.deployment_report(model, deployed, x_test)
    gap, certified = gaps(model, deployed, x_test), ~report.saturated
    searched = ascent(model, deployed, x_test[:64].clone())
    search_report = pm.deployment_report(model, deployed, searched)
    search_gap, search_certified = gaps(model, deployed, searched), ~search_report.saturated
    ratio = max(float((gap[certified] / report.bound[certified]).max()),
                float((search_gap[search_certified] / search_report.bound[search_certified])
                      .max()) if bool(search_certified.any()) else 0.0)
    assert bool((gap[certified] <= report.bound[certified]).all())
    assert bool((search_gap[search_certified] <= search_report.bound[search_certified]).all())
    bits = ", ".join(f"{layer} W{plan.bits.get(layer, 32)}A{plan.act_bits.get(layer, 32)}"
                     for layer in LAYERS)
    return {
        "plan": name, "layers": bits, "avg_bits": plan.avg_bits,
        "weight_term": plan.certified_bound, "activation_term": plan.activation_bound,
        "bound": plan.bound(float(x_test.abs().max())),
        "gap_max": float(gap.max()), "gap_mean": float(gap.mean()),
        "search_gap_max": float(search_gap.max()), "worst_ratio": ratio,
        "saturated": f"{report.saturated_count}/{len(x_test)}",
        "search_saturated": f"{search_report.saturated_count}/{len(searched)}",
        "calibration_saturated": f"{plan.saturated_count}/{len(calibration)}",
        "weight_share": report.weight_share, "activation_share": report.activation_share,
        "accuracy": digits.accuracy(deployed, x_test, y_test),
        "seconds": time.perf_counter() - start,
    }


def table(rows, float_accuracy) -> str:
    lines = [
        "| plan | layers | avg weight bits | weight term | activation term | bound (sup-norm 1) "
        "| measured gap (max / mean) | ascent gap (max) | worst gap/bound | saturated (test / "
        "ascent / calibration) | weight share | activation share | accuracy |",
        "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['plan']} | {r['layers']} | {r['avg_bits']:.2f} | {r['weight_term']:.4g} | "
            f"{r['activation_term']:.4g} | {r['bound']:.4g} | {r['gap_max']:.3g} / "
            f"{r['gap_mean']:.3g} | {r['search_gap_max']:.3g} | {r['worst_ratio']:.3g} | "
            f"{r['saturated']} / {r['search_saturated']} / {r['calibration_saturated']} | "
            f"{r['weight_share']:.1%} | {r['activation_share']:.1%} | "
            f"{float_accuracy:.3f} -> {r['accuracy']:.3f} |")
    return "\n".join(lines)


def inc_ranking(model, x_train, x_test, y_test) -> str:
    """The static configs of the INC table, ranked by ``path_metric_sampler``."""
    from neural_compressor.torch.quantization import StaticQuantConfig

    from pathmetric.adapters.neural_compressor import path_metric_sampler, static_deployed
    fp32 = dict(w_dtype="fp32", act_dtype="fp32")
    configs = {
        "W8A8 per channel": StaticQuantConfig(),
        "W8A8 per tensor": StaticQuantConfig(w_granularity="per_tensor"),
        "per channel, fc2 in fp32": StaticQuantConfig().set_local("fc2", StaticQuantConfig(**fp32)),
        "per channel, conv1 in fp32": StaticQuantConfig().set_local("conv1",
                                                                    StaticQuantConfig(**fp32)),
        "per tensor, conv1 in fp32": StaticQuantConfig(w_granularity="per_tensor").set_local(
            "conv1", StaticQuantConfig(**fp32)),
    }
    calibration = x_train[:64]
    sampler = path_metric_sampler(model, calibration)(list(configs.values()))
    by_weight = sorted(range(len(configs)), key=lambda i: sampler.reports[i].weight_term)
    lines = ["| config | full bound (rank) | weight term (rank by it alone) | activation term | "
             "saturated calibration digits | measured test gap (max) | accuracy |",
             "|" + "---|" * 7]
    for i, name in enumerate(configs):
        report = sampler.reports[i]
        deployed = static_deployed(model, list(configs.values())[i], calibration)
        lines.append(
            f"| {name} | {sampler.bounds[i]:.4g} ({list(sampler).index(i) + 1}) | "
            f"{report.weight_term:.4g} ({by_weight.index(i) + 1}) | "
            f"{report.activation_term:.4g} | {report.saturated_count}/{len(calibration)} | "
            f"{float(gaps(model, deployed, x_test).max()):.3g} | "
            f"{accuracy(deployed, x_test, y_test):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="write the markdown table here (default: print it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits.load_digits_tensors()
    model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
    rows = [measure(name, plan, model, x_train, x_test, y_test)
            for name, plan in plans(model, x_train).items()]
    text = (table(rows, digits.accuracy(model, x_test, y_test)) + "\n\n"
            + inc_ranking(model, x_train, x_test, y_test))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
