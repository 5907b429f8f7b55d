"""Rules of the final softmax/log_softmax head, set aside at capture.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir import Value, values_read
from .registry import PARAMETER_FREE, Tensor, rule

# ---------------------------------------------------------------- output heads and graph checks

HEAD_NOTE = ("the analysed function is the logits before the final {head} (docs/heads.md): "
             "every certificate bounds the logits; it bounds the probabilities with "
             "factor 1 (softmax) and the log-probabilities with factor n + 1 (n classes)")


_HEAD = dict(PARAMETER_FREE, depth=0, homogeneous=False, channels="mix", transforms_through=False)


@rule("softmax_head", F.softmax, torch.softmax, Tensor.softmax, family=_HEAD, head="softmax")
def softmax_head(ev, x, dim=None, *args, func=None, **kwargs):
    """A final softmax or log-softmax over the class dimension of every output is set aside at
    capture (:func:`set_aside_head`): the logits are the analysed outputs and this node's value is
    never read; any other softmax is refused there."""
    return x


@rule("log_softmax_head", F.log_softmax, torch.log_softmax, Tensor.log_softmax, family=_HEAD,
      head="log_softmax")
def log_softmax_head(ev, x, dim=None, *args, func=None, **kwargs):
    """As :func:`softmax_head`, for a final log-softmax."""
    return x


def _head_dim(node):
    dim = node.roles.get("dim")
    return dim if isinstance(dim, int) else None


def set_aside_head(nodes, outputs):
    """docs/design.md, "Output heads": when every output is a ``softmax``/``log_softmax`` over the class
    dimension (dim 1) read by nothing else, return ``(logits, kind, [])``: the analysed outputs,
    and 'softmax', 'log_softmax' or both joined by '+'. Otherwise ``(outputs, None, refused)``
    with the refused softmax nodes as ``[(index, reason)]``."""
    read = {ref.node for node in nodes for ref in values_read(node)}
    def head(node):
        return node.rule.head if node.rule is not None else None

    heads = [v for v in outputs if head(nodes[v.node])]
    refused = []
    for index, node in enumerate(nodes):
        if not head(node):
            continue
        dim, ndim = _head_dim(node), len(node.shape)
        if dim is None or ndim < 2 or dim % ndim != 1:
            refused.append((index, "softmax over a dimension other than the class dimension (1)"))
        elif index in read or Value(index) not in outputs:
            refused.append((index, "softmax inside the network is not piecewise linear (only a "
                                   "final softmax/log_softmax on every output is set aside)"))
        elif len(heads) != len(outputs):
            refused.append((index, "softmax on some outputs only: the analysed function would "
                                   "mix logits and probabilities"))
    if refused or not heads:
        return outputs, None, refused
    kinds = sorted({head(nodes[v.node]) for v in heads})
    return [nodes[v.node].roles["x"] for v in heads], "+".join(kinds), []
