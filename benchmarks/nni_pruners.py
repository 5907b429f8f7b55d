"""PathMetricPruner against NNI's own pruners on one config: mask time, certificate, accuracy.

    python benchmarks/nni_pruners.py [--size 64] [--out benchmarks/results]

Config for every pruner: half of the output channels of every conv (``op_types: [Conv2d],
sparse_ratio: 0.5``), no speedup. For each model and pruner (``path_metric``, ``l1``, ``l2``,
``fpgm``) it records the wall time of ``compress()`` (mask generation; path_metric includes its
engine pass), the ratio to ``l1``, the certificate ``d = ||Phi(theta) - Phi(theta_masked)||_1``
as a share of the path-norm, and on the digits CNN the test accuracy of the masked model without
fine-tuning. Models: the digits CNN shipped with pathmetric (trained, scikit-learn digits) and
torchvision resnet18 and vgg11_bn (random weights) at ``size x size``. Writes
``nni_pruners.md`` under ``--out``.
"""
import argparse
import copy
import logging
import time
from pathlib import Path

import torch
import torchvision

import pathmetric as pm
from pathmetric.adapters.nni import pruner_from_config
from pathmetric.app import digits

logging.getLogger("nni").setLevel(logging.WARNING)
torch.set_num_threads(1)  # small tensors: more threads only contend (9x slower here)
PRUNERS = ("path_metric", "l1", "l2", "fpgm")
CONFIG_LIST = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]


def run(label, base, x, data=None):
    norm = pm.path_norm(base, x)
    rows = []
    for name in PRUNERS:
        model = copy.deepcopy(base)
        pruner = pruner_from_config(model, {"pruner": name, "config_list": CONFIG_LIST}, x)
        start = time.perf_counter()
        _, masks = pruner.compress()
        seconds = time.perf_counter() - start
        pruner.unwrap_model()
        named = dict(model.named_parameters())
        masked = {f"{m}.{t}": named[f"{m}.{t}"].detach() * v
                  for m, ts in masks.items() for t, v in ts.items() if v is not None}
        share = pm.path_metric(model, masked, x) / norm
        accuracy = None
        if data is not None:
            with torch.no_grad():
                for key, tensor in masked.items():
                    named[key].copy_(tensor)
            accuracy = digits.accuracy(model.eval(), *data)
        rows.append((name, seconds, share, accuracy))
        print(f"{label:22s} {name:12s} {seconds:8.2f} s  d/N {share:.4f}"
              + (f"  accuracy {accuracy:.4f}" if accuracy is not None else ""), flush=True)
    l1 = next(seconds for name, seconds, _, _ in rows if name == "l1")
    return [(label, name, seconds, seconds / l1, share, accuracy)
            for name, seconds, share, accuracy in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    _, _, x_test, y_test = digits.load_digits_tensors(0)
    x = torch.zeros(1, 3, args.size, args.size)
    table = run("digits CNN (trained)", digits.pretrained(), torch.zeros(1, 1, 8, 8),
                (x_test, y_test))
    for name in ("resnet18", "vgg11_bn"):
        model = getattr(torchvision.models, name)(weights=None).eval()
        table += run(f"{name} {args.size}x{args.size}", model, x)
    lines = ["# NNI pruners on one config (half of every conv's output channels)", "",
             f"`python benchmarks/nni_pruners.py --size {args.size}`, "
             f"torch threads: {torch.get_num_threads()}, shared 2-core CPU machine. "
             "`time` = wall time of `compress()` (mask generation; for path_metric it includes "
             "the engine's lifted forward+backward); `d/N` = certified path-metric of the masks "
             "as a share of the path-norm (lower removes less path mass); accuracy: digits test "
             "set, masked model, no fine-tuning.", "",
             "| model | pruner | time (s) | time / l1 | d / N | accuracy |",
             "|---|---|---|---|---|---|"]
    for label, name, seconds, ratio, share, accuracy in table:
        lines.append(f"| {label} | {name} | {seconds:.2f} | {ratio:.1f} | {share:.4f} | "
                     + (f"{accuracy:.4f} |" if accuracy is not None else "- |"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nni_pruners.md").write_text("\n".join(lines) + "\n")
    print(f"written {out / 'nni_pruners.md'}")


if __name__ == "__main__":
    main()
