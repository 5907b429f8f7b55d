"""Convolution cost of the (A, D) pair pass against the path-norm pass, per resnet50 layer shape.

Usage: python benchmarks/pair_convolutions.py [--threads 1] [--out benchmarks/results/pair_convolutions.md]

The pair pass of ``pm.path_metric`` needs ``U A``, ``(U - L) A`` and ``L D`` at every
convolution, against ``U A`` for ``pm.path_norm``. Three ways to group them are timed (float64,
batch 1, best of 15 after 3 warm-up calls) against the single convolution, on the distinct conv shapes of resnet50 at
224: the engine's (``U`` and ``U - L`` stacked along output channels, then ``L D``); input
concatenation (``U A``, then ``[U - L | L]`` on ``cat(A, D)``); and a batched ``L`` (``(U - L) A``,
then ``L`` on the batch ``(A, D)``, ``A' = (U - L) A + L A``). The ratio bounds what
``path_metric / path_norm`` can reach when both passes spend their time in convolutions.
"""
import argparse

import torch
import torch.nn.functional as F
from engine_speed import best_time, publish

# (out channels, in channels, kernel, spatial size) of resnet50's convolutions at 224
SHAPES = [(64, 64, 1, 56), (64, 64, 3, 56), (256, 64, 1, 56), (128, 128, 3, 28),
          (512, 128, 1, 28), (256, 256, 3, 14), (1024, 256, 1, 14), (512, 512, 3, 7),
          (2048, 512, 1, 7)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/pair_convolutions.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.float64
    lines = [f"# Pair-pass convolutions vs the path-norm convolution, float64, {args.threads} "
             f"thread(s), torch {torch.__version__}", "",
             "| out, in, kernel, size | path-norm conv (ms) | stacked U, U-L; then L D | "
             "input concatenation | batched L |", "|---|---:|---:|---:|---:|"]
    totals = [0.0] * 4

    def timed(fn):
        return best_time(fn, repeat=15, warmup=3)

    for out_c, in_c, k, size in SHAPES:
        a, d = (torch.rand(1, in_c, size, size, dtype=dtype) for _ in range(2))
        upper, gap, lower = (torch.rand(out_c, in_c, k, k, dtype=dtype) for _ in range(3))
        stacked, side_by_side = torch.cat([upper, gap]), torch.cat([gap, lower], 1)
        pad = k // 2
        times = [
            timed(lambda: F.conv2d(a, upper, None, 1, pad)),
            timed(lambda: (F.conv2d(a, stacked, None, 1, pad), F.conv2d(d, lower, None, 1, pad))),
            timed(lambda: (F.conv2d(a, upper, None, 1, pad),
                           F.conv2d(torch.cat([a, d], 1), side_by_side, None, 1, pad))),
            timed(lambda: (F.conv2d(a, gap, None, 1, pad),
                           F.conv2d(torch.cat([a, d]), lower, None, 1, pad))),
        ]
        totals = [t + s for t, s in zip(totals, times)]
        lines.append(f"| {out_c}, {in_c}, {k}x{k}, {size} | {times[0] * 1e3:.2f} | "
                     + " | ".join(f"{t / times[0]:.2f}x" for t in times[1:]) + " |")
    lines.append("| **all shapes** | " + f"{totals[0] * 1e3:.2f} | "
                 + " | ".join(f"**{t / totals[0]:.2f}x**" for t in totals[1:]) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
