"""Side by side with the authors' code in one process: path-norm and path-magnitude scores in
float64, 1 thread, against the float64 convolutions every lifted evaluation runs (the floor).

Usage: python benchmarks/authors_comparison.py --authors DIR [--models alexnet,vgg16,resnet18,resnet50]
       [--size 224] [--repeat 3] [--out benchmarks/results/engine_speed.md]

``DIR`` is a checkout of the authors' repository (github.com/agonon/pathnorm-pytorch: Gonon,
Brisebarre, Riccietti, Gribonval), which this script never fetches: ``DIR/pathnorm.py`` gives
``compute_path_norm`` (arXiv 2310.01225) and ``DIR/repro/icml25/utils/path_magnitude.py`` the
path-magnitude scores ``|theta_i| * dN/d|theta_i|`` of arXiv 2405.15006. Where either does not
import, its columns say so and only ours and the floor are measured.

Timings are best of ``--repeat`` warm calls (a cold one, capture included, for our path-norm).
The floor is the self time of the float64 convolutions and matrix products (``aten::*conv*``,
``mm``, ``addmm``) inside our own call, from torch.profiler: the authors' code runs the same
float64 maps on the same lifted network, so ``authors / floor`` bounds the speed-up over them of
any implementation of that pass, ours included; ``ours / floor`` is how far our call is from it.
"""
import argparse
import importlib
import sys

import torch
import torchvision
from engine_speed import best_time
from torch.profiler import ProfilerActivity, profile

import pathmetric as pm
from pathmetric.core.support import forget

LINEAR_MAPS = ("aten::mm", "aten::addmm", "aten::bmm")


def linear_map_seconds(fn) -> float:
    """Self CPU seconds of the convolutions and matrix products run by one call of ``fn``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages()
               if "conv" in e.key or e.key in LINEAR_MAPS) / 1e6


def authors_code(directory):
    """``(compute_path_norm, get_path_magnitude_scores, note)``; None where it does not import."""
    if directory is None:
        return None, None, "no --authors checkout given"
    sys.path[:0] = [directory, f"{directory}/repro/icml25"]
    notes, found = [], []
    for module, name in (("pathnorm", "compute_path_norm"),
                         ("utils.path_magnitude", "get_path_magnitude_scores")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError) as exc:   # that column is skipped, and says why
            found.append(None)
            notes.append(f"{module}.{name} not importable from {directory}: "
                         f"{type(exc).__name__}: {exc}")
    return found[0], found[1], "; ".join(notes)


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


def seconds(t):
    return f"{t:.3f}" if t else "n/a"


def measure(name, size, repeat, their_norm, their_scores):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.zeros(1, 3, size, size)
    forget(model)
    cold = best_time(lambda: (forget(model), pm.path_norm(model, x)), 1)
    ours = best_time(lambda: pm.path_norm(model, x), repeat)
    floor = linear_map_seconds(lambda: pm.path_norm(model, x))
    theirs = value = None
    if their_norm is not None:
        theirs = best_time(lambda: their_norm(model, input_shape=(3, size, size)), repeat)
        value = their_norm(model, input_shape=(3, size, size))
    ours_scores = best_time(lambda: pm.weight_scores(model, x), repeat)
    floor_scores = linear_map_seconds(lambda: pm.weight_scores(model, x))
    theirs_scores = None
    if their_scores is not None:
        theirs_scores = best_time(lambda: their_scores(model, input_shape=(1, 3, size, size)),
                                  repeat)
    mine = pm.path_norm(model, x)
    agree = f"{abs(mine - value) / value:.1e}" if value else "n/a"
    return (f"| {name} | {seconds(theirs)} | {ours:.3f} | {ratio(theirs, ours)} | {cold:.3f} | "
            f"{ratio(theirs, cold)} | {floor:.3f} | {ratio(theirs, floor)} | {ratio(ours, floor)} | "
            f"{agree} | {seconds(theirs_scores)} | {ours_scores:.3f} | "
            f"{ratio(theirs_scores, ours_scores)} | {floor_scores:.3f} | "
            f"{ratio(theirs_scores, floor_scores)} | {ratio(ours_scores, floor_scores)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", default=None, help="a checkout of agonon/pathnorm-pytorch")
    parser.add_argument("--models", default="alexnet,vgg16,resnet18,resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    their_norm, their_scores, note = authors_code(args.authors)
    lines = [f"### Against the authors' code: 1 thread, float64, 1x3x{args.size}x{args.size}, "
             f"best of {args.repeat}, torch {torch.__version__}", ""]
    if note:
        lines += [f"Not measured: {note}.", ""]
    lines += ["| model | authors path-norm s | ours warm s | authors / ours | ours cold s | "
              "authors / ours cold | floor s | authors / floor | ours / floor | path-norm rel. "
              "diff | authors scores s | ours scores s | authors / ours | floor s | "
              "authors / floor | ours / floor |", "|---" + "|---:" * 16 + "|"]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        lines.append(measure(name, args.size, args.repeat, their_norm, their_scores))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
