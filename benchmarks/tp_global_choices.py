"""Global torch-pruning with each PathMetricImportance choice beside magnitude: where it cuts.

Global pruning (``global_pruning=True``, ratio ``--ratio`` in ``--steps`` iterative steps, the
classifier ignored) of

- the digits CNN shipped with pathmetric (trained; input 1x1x8x8): parameters and MACs left,
  test accuracy right after pruning and after ``--epochs`` epochs of fine-tuning (Adam, the
  package's ``digits.train``), mean over ``--seeds`` fine-tuning seeds;
- resnet18 and vgg11_bn (random weights, input 1x3x32x32): parameters and MACs left, convs changed.

Choices: torch-pruning's ``GroupMagnitudeImportance`` (its default ``normalizer="mean"``),
``PathMetricImportance`` plain shares, ``normalizer="mean"``, ``normalizer="max"`` and
``cost="params"``.

    python benchmarks/tp_global_choices.py [--ratio 0.5] [--steps 3] [--epochs 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from pathmetric.adapters.torch_pruning import PathMetricImportance
from pathmetric.app import digits

CHOICES = {
    "magnitude (torch-pruning, normalizer=mean)": lambda x: tp.importance.GroupMagnitudeImportance(),
    "path mass (default)": lambda x: PathMetricImportance(x),
    "path mass, normalizer=mean": lambda x: PathMetricImportance(x, normalizer="mean"),
    "path mass, normalizer=max": lambda x: PathMetricImportance(x, normalizer="max"),
    "path mass, cost=params": lambda x: PathMetricImportance(x, cost="params"),
}


def prune(model, x, importance, ignored, ratio, steps):
    base_macs, base_params = tp.utils.count_ops_and_params(model, x)
    convs = {m: m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=ratio,
                                  global_pruning=True, iterative_steps=steps,
                                  ignored_layers=ignored)
    for _ in range(steps):
        pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, x)
    changed = sum(m.out_channels < c for m, c in convs.items())
    return params / base_params, macs / base_macs, f"{changed}/{len(convs)}"


def run(ratio, steps, epochs, seeds):
    torch.set_num_threads(1)
    data = digits.load_digits_tensors(0)
    x = torch.zeros(1, 1, 8, 8)
    rows = []
    for name, make in CHOICES.items():
        model = digits.pretrained(data)
        params, macs, changed = prune(model, x, make(x), [model.fc2], ratio, steps)
        pruned_acc = digits.accuracy(model, data[2], data[3])
        tuned = [digits.accuracy(digits.train(copy.deepcopy(model), data, epochs=epochs, seed=s),
                                 data[2], data[3]) for s in seeds]
        rows.append(("digits CNN", name, params, macs, changed, pruned_acc, statistics.mean(tuned)))
    x = torch.zeros(1, 3, 32, 32)
    for zoo in ("resnet18", "vgg11_bn"):
        for name, make in CHOICES.items():
            torch.manual_seed(0)
            model = torchvision.models.get_model(zoo, weights=None, num_classes=10).eval()
            ignored = [model.fc] if zoo == "resnet18" else [model.classifier[-1]]
            params, macs, changed = prune(model, x, make(x), ignored, ratio, steps)
            rows.append((zoo, name, params, macs, changed, None, None))
    return rows


def report(rows, ratio, steps, epochs, seeds):
    lines = ["# Global pruning with torch-pruning: where each importance cuts", "",
             f"`python benchmarks/tp_global_choices.py --ratio {ratio} --steps {steps} --epochs "
             f"{epochs}`: global_pruning=True, ratio {ratio} in {steps} iterative steps, classifier "
             "ignored. digits CNN: the trained model shipped with pathmetric, test accuracy on "
             f"scikit-learn digits right after pruning and after {epochs} fine-tuning epochs (mean "
             f"over seeds {list(seeds)}; unpruned 0.989). resnet18 / vgg11_bn: random weights, "
             "input 1x3x32x32 (no data: sizes only).", "",
             "| model | importance | params left | MACs left | convs changed | acc. pruned | "
             "acc. fine-tuned |", "|---|---|---|---|---|---|---|"]
    for model, name, params, macs, changed, acc, tuned in rows:
        accs = f"{acc:.3f} | {tuned:.3f}" if acc is not None else "- | -"
        lines.append(f"| {model} | {name} | {params:.3f} | {macs:.3f} | {changed} | {accs} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "tp_global_choices.md"))
    args = parser.parse_args()
    text = report(run(args.ratio, args.steps, args.epochs, args.seeds), args.ratio, args.steps,
                  args.epochs, args.seeds)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
