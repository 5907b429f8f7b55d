"""A long run of the capture-soundness property (tests/core/test_soundness_property.py).

Usage: python benchmarks/soundness_property.py [--models 2000] [--seed 0]
       [--out benchmarks/results/capture_soundness.md]

Draws ``--models`` scenarios (1-5 steps of the test's vocabulary, an optional module swap with
state changes between two calls, a seed) from a seeded generator and runs the test's
``check_scenario`` on each: the model is refused by every call the same way, or its path-norm
equals a fresh capture's, a pair with other constants is refused and ``output_bound`` holds on
random and gradient-ascent inputs; every call leaves the model bit for bit as it was. Prints
(and appends to ``--out``) the counts: refused (by every call for the same first reason, or
for another: :func:`outcome_of`), computed, silent mismatches, mutations.
"""
import argparse
import collections
import pathlib
import random
import sys
import time
import traceback

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "core")]

import test_soundness_property as prop  # noqa: E402


def scenario(rng: random.Random):
    steps = [rng.choice(sorted(prop.VOCABULARY)) for _ in range(rng.randint(1, 5))]
    swap = None if rng.random() < 0.5 else (rng.randrange(len(steps)), rng.choice(sorted(prop.SWAPS)))
    return steps, swap, rng.randrange(2**31)


def outcome_of(failure: AssertionError) -> str:
    """What a failed check means, read off the assertion that failed: the model changed, a call
    refused the model for another first reason than ``check_support`` (every call still
    refuses it), or a number the engine returned is wrong (a silent mismatch)."""
    line = traceback.extract_tb(failure.__traceback__)[-1].line or ""
    if "same_state" in line or "same_state" in str(failure):
        return "mutation"
    if "info.value.unsupported[0] == report.unsupported[0]" in line:
        return "refused, another first reason"
    return "silent mismatch"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    counts = collections.Counter()
    failures = []
    start = time.perf_counter()
    for k in range(args.models):
        case = scenario(rng)
        try:
            counts[prop.check_scenario(*case)] += 1
        except AssertionError as exc:
            kind = outcome_of(exc)
            counts[kind] += 1
            failures.append((kind, case, str(exc)[:300]))
        if (k + 1) % 100 == 0:
            print(f"{k + 1} models: {dict(counts)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    steps = collections.Counter()
    rng = random.Random(args.seed)
    for _ in range(args.models):
        steps.update(set(scenario(rng)[0]))
    lines = [f"## Property run: {args.models} generated models (seed {args.seed}, "
             f"torch {torch.__version__}, 1 thread, {seconds:.0f} s)", "",
             "| outcome | models |", "|---|---|"]
    lines += [f"| {kind} | {counts[kind]} |"
              for kind in ("refused", "refused, another first reason", "computed",
                           "computed, pair refused", "silent mismatch", "mutation")]
    lines += ["", "Models containing each step: " + ", ".join(
        f"{name} {steps[name]}" for name in sorted(prop.VOCABULARY)), ""]
    lines += [f"- {kind}: {case}: {why}" for kind, case, why in failures[:20]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
