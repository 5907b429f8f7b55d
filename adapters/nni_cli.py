"""``pathmetric nni prune``: the NNI adapter's subcommand of the ``pathmetric`` command.

Registered through the ``pathmetric.cli`` entry point group (pyproject.toml), so the command line
of the engine names no framework. Importing this module is cheap: NNI itself is imported when the
subcommand runs (:mod:`pathmetric.adapters.nni`, which needs the ``nni`` extra).
"""
from __future__ import annotations

import contextlib
import logging
import sys

from pathmetric.app.cli import emit, load, model_args, progress, table


@contextlib.contextmanager
def _framework_logs(verbose: bool):
    """NNI's output kept off stdout unless ``verbose``: while the block runs, NNI's log handler
    (on its ``nni`` logger, writing to stdout) writes warnings and errors only, to stderr, and
    NNI's prints (ModelSpeedup's "0 Filter") go to stderr. ModelSpeedup sets its own logger to
    INFO, so the handler, not a logger level, is what filters."""
    if verbose:
        yield
        return
    handlers = [h for h in logging.getLogger("nni").handlers
                if isinstance(h, logging.StreamHandler)]
    saved = [(h.level, h.stream) for h in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, (level, stream) in zip(handlers, saved):
            handler.setLevel(level)
            handler.setStream(stream)


def cmd_nni(args) -> int:
    """Prune ``--model`` with the NNI config ``--config`` and print the result (and its
    certificate unless ``--no-certify``). A failure of NNI's ModelSpeedup exits 2 with one line
    saying what failed and what to do."""
    from pathmetric.adapters.nni import SpeedupError, prune_from_config  # the nni extra

    model, x = load(args)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    with progress(1, "nni prune", args.json) as bar, _framework_logs(args.verbose):
        try:
            result = prune_from_config(model, args.config, x, out=args.out, certify=args.certify)
        except SpeedupError as error:
            print(f"pathmetric nni: error: {error}", file=sys.stderr)
            return 2
        bar.update()
    sparsity = dict(sorted(result.sparsity.items(), key=lambda kv: order.get(kv[0], -1)))
    out = {"model": args.model, "config": args.config, "sparsity": sparsity,
           "certified_bound": result.certified_bound, "params_before": result.params_before,
           "params_after": result.params_after, "speedup": result.speedup, "out": args.out,
           "head": result.head, "notes": result.notes}
    text = [table(["module", "weight sparsity"], list(sparsity.items())), "",
            f"parameters {result.params_before} -> {result.params_after}"
            f"{' (NNI ModelSpeedup)' if result.speedup else ' (masked in place)'}",
            f"certified: ||R(x) - R_pruned(x)||_1 <= max(||x||_inf, 1) * "
            f"{result.certified_bound:.6e}" if args.certify else "not certified (--no-certify)"]
    if args.out:
        text.append(f"pruned state_dict written to {args.out} "
                    f"(reload: --checkpoint {args.out} with model {args.model})")
    emit(args, out, "\n".join(text))
    return 0


def register(sub) -> None:
    """Add ``nni prune`` to the subcommands ``sub`` of the ``pathmetric`` parser."""
    p = sub.add_parser("nni", help="NNI pruning from a config file (pruner: path_metric)")
    nni_sub = p.add_subparsers(dest="nni_command", required=True)
    q = nni_sub.add_parser("prune", help="prune --config prune.yaml --model SPEC --out pruned.pt")
    q.add_argument("--config", required=True, help="YAML or JSON pruning config (docs/nni.md)")
    q.add_argument("--model", required=True, help="torchvision:NAME, timm:NAME, "
                                                  "smp:ARCH:ENCODER, file.py:FACTORY or digits")
    q.add_argument("--out", help="write the pruned state_dict here (reload it with --checkpoint)")
    q.add_argument("--no-certify", dest="certify", action="store_false",
                   help="skip the certificate (NNI's own pruners can then prune models outside "
                        "the path-lifting class)")
    q.add_argument("--verbose", action="store_true",
                   help="show NNI's own output (INFO log lines, prints) on stdout; without it only "
                        "NNI's warnings, on stderr")
    model_args(q, positional=False)
    q.set_defaults(run=cmd_nni)
