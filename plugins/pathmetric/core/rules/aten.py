"""The aten ops of exported programs (``torch.export``) and converted PT2E graphs.

An exported ``GraphModule`` calls ``torch.ops.aten.conv2d.default``, ``aten.relu_.default``,
``aten.add_.Tensor``, ... where an eager model calls ``F.conv2d``, ``F.relu``, ``Tensor.add_``.
An aten op whose arguments come in the order of its eager function is that function's rule, by
:func:`alias`; ``aten.batch_norm`` (weights before running statistics) has its own rule that
passes its arguments on in the eager order.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as F

from .linear import batch_norm
from .registry import Rule, Tensor, lookup, rule

aten = torch.ops.aten

#: aten op -> the eager function whose rule it shares
ALIASES: dict = {}


def alias(op, eager):
    """Register the aten overload ``op``, which takes its arguments in the order of ``eager``,
    as a rule named ``aten.<op>`` with every fact of ``eager``'s rule; its lifted image is the
    eager rule's, evaluated with ``eager`` itself (which accepts the ints that aten spells as
    lists, and the eager defaults)."""
    entry = lookup(eager)
    if entry is None:
        raise KeyError(f"{eager} has no rule to alias")

    def lift(ev, *args, func=None, **kwargs):
        return entry.lift(ev, *args, func=eager, **kwargs)
    lift.__signature__ = inspect.signature(entry.lift)
    lift.__doc__ = entry.lift.__doc__
    name = f"aten.{op.__name__}"
    rule(name, op, check=entry.check, **facts_of(entry))(lift)
    ALIASES[name] = entry.name


def facts_of(entry: Rule) -> dict:
    """Every fact a rule states (all but its name, functions, lift and check)."""
    return {f.name: getattr(entry, f.name) for f in dataclasses.fields(Rule)
            if f.init and f.name not in ("name", "funcs", "lift", "check")}


def canonical(name: str) -> str:
    """The eager rule a rule name stands for (``aten.conv2d.default`` -> ``conv``)."""
    return ALIASES.get(name, name)


for _op, _eager in [
    (aten.conv1d.default, F.conv1d), (aten.conv2d.default, F.conv2d),
    (aten.conv3d.default, F.conv3d), (aten.linear.default, F.linear),
    (aten.conv_transpose2d.input, F.conv_transpose2d),
    (aten.relu.default, F.relu), (aten.relu_.default, F.relu_),
    (aten.hardtanh.default, F.hardtanh), (aten.hardtanh_.default, F.hardtanh_),
    (aten.clamp.default, torch.clamp), (aten.clamp_.default, torch.clamp_),
    (aten.dropout.default, F.dropout), (aten.dropout_.default, F.dropout),
    (aten.add.Tensor, torch.add), (aten.add_.Tensor, Tensor.add_),
    (aten.sub.Tensor, torch.sub), (aten.mul.Tensor, torch.mul),
    (aten.max_pool2d.default, F.max_pool2d), (aten.max_pool1d.default, F.max_pool1d),
    (aten.avg_pool2d.default, F.avg_pool2d), (aten.avg_pool1d.default, F.avg_pool1d),
    (aten.adaptive_avg_pool2d.default, F.adaptive_avg_pool2d),
    (aten.adaptive_avg_pool1d.default, F.adaptive_avg_pool1d),
    (aten.mean.dim, torch.mean), (aten.sum.dim_IntList, torch.sum),
    (aten.cat.default, torch.cat),
    (aten.flatten.using_ints, torch.flatten), (aten.view.default, Tensor.view),
    (aten.reshape.default, torch.reshape), (aten.permute.default, torch.permute),
    (aten.transpose.int, torch.transpose), (aten.squeeze.dim, torch.squeeze),
    (aten.unsqueeze.default, torch.unsqueeze), (aten.clone.default, torch.clone),
    (aten.contiguous.default, Tensor.contiguous), (aten.to.dtype, Tensor.to),
]:
    alias(_op, _eager)


def _check_aten_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                           cudnn_enabled=True):
    return lookup(F.batch_norm).check(x, running_mean, running_var, weight, bias, training,
                                      momentum, eps)


@rule("aten.batch_norm.default", aten.batch_norm.default, check=_check_aten_batch_norm,
      **facts_of(lookup(F.batch_norm)))
def aten_batch_norm(ev, x, weight, bias, running_mean, running_var, training, momentum, eps,
                    cudnn_enabled=True, *, func=None):
    """``aten.batch_norm(x, gamma, beta, mean, var, ...)``: the frozen BatchNorm of
    :func:`~pathmetric.core.rules.linear.batch_norm` (weight ``s = gamma / sqrt(var + eps)``,
    bias ``t = beta - mean * s``)."""
    return batch_norm(ev, x, running_mean, running_var, weight, bias, training, momentum, eps)


ALIASES["aten.batch_norm.default"] = "batch_norm"
