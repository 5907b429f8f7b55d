"""INC 3.10 autotune on the digits CNN of ``examples/inc_autotune_digits.py``: trials needed to reach
the tolerable loss with the path-metric sampler / fallback ranking versus INC's default order, and
the estimator's cost against one INC trial.

- RTN grid (bits 2, 3, 4 x per-channel / group 32 / group 16, listed most compressed first):
  ``TuningConfig(sampler=default_sampler)`` versus ``path_metric_sampler`` in its three orders
  (``bound``; ``size`` with ``max_bound`` = the grid's median bound; ``bound_per_saved_bit``);
  trials, accepted config, its accuracy and weight storage (bits per conv/linear weight).
- Layer-wise fp32 fallback from 2-bit RTN (per-channel and group 16), walked by INC's sequential
  sampler: ``path_metric_config_set`` (``pm.layer_sensitivity`` ranking) versus falling back in
  model order and in reverse model order; trials = fp32 layers needed + 1.
- Cost: ``quantization_bound`` of one config versus one INC trial (quantize + evaluate on the 450
  test images) for RTN and for PT2E static int8 (calibration on 256 training images).

    python benchmarks/inc_sampler.py [--seeds 0 1 2 3 4] [--tolerable-loss 0.01] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import inc_autotune_digits as ex  # noqa: E402
from neural_compressor.common.base_tuning import default_sampler  # noqa: E402
from neural_compressor.torch.export import export  # noqa: E402
from neural_compressor.torch.quantization import INT8StaticQuantConfig, RTNConfig, quantize  # noqa: E402

from pathmetric.adapters.neural_compressor import (  # noqa: E402
    path_metric_config_set,
    path_metric_sampler,
    quantization_bound,
)
from pathmetric.app.digits import load_digits_tensors  # noqa: E402

FALLBACK_BASES = (RTNConfig(bits=2, group_size=-1), RTNConfig(bits=2, group_size=16))


def _timed(fn, repeat=3):
    """(result, median wall seconds over ``repeat`` calls)."""
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times)


def _copy_exported(model):
    """Deep copy keeping the attributes INC's autotune keeps (``_deepcopy_warp``)."""
    copied = copy.deepcopy(model)
    copied._exported, copied.dynamic_shapes = model._exported, model.dynamic_shapes
    return copied


def _tune(model, configs, sampler, evaluate, goal, tolerable_loss):
    tried, scores, best = ex.run_autotune(model, configs, sampler, evaluate, tolerable_loss)
    reached = scores[-1] >= goal
    return dict(trials=len(tried), reached=reached, accepted=configs[tried[-1]] if reached else None,
                accuracy=evaluate(best))


