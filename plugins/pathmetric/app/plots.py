"""Plots written to files (matplotlib, Agg backend): per-layer sensitivity, accuracy against
sparsity, certificate against measured output change. Each function returns the file path."""
from __future__ import annotations


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def draw_sensitivity(ax, sensitivity):
    """Certified path-metric of quantizing each layer alone (log scale), one line per bit-width;
    ``sensitivity`` is a :class:`pathmetric.Sensitivity` (``{(layer, bits): value}``)."""
    layers = list(dict.fromkeys(layer for layer, _ in sensitivity))
    for b in sorted({b for _, b in sensitivity}):
        ax.semilogy(range(len(layers)), [max(sensitivity[l, b], 1e-300) for l in layers], "o-",
                    ms=3, label=f"{b} bits")
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel("certified path-metric")
    ax.set_title("per-layer quantization sensitivity")
    ax.legend(fontsize=7)


def draw_accuracy(ax, sparsities, curves: dict, chance=None):
    """Accuracy against sparsity; ``curves``: label -> accuracies (one per sparsity)."""
    for (label, values), style in zip(curves.items(), ("o-", "s--", "^-", "v:", "d-.")):
        ax.plot(sparsities, values, style, label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy after pruning + fine-tune")
    ax.legend(fontsize=7)


def draw_certificates(ax, points):
    """Certificate (x) against measured ``max ||R(x) - R'(x)||_1`` (y); ``points``: list of
    ``(label, certificate, measured)``. Every point lies below the diagonal."""
    values = [v for _, c, m in points for v in (c, m) if v > 0]
    for label, certificate, measured in points:
        ax.loglog(certificate, max(measured, 1e-300), "o", label=label)
    if values:
        lo, hi = min(values) / 2, max(values) * 2
        ax.loglog([lo, hi], [lo, hi], color="grey", lw=0.8, label="measured = certificate")
    ax.set_xlabel("certified bound")
    ax.set_ylabel("measured max output change (L1)")
    ax.set_title("certificate vs measured change")
    ax.legend(fontsize=6)


def sensitivity_plot(sensitivity, path):
    fig, ax = _pyplot().subplots(figsize=(max(6, 0.25 * len(sensitivity)), 4))
    draw_sensitivity(ax, sensitivity)
    return _save(fig, path)


def accuracy_plot(sparsities, curves, path, chance=None):
    fig, ax = _pyplot().subplots(figsize=(5, 4))
    draw_accuracy(ax, sparsities, curves, chance)
    return _save(fig, path)


def certificate_plot(points, path):
    fig, ax = _pyplot().subplots(figsize=(5, 4))
    draw_certificates(ax, points)
    return _save(fig, path)


def demo_plot(sparsities, curves, points, path, chance=None):
    """The demo's figure: accuracy against sparsity beside certificate against measured change."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 4))
    draw_accuracy(left, sparsities, curves, chance)
    draw_certificates(right, points)
    return _save(fig, path)
