"""Engine speed of this tree against another checkout, alternated in one session.

Usage: python benchmarks/engine_speed_ab.py --baseline ../old-checkout [--rounds 4] [--threads 1]
       [--model resnet50] [--quick] [--clock wall|cpu] [--out benchmarks/results/engine_speed_ab.md]

On a shared machine the ratios of ``engine_speed.py`` move by 10-20 % from one session to the
next (the float32 forward they divide by moves too). This script separates that noise from a code
change: it runs ``engine_speed.py`` alternately with the baseline's engine (``--baseline``: the
root of another checkout, whose ``plugins/`` is put first on ``PYTHONPATH``) and with this tree's,
``--rounds`` times each, keeps each row's best time per engine and prints, per row, both times,
their quotient and both ratios (each against its own engine's best denominator), beside the
ratio recorded in ``benchmarks/results/engine_speed.md``; and, per engine, the median over its
runs of each run's own ratio (numerator and denominator timed in the same process, minutes
apart at most), which a load that comes and goes moves less than a best time. ``--quick`` passes ``--quick`` on
(the forward and path_norm rows only, the cold one best of 5), so that more rounds fit.
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROW = re.compile(r"\| (.+?) \| ([\d.]+) \| ([\d.]+)x \|")


def rows(text: str) -> dict:
    """``{row name: seconds}`` of the first table of an ``engine_speed.py`` report."""
    out = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match.group(1) not in out:
            out[match.group(1)] = float(match.group(2))
    return out


def denominator(row: str) -> str:
    """The row a ratio of ``engine_speed.py`` divides by."""
    if "vs path_norm float64 warm" in row:
        return "path_norm, float64, warm"
    if "vs forward+backward" in row or "vs fwd+bwd" in row:
        return "float32 forward+backward of the model"
    return "float32 forward of the model"


def run(tree, args, out: pathlib.Path) -> dict:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(tree) / "plugins"),
                                             env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_speed.py"), "--threads",
                    args.threads, "--model", args.model, "--clock", args.clock, "--out", str(out)]
                   + (["--quick"] if args.quick else []),
                   check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    return rows(out.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="root of the other checkout")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", default="1")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--quick", action="store_true", help="engine_speed.py --quick")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="engine_speed.py --clock")
    parser.add_argument("--out", default="benchmarks/results/engine_speed_ab.md")
    args = parser.parse_args()
    recorded = rows((ROOT / "benchmarks/results/engine_speed.md").read_text())
    runs = {"baseline": [], "this tree": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name, tree in (("baseline", args.baseline), ("this tree", None)):
                print(f"round {k + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                runs[name].append(run(tree, args, pathlib.Path(tmp) / f"{name}{k}.md"))
    best = {name: {row: min(r[row] for r in found) for row in found[0]}
            for name, found in runs.items()}
    median = {name: {row: statistics.median(r[row] / r[denominator(row)] for r in found)
                     for row in found[0]} for name, found in runs.items()}
    old, new = best["baseline"], best["this tree"]
    lines = ["| what | baseline s | this tree s | this/baseline | baseline ratio | this ratio | "
             "median run ratio, baseline / this | this/baseline (medians) | recorded ratio | "
             "this vs recorded |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in old:
        base, ours = old[row] / old[denominator(row)], new[row] / new[denominator(row)]
        mid = median["baseline"][row], median["this tree"][row]
        mark = recorded[row] / recorded[denominator(row)] if row in recorded else float("nan")
        lines.append(f"| {row} | {old[row]:.4f} | {new[row]:.4f} | {new[row] / old[row]:.2f} | "
                     f"{base:.2f}x | {ours:.2f}x | {mid[0]:.2f}x / {mid[1]:.2f}x | "
                     f"{mid[1] / mid[0]:.2f} | {mark:.2f}x | {100 * (ours / mark - 1):+.1f} % |")
    report = (f"# Engine speed A/B: {args.model}, {args.threads} thread(s), best of "
              f"{args.rounds} alternated runs of engine_speed.py{' --quick' * args.quick}"
              f"{' --clock cpu' * (args.clock == 'cpu')} per "
              f"engine\n\nbaseline: "
              f"`{args.baseline}`\n\n" + "\n".join(lines) + "\n")
    print(report)
    pathlib.Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
