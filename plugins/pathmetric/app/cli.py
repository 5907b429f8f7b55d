"""The ``pathmetric`` command: report, prune, quant-plan, demo, and adapters' subcommands (nni).

Each subcommand family is a module with a ``register(subparsers)`` function
(:mod:`.report_command`, :mod:`.prune_command`, :mod:`.quant_command`, :mod:`.demo_command`);
adapters add theirs through the ``pathmetric.cli`` entry point group (``nni prune`` comes from
:mod:`pathmetric.adapters.nni_cli`), so this module names no compression framework. What the
subcommands share is in :mod:`.common`.

Every subcommand prints a readable table, or with ``--json`` one JSON object on stdout (numbers
as the library returns them; ``Infinity`` only where a value exceeds float64, logs are finite).
Progress bars go to stderr and only on a terminal. See docs/cli.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from importlib.metadata import entry_points

import torch

from . import certify, demo_command, prune_command, quant_command, report_command

# the helpers an adapter's subcommand module (adapters/nni_cli.py) takes from the command
from .common import (
    default_threads,
    emit,
    load,
    model_args,
    progress,
    refusal,
    stdout_for_result_only,
    table,
)

__all__ = ["main", "parser", "emit", "load", "model_args", "progress", "table"]

#: the subcommand modules of pathmetric itself, in the order of ``pathmetric -h``
SUBCOMMANDS = (report_command, prune_command, quant_command, certify, demo_command)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="pathmetric", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    for entry in entry_points(group="pathmetric.cli"):
        entry.load()(sub)
    return top


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv=None) -> int:
    """Run a subcommand with ``--threads`` torch threads (default :func:`.common.default_threads`;
    the caller's count is restored afterwards). A user error (bad model spec, checkpoint, config,
    shape, unsupported model, an exception raised by the user's own model factory) exits 2 with
    one line on stderr; any other failure exits 1 with one line (set PATHMETRIC_TRACEBACK=1 for
    the traceback)."""
    args = parser().parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or default_threads())
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    import pathmetric as pm
    try:
        with stdout_for_result_only() if args.json else contextlib.nullcontext():
            return args.run(args)
    except pm.UnsupportedModelError as exc:
        reason = refusal(exc.unsupported) if exc.unsupported else _one_line(exc)
        print(f"pathmetric {args.command}: error: {getattr(args, 'model', 'the model')}: "
              f"{reason}", file=sys.stderr)
        return 2
    except (pm.ModelCaptureError, ValueError, TypeError, OSError) as exc:
        print(f"pathmetric {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the command line prints no traceback
        if os.environ.get("PATHMETRIC_TRACEBACK"):
            raise
        print(f"pathmetric {args.command}: internal error: {type(exc).__name__}: "
              f"{_one_line(exc)} (PATHMETRIC_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
