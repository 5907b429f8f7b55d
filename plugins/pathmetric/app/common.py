"""What the ``pathmetric`` subcommands share: model loading, argument types, the model options,
progress bars, tables and number formats, and the result stream (``--json`` keeps stdout for
the result alone)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

import torch

from . import models


def progress(total, desc, quiet):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=True if quiet else None, file=sys.stderr,
                leave=False)


def bit_widths(text: str) -> tuple:
    """``"2,4,8"`` -> ``(2, 4, 8)``; each bit-width is checked by the engine's quantizer."""
    from pathmetric import quantizer

    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        bits = ()
    if not bits:
        raise argparse.ArgumentTypeError(f"must be integers like 2,4,8; got {text!r}")
    check = quantizer(torch.zeros(1))
    for b in bits:
        try:
            check(b)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return bits


def _number(text: str, accepted, expected: str) -> float:
    """``text`` as a float for which ``accepted(value)`` holds, else an argparse error saying it
    ``must be {expected}`` (a non-number is NaN, which no range accepts)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not accepted(value):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
    return value


def positive_number(text: str) -> float:
    return _number(text, lambda v: 0.0 < v < math.inf, "a positive number")


def fraction(text: str) -> float:
    return _number(text, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def load(args):
    torch.manual_seed(args.seed)   # random weights are reproducible
    model = models.load_model(args.model, args.checkpoint)
    models.check_one_input(model)
    x = models.example_inputs(args.model, args.input_shape)
    models.check_input_shape(model, tuple(x.shape))
    return model, x


#: where the result goes while ``--json`` sends everything else to stderr (None: sys.stdout)
_result_stream = None


def emit(args, result: dict, text: str):
    print(json.dumps(result, indent=2, default=str) if args.json else text,
          file=_result_stream or sys.stdout, flush=True)


def head_fields(support) -> dict:
    """The softmax head set aside (None without one) and the notes saying so, for every JSON."""
    return {"head": support.head, "notes": list(support.notes)}


def head_certificate(model, x, bound: float, out: dict, text: list):
    """When a log_softmax head was set aside (head factor ``n + 1``), add the certificate on the
    log-probabilities, ``bound * (n + 1)``, to ``out`` and ``text``."""
    import pathmetric as pm

    factor = pm.head_factor(model, x)
    if factor != 1.0:
        out["head_factor"] = factor
        out["log_probabilities_certified_bound"] = bound * factor
        text.append(f"log-probabilities ({out['head']} head): ||log p(x) - log p'(x)||_1 <= "
                    f"max(||x||_inf, 1) * {bound * factor:.6e} (logits bound x {factor:g})")


@contextlib.contextmanager
def stdout_for_result_only():
    """With ``--json``: while a command runs, ``print`` goes to stderr and, when stdout is file
    descriptor 1, that descriptor points at stderr too (log handlers holding the old stream,
    C code), so that frameworks' prints and log lines (NNI's ModelSpeedup prints to stdout)
    cannot mix with the result, which is written to the original stdout."""
    global _result_stream
    result = sys.stdout
    result.flush()
    try:
        saved = os.dup(1) if result.fileno() == 1 else None
    except (AttributeError, OSError, ValueError):   # a captured or replaced sys.stdout
        saved = None
    if saved is not None:
        os.dup2(2, 1)
        result = os.fdopen(os.dup(saved), "w")
    _result_stream = result
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _result_stream = None
        if saved is not None:
            sys.stdout.flush()
            result.close()
            os.dup2(saved, 1)
            os.close(saved)


def table(header, rows) -> str:
    cells = [list(map(str, header))] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.3e}"
    return str(value)


def fmt_log(log_value: float) -> str:
    """``e^log_value`` written as mantissa e exponent, whatever its size."""
    if not math.isfinite(log_value):
        return "0" if log_value < 0 else "inf"
    exponent = math.floor(log_value / math.log(10))
    return f"{10 ** (log_value / math.log(10) - exponent):.3f}e{exponent:+d}"


def model_args(p, positional=True):
    """The model options every subcommand shares (``positional``: the model spec comes first)."""
    if positional:
        p.add_argument("model", help="torchvision:NAME, timm:NAME, smp:ARCH:ENCODER, "
                                     "file.py:FACTORY or digits")
    p.add_argument("--checkpoint", help="weights to load into the model: a state_dict saved with "
                                        "torch.save (plain, or under 'state_dict' / 'model'; "
                                        "smaller conv/linear/BatchNorm layers, as `nni prune "
                                        "--out` writes, resize the model), or a whole module of "
                                        "the same class (unpickled: trusted files only)")
    p.add_argument("--input-shape", help="example input shape, batch first, e.g. 1,3,64,64 "
                                         "(default 1,3,224,224; 1,1,8,8 for digits)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights of models built without a checkpoint "
                        "(default 0: results are reproducible)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (and nothing else there)")
    threads_arg(p)


def threads_arg(p) -> None:
    """The ``--threads`` option (see :func:`default_threads`)."""
    p.add_argument("--threads", type=positive,
                   help="torch threads (default: the CPUs this process may use, less the load "
                        "average, at least 1: a busy machine gets fewer threads)")


def default_threads() -> int:
    """CPUs this process may run on, less the 1-minute load average (rounded), at least 1.

    torch's own default (one thread per core) oversubscribes a loaded machine: on 2 busy cores
    a report took 27.9 s with it and 18.2 s with one thread."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, (cpus or 1) - round(load))


def refusal(unsupported) -> str:
    """One line saying why a model is outside the path-lifting class, from the
    ``(op, module path, reason)`` triples of ``pm.check_support``: the kinds of layer that
    refuse it, most frequent first (``MultiheadAttention x12, LayerNorm x25, GELU x12``), as the
    engine names them in each reason's closing parenthesis, else the op."""
    counts: dict = {}
    for op, _, why in unsupported:
        kind = why[why.rindex("(") + 1:-1] if why.endswith(")") and "(" in why else op
        counts[kind] = counts.get(kind, 0) + 1
    kinds = sorted(counts.items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"{kind} x{count}" for kind, count in kinds[:6])
    return (f"{len(unsupported)} operation(s) outside the path-lifting model ({listed}"
            f"{', ...' if len(kinds) > 6 else ''}); `pathmetric report MODEL --json` lists each "
            "with its module and reason")
