"""``pathmetric prune``: path-magnitude pruning with its certificate."""
from __future__ import annotations

import math

import torch

from .common import (
    emit,
    fmt_log,
    fraction,
    head_certificate,
    head_fields,
    load,
    model_args,
    positive,
    progress,
    table,
)


def cmd_prune(args) -> int:
    import pathmetric as pm

    from .. import reports

    model, x = load(args)
    with progress(2, "prune", args.json) as bar:
        result = pm.prune(model, args.sparsity, x, structured=args.structured, scope=args.scope,
                          max_layer_sparsity=args.max_layer_sparsity, rounds=args.rounds)
        bar.update()
        compare = reports.classical_vs_path(model, result.model, x)
        bar.update()
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    layers = [{"parameter": name, "shape": list(mask.shape),
               "sparsity": 1.0 - float(mask.double().mean())}
              for name, mask in sorted(result.masks.items(), key=lambda kv: order.get(kv[0], -1))]
    out = {"model": args.model, "sparsity_target": args.sparsity, "structured": args.structured,
           "sparsity": result.sparsity, "certified_bound": result.certified_bound,
           "log_path_norm_before": pm.log_path_norm(model, x),
           "log_path_norm_after": pm.log_path_norm(result.model, x),
           "classical_log_bound": compare["classical_log_bound"],
           "log_ratio_classical_vs_path": compare["log_ratio"], "layers": layers, "out": args.out,
           **head_fields(pm.check_support(model, x))}
    if args.out:
        torch.save(result.model.state_dict(), args.out)
    if args.structured:
        channels = _channel_counts(model, x, result.masks)
        out["channels"] = channels
        pruned = sum(c["pruned"] for c in channels.values())
        total = sum(c["total"] for c in channels.values())
        rows = [[name, f"{c['total'] - c['pruned']}/{c['total']}", c["weight_sparsity"]]
                for name, c in channels.items()]
        text = [table(["layer", "channels kept", "weight sparsity"], rows), "",
                f"structured path-magnitude pruning ({args.scope}): {pruned} of {total} output "
                f"channels pruned (share {pruned / max(total, 1):.4f}, target {args.sparsity}); "
                f"weights removed: share {result.sparsity:.4f} of the prunable layers' weights"]
        untouched = [name for name, c in channels.items() if c["pruned"] == 0]
        if args.scope == "global" and pruned and untouched:
            text.append(f"note: the global ranking prunes no channel of {len(untouched)} layer(s) "
                        f"({', '.join(untouched[:4])}{', ...' if len(untouched) > 4 else ''}): a "
                        "channel of a narrow layer carries more path mass than one of a wide "
                        "layer (vgg11_bn: the 8192 classifier channels, 75% of all, carry least); "
                        "--scope layer prunes every layer by the same share")
    else:
        text = [table(["parameter", "shape", "sparsity"],
                      [[r["parameter"], "x".join(map(str, r["shape"])), r["sparsity"]]
                       for r in layers]), "",
                f"unstructured path-magnitude pruning: weight share {result.sparsity:.4f} pruned "
                f"(target {args.sparsity})"]
    text += [
        f"certified: ||R(x) - R_pruned(x)||_1 <= max(||x||_inf, 1) * "
        f"{result.certified_bound:.6e}",
        f"classical bound (2205.11874) for the same change, ||x||_inf <= 1: "
        f"{fmt_log(compare['classical_log_bound'])} "
        f"(10^{compare['log_ratio'] / math.log(10):.1f} x the path-metric one)"]
    head_certificate(model, x, result.certified_bound, out, text)
    if args.out:
        text.append(f"pruned state_dict written to {args.out} "
                    f"(reload: --checkpoint {args.out} with model {args.model})")
    emit(args, out, "\n".join(text))
    return 0


def _channel_counts(model, x, masks: dict) -> dict:
    """``{layer: {"total", "pruned", "weight_sparsity"}}`` of output channels for every pruned
    conv/linear layer: a channel is pruned when its whole weight slice (along the layer's own
    output-channel dimension, ``pathmetric.metric.layer_weights``) is masked."""
    from ..metric import layer_weights

    out = {}
    for layer, (name, _, dim) in layer_weights(model, x).items():
        if name in masks:
            mask = masks[name].movedim(dim, 0).reshape(masks[name].shape[dim], -1)
            out[layer] = {"total": mask.shape[0], "pruned": int((~mask.bool().any(1)).sum()),
                          "weight_sparsity": 1.0 - float(mask.double().mean())}
    return out


def register(sub) -> None:
    """Add ``prune`` to the subcommands ``sub`` of the ``pathmetric`` parser."""
    p = sub.add_parser("prune", help="path-magnitude pruning with its certificate")
    model_args(p)
    p.add_argument("--sparsity", type=fraction, required=True,
                   help="share of the weights (or channels with --structured) to prune, in [0, 1)")
    p.add_argument("--structured", action="store_true", help="prune output channels")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="rank across all layers (global, default) or within each layer")
    p.add_argument("--max-layer-sparsity", type=fraction, default=0.95,
                   help="never prune more than this share of one layer, in [0, 1) (default 0.95)")
    p.add_argument("--rounds", type=positive, default=1,
                   help="prune in this many rounds, rescoring between them (default 1)")
    p.add_argument("--out", help="write the pruned state_dict here")
    p.set_defaults(run=cmd_prune)