def run(seeds, tolerable_loss):
    data = load_digits_tensors(0)
    x = data[2][:1]
    evaluate = ex.accuracy_fn(data[2], data[3])
    grid_rows, fallback_rows, cost_rows = [], [], []
    for seed in seeds:
        model = ex.trained_model(data, seed)
        base_acc = evaluate(model)
        goal = base_acc * (1 - tolerable_loss)
        grid = ex.rtn_grid()
        bounds = sorted(quantization_bound(model, x, c) for c in grid)
        budget = bounds[len(bounds) // 2]   # the median bound of the grid
        for name, sampler in (("INC default order", default_sampler),
                              ("path-metric sampler", path_metric_sampler(model, x)),
                              ("path-metric, order=size (median bound)",
                               path_metric_sampler(model, x, order="size", max_bound=budget)),
                              ("path-metric, order=bound_per_saved_bit",
                               path_metric_sampler(model, x, order="bound_per_saved_bit"))):
            r = _tune(model, grid, sampler, evaluate, goal, tolerable_loss)
            grid_rows.append((seed, base_acc, name, r["trials"], ex.describe(r["accepted"]) if r["reached"] else "none",
                              r["accuracy"], ex.storage_bits(model, r["accepted"]) if r["reached"] else 32.0))
        for base in FALLBACK_BASES:
            sequences = (("model order", ex.model_order_fallbacks(model, base)),
                         ("reverse model order", ex.model_order_fallbacks(model, base, reverse=True)),
                         ("path-metric ranking", path_metric_config_set(model, x, base)))
            for name, sequence in sequences:
                r = _tune(model, sequence, default_sampler, evaluate, goal, tolerable_loss)
                fp32 = [k.rstrip("$") for k, v in r["accepted"].local_config.items()
                        if v.dtype == "fp32" and k.rstrip("$").isidentifier()]
                fallback_rows.append((seed, ex.describe(base), name, r["trials"], fp32, r["accuracy"],
                                      ex.storage_bits(model, r["accepted"])))
        # cost: one bound versus one INC trial
        rtn = RTNConfig(bits=4, group_size=32)
        _, t_bound = _timed(lambda: quantization_bound(model, x, rtn))
        _, t_quant = _timed(lambda: quantize(copy.deepcopy(model), copy.deepcopy(rtn)))
        q_model = quantize(copy.deepcopy(model), copy.deepcopy(rtn))
        evaluate(q_model)  # INCWeightOnlyLinear recovers its weight on the first forward
        _, t_eval = _timed(lambda: evaluate(q_model))
        cost_rows.append((seed, "RTN 4 bits, group 32", t_bound, t_quant, t_eval))
        exported = export(copy.deepcopy(model), (data[2][:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
        static = INT8StaticQuantConfig()
        _, t_bound = _timed(lambda: quantization_bound(model, x, static))
        q_model, t_quant = _timed(lambda: quantize(_copy_exported(exported), copy.deepcopy(static),
                                                   run_fn=lambda m: m(data[0][:256]),
                                                   example_inputs=(data[2][:2],)), repeat=1)
        _, t_eval = _timed(lambda: evaluate(q_model))
        cost_rows.append((seed, "PT2E static int8", t_bound, t_quant, t_eval))
    return grid_rows, fallback_rows, cost_rows


def report(grid_rows, fallback_rows, cost_rows, seeds, tolerable_loss):
    lines = ["# INC autotune: path-metric sampler vs INC's default order (digits CNN)", "",
             f"`python benchmarks/inc_sampler.py --seeds {' '.join(map(str, seeds))} --tolerable-loss "
             f"{tolerable_loss}`; model: `DigitsNet` of examples/inc_autotune_digits.py (2 convs, 4 Linear "
             "layers, 20 epochs), accuracy on the 450 test images of scikit-learn digits. A trial = INC "
             "`quantize` + evaluation; autotune stops at the first trial within the tolerable loss. RTN "
             "quantizes the Linear layers only (convs stay fp32 and count as 32 bits in bits/weight).", "",
             "## RTN grid (bits 2, 3, 4 x per-channel / group 32 / group 16, most compressed first)", "",
             "| seed | fp32 acc | sampler | trials | accepted config | accuracy | bits/weight |",
             "|---|---|---|---|---|---|---|"]
    for seed, acc, name, trials, accepted, accuracy, bits in grid_rows:
        lines.append(f"| {seed} | {acc:.4f} | {name} | {trials} | {accepted} | {accuracy:.4f} | {bits:.2f} |")
    for name in dict.fromkeys(r[2] for r in grid_rows):
        rows = [r for r in grid_rows if r[2] == name]
        lines.append(f"\n**{name}**: mean trials {statistics.mean(r[3] for r in rows):.2f}, "
                     f"mean bits/weight {statistics.mean(r[6] for r in rows):.2f}")
    lines += ["", "`order=\"bound\"` (the default) orders by certified error only, so on a grid of "
              "unequal cost it tries the mildest configuration first: fewer trials, less compression. "
              "`order=\"size\"` tries the smallest models whose bound is within `max_bound` first, "
              "`order=\"bound_per_saved_bit\"` the least certified error per saved bit.", "",
              "## Layer-wise fp32 fallback from 2-bit RTN (INC's sequential sampler)", "",
              "| seed | base | fallback order | trials | fp32 layers at acceptance | accuracy | bits/weight |",
              "|---|---|---|---|---|---|---|"]
    for seed, base, name, trials, fp32, accuracy, bits in fallback_rows:
        lines.append(f"| {seed} | {base} | {name} | {trials} | {', '.join(fp32) or '-'} | {accuracy:.4f} | {bits:.2f} |")
    for name in ("model order", "reverse model order", "path-metric ranking"):
        rows = [r for r in fallback_rows if r[2] == name]
        lines.append(f"\n**{name}**: mean trials {statistics.mean(r[3] for r in rows):.2f}")
    lines += ["", "## Cost: one certified bound vs one INC trial (median wall seconds, 1 thread)", "",
              "| seed | config | quantization_bound | INC quantize | INC evaluate | bound / trial |",
              "|---|---|---|---|---|---|"]
    for seed, name, t_bound, t_quant, t_eval in cost_rows:
        lines.append(f"| {seed} | {name} | {t_bound:.4f} | {t_quant:.4f} | {t_eval:.4f} | "
                     f"{t_bound / (t_quant + t_eval):.3f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--tolerable-loss", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inc_sampler.md")
    args = parser.parse_args()
    # One intra-op thread for INC and the engine alike: on the shared 2-core box two threads make
    # small float64 convolutions (the engine's sum-pool) up to 1000x slower (notes/requests.md).
    torch.set_num_threads(1)
    rows = run(args.seeds, args.tolerable_loss)
    text = report(*rows, args.seeds, args.tolerable_loss)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
