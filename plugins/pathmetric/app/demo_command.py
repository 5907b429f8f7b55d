"""``pathmetric demo``: rescaling-invariant pruning on scikit-learn digits."""
from __future__ import annotations

from .common import emit, fraction, positive, threads_arg


def cmd_demo(args) -> int:
    from .digits import run_demo

    result = run_demo(sparsities=args.sparsities, epochs=args.epochs, seed=args.seed,
                      plot=args.plot, quiet=args.json)
    if args.json:
        emit(args, result, "")
    return 0


def register(sub) -> None:
    """Add ``demo`` to the subcommands ``sub`` of the ``pathmetric`` parser."""
    p = sub.add_parser("demo", help="rescaling-invariant pruning on scikit-learn digits")
    p.add_argument("--sparsities", type=lambda s: tuple(fraction(v) for v in s.split(",")),
                   default=(0.5, 0.7, 0.8, 0.9),
                   help="sparsities to compare, comma-separated, each in [0, 1)")
    p.add_argument("--epochs", type=positive, default=2, help="fine-tuning epochs after pruning")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rescaling")
    p.add_argument("--plot", default="pathmetric_demo.png", help="where to write the figure")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (and nothing else there)")
    threads_arg(p)
    p.set_defaults(run=cmd_demo)
