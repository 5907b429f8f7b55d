"""Rules of the sums and scalings of activations: add, sub, neg, mul, div.
"""
from __future__ import annotations

import math

import torch

from ..ir import Buffer, Param, ParamView
from .registry import (
    ARITHMETIC,
    Tensor,
    abs_pow,
    is_constant,
    is_lifted_value,
    is_traced,
    offset,
    rule,
)

# ---------------------------------------------------------------- sums of activations

def _check_add(x, y=None, *args, alpha=1, **kwargs):
    for operand in (x, y):
        if not (is_traced(operand) or isinstance(operand, (Tensor, Param, ParamView, Buffer)) or
                isinstance(operand, (int, float)) and math.isfinite(operand)):
            return f"adding {type(operand).__name__} {operand!r} to an activation"
    return None


@rule("add", torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__radd__,
      Tensor.__iadd__, check=_check_add, param_views=("x", "y"), family=ARITHMETIC)
def add(ev, x, y, *, alpha=1, func=None):
    """Residual addition: coefficients one (``|alpha|^q`` on the second operand). An operand
    that is a constant ``c`` or a parameter is a bias (paths starting there, ``|c|^q``; a
    constant is a parameter coordinate both models share)."""
    terms = []
    for operand, scale in ((x, 1), (y, alpha)):
        if not is_lifted_value(operand):
            if isinstance(operand, (int, float)) or scale == 1:
                terms.append(offset(ev, operand * scale if isinstance(operand, (int, float))
                                    else operand))
            else:  # |alpha * b|^q = |alpha|^q |b|^q: b stays the lifted parameter itself
                factor = abs(scale) ** ev.q
                terms.append(ev.bias(ev.param(None, operand), lambda p, f=factor: p * f))
        elif scale != 1:
            factor = abs(scale) ** ev.q
            terms.append(ev.fixed(operand, lambda m: m * factor, terms=1))
        else:
            terms.append(operand)
    return ev.add(terms)


@rule("sub", torch.sub, Tensor.sub, Tensor.sub_, Tensor.__sub__, Tensor.__rsub__,
      Tensor.__isub__, check=_check_add, param_views=("x", "y"), family=ARITHMETIC)
def sub(ev, x, y, *, alpha=1, func=None):
    """Subtraction: coefficients one and minus one, both lifted to one."""
    return add(ev, x, y, alpha=alpha)


@rule("neg", torch.neg, Tensor.neg, Tensor.__neg__, family=ARITHMETIC, depth=0)
def neg(ev, x, *, func=None):
    """Negation: coefficient minus one, lifted to one."""
    return x


def _check_scale(x, y, *args, **kwargs):
    if is_traced(x) and is_traced(y):
        return "a product of two activations is not in the path-lifting model"
    return None


def _check_div(x, y, *args, **kwargs):
    if not (is_constant(y) or isinstance(y, Buffer)):
        return "dividing by an activation or a parameter is not in the path-lifting model"
    return None


@rule("mul", torch.mul, Tensor.mul, Tensor.mul_, Tensor.__mul__, Tensor.__rmul__,
      Tensor.__imul__, check=_check_scale, param_views=("x", "y"), family=ARITHMETIC, weighted=True)
def mul(ev, x, y, *, func=None):
    """Multiplication by a parameter ``p`` (a learnt scale such as LayerScale's
    ``gamma.view(1, -1, 1, 1)``, coefficients ``|p|^q``) or by a constant ``c`` (number or
    tensor, coefficients ``|c|^q``). A learnt scale is an identity neuron with its own weight
    (like a frozen BatchNorm), so the rule states one neuron layer: a constant factor could fold
    into the next edges, but counting the layer keeps depth an upper bound in every case."""
    if is_constant(x) or isinstance(x, (Param, ParamView, Buffer)):
        x, y = y, x
    if isinstance(y, (Param, ParamView, Buffer)):
        return ev.linear(x, lambda m, p: m * p, ev.param(None, y), terms=1)
    factor = abs_pow(y, ev.q)
    return ev.fixed(x, lambda m: m * (factor.to(m) if isinstance(factor, Tensor) else factor),
                    terms=1)


@rule("div", torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__, Tensor.__itruediv__,
      check=_check_div, family=ARITHMETIC, depth=0)
def div(ev, x, y, *, rounding_mode=None, func=None):
    """Division by a constant ``c``: coefficients ``|1/c|^q``."""
    if rounding_mode is not None:
        raise ev.unsupported("rounded division is not linear")
    if isinstance(y, Buffer):  # coefficients 1/c read from the buffers of the model evaluated
        return ev.linear(x, lambda m, p: m * p, ev.param(torch.reciprocal, y), terms=1)
    factor = abs_pow(y, ev.q)
    return ev.fixed(x, lambda m: m / (factor.to(m) if isinstance(factor, Tensor) else factor),
                    terms=1)
