"""An empirical estimate beside the certificate (benchmarks/README.md, "Calibrated estimate").

The certificate ``pm.path_metric`` is a guaranteed bound on
``sup_x ||R(x) - R'(x)||_1 / max(||x||_inf, 1)``; on trained networks it is loose by a large but
fairly stable factor within one kind of compression (RTN at several bit-widths, pruning at
several sparsities). :func:`calibrate` measures that factor on a handful of inputs and a few
compressions; :func:`estimate` divides a new certificate by it. The estimate is **not a bound**.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterable

import torch

from .core.ir import Inputs, Other
from .metric import path_metric, sup_norms

TARGETS = {"data": "largest gap on inputs like the calibration ones",
           "worst-case": "largest gap found by gradient ascent in the calibration inputs' "
                         "sup-norm ball"}


def output_gap(model, other, x) -> torch.Tensor:
    """Per-sample ``||R(x) - R'(x)||_1`` of the eval-mode models, in float64."""
    with torch.no_grad():
        a = copy.deepcopy(model).double().eval()(x.double())
        b = copy.deepcopy(other).double().eval()(x.double())
    return (a - b).abs().flatten(1).sum(1)


def adversarial_gap(model: torch.nn.Module, other: torch.nn.Module, x_data: torch.Tensor,
                    radius: float | None = None, starts: int = 64, steps: int = 150, seed: int = 0,
                    box: tuple[float, float] | None = None) -> tuple[float, torch.Tensor]:
    """Largest ``||R(x) - R'(x)||_1`` found by projected sign-gradient ascent on ``x``.

    Search set: the sup-norm ball ``||x||_inf <= radius`` (default: the largest sup-norm of
    ``x_data``) or ``box=(lo, hi)``. Starts: the ``starts // 2`` inputs of ``x_data`` with the
    largest gap and as many uniform random points; the step decays linearly from 0.1 to 0.002 of
    the set's width. Returns ``(best gap, input where it was found)``.
    """
    radius = float(x_data.abs().amax()) if radius is None else radius
    lo, hi = box if box is not None else (-radius, radius)
    a = copy.deepcopy(model).double().eval().requires_grad_(False)
    b = copy.deepcopy(other).double().eval().requires_grad_(False)
    gaps = output_gap(a, b, x_data)
    generator = torch.Generator().manual_seed(seed)
    top = x_data[gaps.argsort(descending=True)[: starts // 2]].double()
    random = lo + (hi - lo) * torch.rand((starts - len(top),) + tuple(x_data.shape[1:]),
                                         generator=generator, dtype=torch.float64)
    x = torch.cat([top, random]).clamp(lo, hi)
    best, best_x = float(gaps.max()), x_data[gaps.argmax()].double()
    for t in range(steps + 1):
        x.requires_grad_(True)
        gap = (a(x) - b(x)).abs().flatten(1).sum(1)
        i = int(gap.argmax())
        if float(gap[i]) > best:
            best, best_x = float(gap[i]), x[i].detach().clone()
        if t == steps:
            break
        (grad,) = torch.autograd.grad(gap.sum(), x)
        step = (hi - lo) * (0.1 + (0.002 - 0.1) * t / max(steps - 1, 1))
        x = (x.detach() + step * grad.sign()).clamp(lo, hi)
    return best, best_x


@dataclass
class Calibration:
    """``ratio`` = geometric mean of certificate / observed gap over ``settings`` compressions,
    observed on ``fitted_on`` inputs, for ``target`` ('data' or 'worst-case')."""
    ratio: float
    fitted_on: int
    settings: int
    target: str


@dataclass
class Estimate:
    """``certified`` is a guaranteed bound on ``sup_x ||R(x) - R'(x)||_1 / max(||x||_inf, 1)``;
    ``estimated = certified / ratio`` is NOT a bound (``label`` says so)."""
    certified: float
    estimated: float
    ratio: float
    label: str


def calibrate(model: torch.nn.Module, others: Iterable[torch.nn.Module], inputs: torch.Tensor,
              target: str = "worst-case", steps: int = 150, seed: int = 0) -> Calibration:
    """Fit ``certified / observed`` on a few compressed models ``others`` of one kind.

    ``observed`` is ``max_x ||R(x) - R'(x)||_1 / max(||x||_inf, 1)`` over ``inputs`` (a handful,
    e.g. 8) for ``target='data'``, or the gap :func:`adversarial_gap` finds from them in their
    sup-norm ball (``2 * len(inputs)`` starts, ``steps`` steps) for ``target='worst-case'``.
    Re-fit for every model and every kind of compression, on settings that bracket the ones to
    be estimated.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    others = list(others)
    if not others:
        raise ValueError("calibrate needs at least one compressed model")
    scale = sup_norms((inputs,)).clamp(min=1.0)
    logs = []
    for other in others:
        certified = path_metric(model, other, inputs[:1])
        if target == "data":
            seen = float((output_gap(model, other, inputs) / scale).max())
        else:
            gap, at = adversarial_gap(model, other, inputs, starts=2 * len(inputs), steps=steps,
                                      seed=seed)
            seen = gap / max(float(at.abs().max()), 1.0)
        if seen <= 0:
            raise ValueError("a calibration model gives no output change on these inputs")
        logs.append(math.log(certified / seen))
    return Calibration(math.exp(sum(logs) / len(logs)), len(inputs), len(others), target)


def estimate(model: torch.nn.Module, other: Other, example_inputs: Inputs,
             calibration: Calibration) -> Estimate:
    """The certificate and, beside it, ``certificate / calibration.ratio`` (labelled)."""
    certified = path_metric(model, other, example_inputs)
    return Estimate(certified, certified / calibration.ratio, calibration.ratio,
                    f"estimated {TARGETS[calibration.target]}: certified / "
                    f"{calibration.ratio:.3g}, fitted on {calibration.fitted_on} inputs and "
                    f"{calibration.settings} compressions; not a bound")
