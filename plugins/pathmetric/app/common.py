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
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        bits = ()
    if not bits or min(bits) < 1:
        raise argparse.ArgumentTypeError(f"bits must be positive integers like 2,4,8; got {text!r}")
    return bits


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


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
