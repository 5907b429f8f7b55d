"""Pruning curves on the digits CNN: test accuracy against sparsity for path-magnitude
(``pm.prune``, one-shot and iterative), magnitude, SynFlow and random, unstructured and channel-wise, one-shot and after a
short fine-tune, each on the trained model and on a random function-preserving rescaling of it
(``pm.random_rescale``: same function, different weights).

Claim checked: magnitude moves (collapses) under rescaling, path-magnitude does not.

    python benchmarks/pruning_curves.py            # full: 9 sparsities, SynFlow 100 rounds
    python benchmarks/pruning_curves.py --tiny     # seconds; used by tests/test_evidence.py

Writes ``pruning_curves.md`` and ``pruning_curves.png`` into ``benchmarks/results/`` (or ``--out``).
"""
from __future__ import annotations

import time
from pathlib import Path

import evidence_common as ec

import pathmetric as pm
from pathmetric.app import digits

FULL = dict(sparsities=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), rounds=100, epochs=3, more_seeds=(1, 2, 3))
TINY = dict(sparsities=(0.5, 0.8), rounds=4, epochs=1, more_seeds=(1,))


CRITERIA = ("path-magnitude", "path-magnitude iterative", "magnitude", "SynFlow", "random")


def masks_for(criterion, model, example, sparsity, structured, rounds):
    """Keep-masks of ``criterion`` (one of ``CRITERIA``) at ``sparsity``; the iterative ones
    (SynFlow, path-magnitude iterative) use ``rounds`` rounds of the exponential schedule."""
    if criterion == "SynFlow":
        return ec.synflow_masks(model, example, sparsity, structured, rounds=rounds)
    if criterion == "path-magnitude iterative":
        return ec.path_masks(model, example, sparsity, structured, rounds=rounds)
    return ec.CRITERIA[criterion](model, example, sparsity, structured=structured)


def agreement(a: dict, b: dict) -> float:
    """Share of mask entries on which two mask dicts agree."""
    same = sum(int((a[n] == b[n]).sum()) for n in a)
    return same / sum(a[n].numel() for n in a)


def run(tiny=False, out: Path = ec.RESULTS, seed=0):
    """Run the experiment; return the result rows and write the table and plot into ``out``."""
    cfg = TINY if tiny else FULL
    model, data, example = ec.setup(seed)
    x_test, y_test = data[2], data[3]
    rescaled = pm.random_rescale(model, example, seed=seed)
    base = digits.accuracy(model, x_test, y_test)
    assert abs(digits.accuracy(rescaled, x_test, y_test) - base) < 1e-12, "rescaling changed the function"
    rows = []
    t0 = time.perf_counter()
    for structured in (False, True):
        for criterion in CRITERIA:
            for sparsity in cfg["sparsities"]:
                masks = {}
                for tag, net in (("trained", model), ("rescaled", rescaled)):
                    masks[tag] = masks_for(criterion, net, example, sparsity, structured, cfg["rounds"])
                    pruned = ec.masked(net, masks[tag])
                    one_shot = digits.accuracy(pruned, x_test, y_test)
                    tuned = digits.finetune(pruned, data, masks[tag], epochs=cfg["epochs"], seed=seed)
                    rows.append(dict(structure="channel" if structured else "unstructured",
                                     criterion=criterion, weights=tag, sparsity=sparsity,
                                     one_shot=one_shot, finetuned=digits.accuracy(tuned, x_test, y_test)))
                rows[-1]["agreement"] = rows[-2]["agreement"] = agreement(masks["trained"], masks["rescaled"])
    checks = seed_check(model, data, example, cfg)
    seconds = time.perf_counter() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, checks, base, cfg, seconds, out / "pruning_curves.md")
    plot(rows, base, out / "pruning_curves.png")
    return rows


