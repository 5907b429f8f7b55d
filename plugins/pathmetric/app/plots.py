"""The demo's figure (matplotlib, Agg backend): accuracy against sparsity beside certificate
against measured output change. The per-layer sensitivity plot is
:meth:`pathmetric.Sensitivity.plot`."""
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


def demo_plot(sparsities, curves, points, path, chance=None):
    """The demo's figure: accuracy against sparsity beside certificate against measured change."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 4))
    draw_accuracy(left, sparsities, curves, chance)
    draw_certificates(right, points)
    return _save(fig, path)
