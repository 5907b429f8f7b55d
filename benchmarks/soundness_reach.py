"""Soundness of ``output_bound`` on ReLU6 networks: random and adversarial trials.

Usage: python benchmarks/soundness_reach.py [--inputs 400] [--out benchmarks/results/soundness_reach.md]

Models: torchvision ``mobilenet_v2`` (width 0.35, 10 classes, float64, randomised BatchNorm
statistics) at 1x3x16x16, and random tiny networks with the ops of issue 15 (ReLU6, hardtanh,
clamp, hardsigmoid, abs, maximum/minimum, constants; tests/bruteforce.py's DSL). Changes:
magnitude pruning (30 %, 60 %), round-to-nearest int2..int8 per channel, multiplicative noise
(5 %, 30 %), BatchNorm sign flips (a third of the scales negated). Inputs: Gaussian scaled by
1, 10 and 100 (large inputs push ReLU6 and the clamps into their clipped region). Every trial
checks ``||R(x) - R'(x)||_1 <= output_bound``; then a projected sign-gradient ascent
(``pm.adversarial_gap``) per change searches the sup-norm ball of radius 100 for a violation.
"""
import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from torch import nn

import pathmetric as pm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def changes(model, seed):
    """``{label: changed copy}``."""
    g = torch.Generator().manual_seed(seed)
    out = {}

    def edit(label, fn):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in other.named_parameters():
                fn(name, p)
        out[label] = other

    weights = lambda n, p: p.dim() > 1  # noqa: E731
    for ratio in (0.3, 0.6):
        def prune(n, p, ratio=ratio):
            if weights(n, p):
                p.mul_((p.abs() > p.abs().flatten().kthvalue(max(1, int(ratio * p.numel())))[0]).double())
        edit(f"magnitude pruning {int(ratio * 100)} %", prune)
    for bits in (2, 3, 4, 8):
        edit(f"RTN int{bits}", lambda n, p, bits=bits: p.copy_(pm.quantize_weights(p, bits))
             if weights(n, p) else None)
    for level in (0.05, 0.3):
        edit(f"noise {int(level * 100)} %", lambda n, p, level=level: p.mul_(
            1 + level * torch.randn(p.shape, generator=g, dtype=p.dtype)))
    bn_flip = copy.deepcopy(model)
    with torch.no_grad():
        for m in bn_flip.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                flip = torch.rand(m.weight.shape, generator=g) < 1 / 3
                m.weight[flip] *= -1
    out["BatchNorm sign flips"] = bn_flip
    return out


def inputs(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 10.0, 100.0]).repeat_interleave(-(-n // 3))[:n]
    return torch.randn((n,) + shape, generator=g, dtype=torch.float64) * \
        scale.reshape((-1,) + (1,) * len(shape))


def trial(model, others, x, adversarial):
    rows = []
    with torch.no_grad():
        out = model(x)
    for label, other in others.items():
        with torch.no_grad():
            gap = (out - other(x)).abs().flatten(1).sum(1)
        bound = pm.output_bound(model, other, x)
        row = {"change": label, "trials": len(x), "violations": int((gap > bound).sum()),
               "worst ratio": float(torch.where(bound > 0, gap / bound, gap * math.inf).max())}
        if adversarial:
            found, _ = pm.adversarial_gap(model, other, x[:16], radius=100.0, starts=8, steps=30)
            bound_100 = 100.0 * pm.path_metric(model, other, x[:1])
            row["adversarial ratio"] = found / bound_100 if bound_100 else found * math.inf
            row["violations"] += int(found > bound_100)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument("--networks", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/soundness_reach.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import bruteforce as bf
    from test_reach import mobilenet_v2
    model = mobilenet_v2(width_mult=0.35).double()
    mobile_rows = trial(model, changes(model, 0), inputs((3, 16, 16), args.inputs, 0), True)
    tiny_rows = []
    kinds = [("relu6",), ("hardtanh", -0.5, 1.0), ("clamp", -1.5, 0.5), ("clamp", 0.5, None),
             ("hardsigmoid",), ("abs",), ("maximum",), ("minimum",), ("const", -1.5),
             ("pad", 0.5)]
    g = torch.Generator().manual_seed(1)
    for k in range(args.networks):
        picks = torch.randint(len(kinds), (3,), generator=g).tolist()
        specs = [("conv", 2, 3, 1, 1, 1, 1, True), ("bn",), kinds[picks[0]],
                 ("conv", 2, 3, 1, 1, 1, 1, True), kinds[picks[1]], kinds[picks[2]]]
        net = bf.build(specs, 2, 6, 3, torch.Generator().manual_seed(k))
        tiny_rows += trial(net, changes(net, k), inputs((2, 6), args.inputs, k), k < 5)
    lines = ["# Soundness on ReLU6 networks (issue 15)", "", __doc__.split("\n\n", 1)[1].strip(), "",
             f"Command: `python benchmarks/soundness_reach.py --inputs {args.inputs} --networks "
             f"{args.networks}`", "", "## mobilenet_v2 (width 0.35, 16x16)", "",
             "| change | trials | violations | worst gap / bound | adversarial gap / bound |",
             "|---|---|---|---|---|"]
    for r in mobile_rows:
        lines.append(f"| {r['change']} | {r['trials']} | {r['violations']} | "
                     f"{r['worst ratio']:.3g} | {r['adversarial ratio']:.3g} |")
    total = sum(r["trials"] for r in mobile_rows + tiny_rows)
    bad = sum(r["violations"] for r in mobile_rows + tiny_rows)
    worst = max(r["worst ratio"] for r in tiny_rows)
    adv = max(r.get("adversarial ratio", 0.0) for r in tiny_rows)
    lines += ["", f"## {args.networks} tiny networks with the new ops", "",
              f"{sum(r['trials'] for r in tiny_rows)} trials, "
              f"{sum(r['violations'] for r in tiny_rows)} violations, worst gap / bound "
              f"{worst:.3g}, worst adversarial gap / bound {adv:.3g} (first 5 networks).", "",
              f"**Total: {total} random trials, {bad} violations.**", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