def seed_check(model, data, example, cfg, sparsity=0.8):
    """Unstructured path-magnitude and magnitude at ``sparsity`` after further rescalings
    (``pm.random_rescale`` seeds ``cfg['more_seeds']``): ``[(seed, criterion, one-shot, fine-tuned)]``."""
    out = []
    for seed in cfg["more_seeds"]:
        net = pm.random_rescale(model, example, seed=seed)
        for criterion in ("path-magnitude", "magnitude"):
            masks = ec.CRITERIA[criterion](net, example, sparsity)
            pruned = ec.masked(net, masks)
            one_shot = digits.accuracy(pruned, data[2], data[3])
            tuned = digits.finetune(pruned, data, masks, epochs=cfg["epochs"])
            out.append((seed, criterion, one_shot, digits.accuracy(tuned, data[2], data[3])))
    return out


def _get(rows, **key):
    return [r for r in rows if all(r[k] == v for k, v in key.items())]


def write_table(rows, checks, base, cfg, seconds, path):
    criteria = list(CRITERIA)
    lines = ["# Pruning curves (digits CNN, scikit-learn digits test split)\n",
             f"Trained model test accuracy: {base:.4f}. Fine-tune: {cfg['epochs']} epochs Adam lr 1e-3, "
             f"masks kept. SynFlow: {cfg['rounds']} rounds, exponential schedule. Unstructured sparsity = "
             "share of conv/linear weights removed (all layers); channel sparsity = share of output "
             "channels removed (hidden layers; bias and BatchNorm channel go with it). "
             "'rescaled' = the same network after `pm.random_rescale(seed=0)` (identical function). "
             f"Run time {seconds:.0f} s.\n"]
    for structure in ("unstructured", "channel"):
        for phase, label in (("finetuned", "after fine-tune"), ("one_shot", "one-shot, no fine-tune")):
            header = ["sparsity"] + [f"{c} {w}" for c in criteria for w in ("trained", "rescaled")]
            body = []
            for s in cfg["sparsities"]:
                body.append([f"{s:.0%}"] + [_get(rows, structure=structure, criterion=c, weights=w, sparsity=s)[0][phase]
                                            for c in criteria for w in ("trained", "rescaled")])
            lines.append(f"\n## {structure}, test accuracy {label}\n")
            lines.append(ec.markdown_table(header, body))
        header = ["sparsity"] + criteria
        body = [[f"{s:.0%}"] + [_get(rows, structure=structure, criterion=c, weights="trained", sparsity=s)[0]["agreement"]
                                for c in criteria] for s in cfg["sparsities"]]
        lines.append(f"\n## {structure}, share of mask entries identical with and without rescaling\n")
        lines.append(ec.markdown_table(header, body))
    lines.append("\n## Other rescalings: unstructured, 80 % sparsity, test accuracy\n")
    lines.append(ec.markdown_table(["rescaling seed", "criterion", "one-shot", "fine-tuned"], checks))
    Path(path).write_text("\n".join(lines))


def plot(rows, base, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(CRITERIA, ("C0", "C9", "C3", "C2", "C7")))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, sharey=True)
    for j, structure in enumerate(("unstructured", "channel")):
        for i, (phase, label) in enumerate((("one_shot", "one-shot"), ("finetuned", "fine-tuned"))):
            ax = axes[i, j]
            for c in CRITERIA:
                for w, style in (("trained", "-"), ("rescaled", "--")):
                    pts = _get(rows, structure=structure, criterion=c, weights=w)
                    ax.plot([100 * r["sparsity"] for r in pts], [r[phase] for r in pts], style, marker="o",
                            ms=3, color=colors[c], label=f"{c} ({w})")
            ax.axhline(base, color="k", lw=0.5)
            ax.set_title(f"{structure}, {label}")
            ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("sparsity (%)")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Digits CNN pruning: solid = trained weights, dashed = after random rescaling")
    ec.save_figure(fig, path, dpi=110)


def main():
    args = ec.command_line(__doc__, "a few seconds, for tests")
    rows = run(args.tiny, args.out)
    for structure in ("unstructured", "channel"):
        for c in CRITERIA:
            a = _get(rows, structure=structure, criterion=c, sparsity=0.8)
            print(f"{structure:12s} {c:24s} 80%: fine-tuned trained {a[0]['finetuned']:.3f} "
                  f"rescaled {a[1]['finetuned']:.3f} | one-shot {a[0]['one_shot']:.3f} / {a[1]['one_shot']:.3f}")


if __name__ == "__main__":
    main()
