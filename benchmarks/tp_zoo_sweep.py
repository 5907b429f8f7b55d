"""MetaPruner with PathMetricImportance over every torchvision classification model.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights,
``--size`` input): ``pm.check_support``; then one MetaPruner step (ratio 0.3, local, the
classifier ignored) with torch-pruning's own ``MagnitudeImportance`` and, on a fresh copy, with
``PathMetricImportance`` through ``certified_step``. A row says what happened:

- ``pruned``: check_support accepts, both importances prune, the pruned model runs; parameters
  left and the certified bound are given;
- ``refused``: check_support refuses and PathMetricImportance raises ``UnsupportedModelError``
  naming the same first op (torch-pruning's magnitude result is given beside it);
- ``torch-pruning fails``: torch-pruning's own magnitude pruning fails (the error is given);
  such a model is outside the acceptance;
- ``no forward at this size``: the model itself cannot run on the small input (AlexNet at 32x32);
- anything else is a failure of ours (the script exits 1).

Models above ``--max-params`` parameters are listed as skipped (CPU time and memory).

    python benchmarks/tp_zoo_sweep.py [--size 64] [--max-params 150e6] [--out FILE]
        [--models NAME ... | --from NAME] [--merge]

``--models`` / ``--from`` sweep only those models (``--from``: that one and the ones after it in
list order); ``--merge`` keeps the other rows of the existing ``--out`` table (and the text below
it) and writes all rows in list order with their totals, under a lock, so that single models can
be swept one per process.
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

import pathmetric as pm
from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step


def _classifier(model):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:] if linears else [m for m in model.modules()
                                         if isinstance(m, nn.Conv2d)][-1:]


def _prune(model, x, importance, certify):
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=0.3,
                                  ignored_layers=_classifier(model))
    bound = certified_step(pruner, x) if certify else pruner.step()
    with torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), bound


def _short(error):
    return f"{type(error).__name__}: {' '.join(str(error).split())[:110]}"


def sweep_one(name, size, max_params):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") \
        else {}
    size = max(size, 75) if name == "inception_v3" else size
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    except Exception as error:  # noqa: BLE001
        return dict(status="not built", note=_short(error))
    params = sum(p.numel() for p in model.parameters())
    if params > max_params:
        return dict(status="skipped", params=params, note="above --max-params")
    fixed = getattr(model, "image_size", None)
    x = torch.randn(1, 3, fixed or size, fixed or size)
    try:
        with torch.no_grad():
            model(x)
    except Exception as error:  # noqa: BLE001
        return dict(status="no forward at this size", params=params, note=_short(error))
    try:
        support = pm.check_support(model, x)
    except Exception as error:  # noqa: BLE001
        return dict(status="OURS FAILS", params=params, note="check_support: " + _short(error))
    try:
        magnitude, _ = _prune(copy.deepcopy(model), x, tp.importance.MagnitudeImportance(), False)
    except Exception as error:  # noqa: BLE001
        magnitude = None
        tp_error = _short(error)
    if magnitude is None:
        return dict(status="torch-pruning fails", params=params, note=tp_error)
    try:
        left, bound = _prune(model, x, PathMetricImportance(x), True)
    except pm.UnsupportedModelError as error:
        first = support.unsupported[0][0] if support.unsupported else None
        if not support.ok and first and first in str(error).split("\n")[1]:
            return dict(status="refused", params=params, magnitude=magnitude,
                        note=f"{first} in '{support.unsupported[0][1]}'")
        return dict(status="OURS FAILS", params=params, note=_short(error))
    except Exception as error:  # noqa: BLE001
        return dict(status="OURS FAILS", params=params, note=_short(error))
    if not support.ok:
        return dict(status="OURS FAILS", params=params, note="pruned a model check_support refuses")
    return dict(status="pruned", params=params, magnitude=magnitude, left=left, bound=bound)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tp_zoo_sweep.md"))
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--models", nargs="+", metavar="NAME", help="sweep only these models")
    chosen.add_argument("--from", dest="start", metavar="NAME",
                        help="sweep this model and the ones after it in list order")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other rows of the existing --out table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = torchvision.models.list_models(module=torchvision.models)
    unknown = [name for name in (args.models or []) + [args.start or names[0]] if name not in names]
    if unknown:
        parser.error(f"not a torchvision classification model: {', '.join(unknown)}")
    swept = args.models or names[names.index(args.start or names[0]):]
    if not args.merge:
        Path(args.out).write_text("")
    statuses = []
    for name in [name for name in names if name in swept]:
        start = time.perf_counter()
        row = sweep_one(name, args.size, args.max_params)
        row["seconds"] = time.perf_counter() - start
        statuses.append(row["status"])
        print(name, row, file=sys.stderr, flush=True)
        write(name, _cells(row), args, names)
    return 1 if "OURS FAILS" in statuses else 0


def _cells(row):
    return [str(row.get("params", "")), row["status"], str(row.get("left", "")),
            str(row.get("magnitude", "") or ""),
            "%.3e" % row["bound"] if "bound" in row else "", row.get("note", ""),
            f"{row['seconds']:.1f}"]


def _table(text):
    """The rows of a written table (model -> cells) and the text below it."""
    rows, tail = {}, []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| model |"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
        elif rows or tail:
            tail.append(line)
    return rows, "\n".join(tail).strip("\n")


def write(name, cells, args, names):
    """Add (or replace) one model's row in the table in ``args.out``; totals over all its rows."""
    with Path(args.out).open("r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        rows, tail = _table(handle.read())
        rows[name] = cells
        counts = {}
        for row in rows.values():
            counts[row[1]] = counts.get(row[1], 0) + 1
        lines = ["# torch-pruning 1.6.1: MetaPruner + PathMetricImportance over torchvision's "
                 "classifiers", "", f"`python benchmarks/tp_zoo_sweep.py --size {args.size}`: "
                 f"random weights, input 1x3x{args.size}x{args.size} (inception_v3: 75; ViTs: "
                 "their fixed size), one local step at ratio 0.3 with the last linear layer "
                 "ignored, through `certified_step`. `torch-pruning fails` = torch-pruning's own "
                 "MagnitudeImportance fails on that model.", "",
                 f"Models swept: {len(rows)} of {len(names)}. Totals: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "",
                 "| model | params | status | params left (ours) | params left (magnitude) | "
                 "certified bound | note | seconds |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {model} | {' | '.join(rows[model])} |" for model in names if model in rows]
        handle.seek(0)
        handle.truncate()
        handle.write("\n".join(lines) + "\n" + (f"\n{tail}\n" if tail else ""))


if __name__ == "__main__":
    sys.exit(main())
