"""Cost of one torch-pruning ``pruner.step()`` on resnet50: PathMetricImportance against
torch-pruning's GroupMagnitudeImportance and GroupTaylorImportance, in the same run.

Each measurement builds a fresh randomly initialised resnet50 and a MetaPruner (global pruning,
ratio 0.5, ``fc`` ignored; not timed), then times ``pruner.step()``. Taylor needs gradients: its
forward + backward on a batch of ``--batch`` images is timed too and reported with the step.
PathMetricImportance's time includes everything it does (capture of the model, one lifted
forward and backward in float64, every group's score); the engine pass alone
(``pm.PathMasses`` on a fresh model) is timed as its own row. Wall-clock and process CPU seconds
(all threads) are medians over ``--repeat`` runs; ratios are against GroupMagnitudeImportance.

    python benchmarks/tp_step.py [--size 224] [--batch 8] [--repeat 3] [--threads 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

import pathmetric as pm
from pathmetric.adapters.torch_pruning import PathMetricImportance

ENGINE = "of which pm.PathMasses"  # the engine pass alone, on a fresh model


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(method, size, batch):
    """(wall, cpu) of the step, (wall, cpu) of Taylor's forward + backward, parameters left."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    example = torch.randn(1, 3, size, size)
    if method == ENGINE:
        return _timed(lambda: pm.PathMasses(model, example)), (0.0, 0.0), None
    importance = {
        "PathMetricImportance": lambda: PathMetricImportance(example),
        "GroupMagnitudeImportance": tp.importance.GroupMagnitudeImportance,
        "GroupTaylorImportance": tp.importance.GroupTaylorImportance,
    }[method]()
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model.fc])
    gradients = (0.0, 0.0)
    if method == "GroupTaylorImportance":
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 1000, (batch,))
        gradients = _timed(
            lambda: torch.nn.functional.cross_entropy(model(images), labels).backward())
    before = sum(p.numel() for p in model.parameters())
    step = _timed(pruner.step)
    left = sum(p.numel() for p in model.parameters())
    assert model(example).shape == (1, 1000) and left < 0.6 * before, "the step did not prune"
    return step, gradients, left


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8, help="batch of Taylor's backward")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: stable figures on a shared machine)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tp_step.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    methods = ["GroupMagnitudeImportance", "GroupTaylorImportance", "PathMetricImportance", ENGINE]
    runs = {m: [] for m in methods}
    for method in methods:  # warm-up round (first-call costs), not kept
        measure(method, args.size, args.batch)
    for _ in range(args.repeat):  # interleaved, so load changes hit every method alike
        for method in methods:
            runs[method].append(measure(method, args.size, args.batch))
            print(method, runs[method][-1], flush=True)

    def median(method, part, kind):
        return statistics.median(r[part][kind] for r in runs[method])

    base = {k: median("GroupMagnitudeImportance", 0, k) for k in (0, 1)}
    lines = [
        "# One `pruner.step()` on resnet50: PathMetricImportance vs torch-pruning importances",
        "",
        f"`python benchmarks/tp_step.py --size {args.size} --batch {args.batch} "
        f"--repeat {args.repeat} --threads {args.threads}`; torch {torch.__version__}, "
        f"torch-pruning {version('torch-pruning')}, {platform.processor() or platform.machine()}, "
        f"input 1x3x{args.size}x{args.size}, MetaPruner(global_pruning=True, pruning_ratio=0.5, "
        "ignored_layers=[fc]). Medians; CPU = process CPU seconds over all threads. Machine load "
        f"average at the end: {os.getloadavg()[0]:.1f} (other jobs share the cores, so wall "
        "times are inflated; the ratios of the interleaved runs are the figures to read).",
        "",
        "| importance | step wall s | step CPU s | + Taylor fwd/bwd wall s | total wall s | "
        "total wall / magnitude | total CPU / magnitude | params left (M) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        wall, cpu = median(method, 0, 0), median(method, 0, 1)
        grad_wall, grad_cpu = median(method, 1, 0), median(method, 1, 1)
        extra = f"{grad_wall:.2f} (batch {args.batch})" if grad_wall else "-"
        left = runs[method][0][2]
        left = f"{left / 1e6:.2f} of 25.56" if left else "-"
        lines.append(f"| {method} | {wall:.2f} | {cpu:.2f} | {extra} | {wall + grad_wall:.2f} | "
                     f"{(wall + grad_wall) / base[0]:.1f}x | {(cpu + grad_cpu) / base[1]:.1f}x | "
                     f"{left} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
