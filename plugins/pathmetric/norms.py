"""L_q path-norms in one pass through the lifted network."""
from __future__ import annotations

import math

import torch

from .core.algebras import NormLifting, total_of
from .core.interpreter import precision_dtype
from .core.ir import Inputs
from .core.support import capture_lifted


def lifted_mass(model, example_inputs, q=1.0, precision="float64", overrides=None):
    """``||Phi(theta)||_q^q`` as a scaled scalar (``Scaled``), from one lifted forward pass."""
    if not q > 0:
        raise ValueError(f"q must be positive, got {q}")
    if not math.isfinite(q):
        raise ValueError("q = inf (the largest path product, max over paths of |Phi_p|) needs a "
                         "max-product pass that is not implemented; use a large finite q (the "
                         "L_q path-norm tends to it as q grows)")
    dtype = precision_dtype(precision)
    graph, outputs = capture_lifted(model, example_inputs, q, dtype, overrides)
    if outputs is None:  # (else a cold capture's own evaluation was this pass)
        ev = NormLifting(graph, model, q=q, dtype=dtype, overrides=overrides)
        with torch.no_grad():
            outputs, _ = ev.run()
    return total_of(outputs)


def log_path_norm(model: torch.nn.Module, example_inputs: Inputs, q: float = 1.0,
                  precision: str = "float64") -> float:
    """Natural log of ``||Phi(theta)||_q = (sum of the lifted outputs)^(1/q)``; finite for any depth.

    The lifted network replaces every parameter ``w`` by ``|w|^q`` and every fixed coefficient
    ``c`` by ``|c|^q``, keeps ReLUs as identities, turns max-pooling into sum-pooling and is fed
    with ones (docs/design.md, "Path-lifting"). Outputs of a tuple, list or dict are all summed.
    """
    return lifted_mass(model, example_inputs, q, precision).log() / q


def path_norm(model: torch.nn.Module, example_inputs: Inputs, q: float = 1.0,
              precision: str = "float64") -> float:
    """``||Phi(theta)||_q``; ``math.inf`` only when the value exceeds float64's range."""
    total = lifted_mass(model, example_inputs, q, precision)
    mantissa = float(total.m)
    if mantissa == 0.0:
        return 0.0
    if (math.log(mantissa) + total.e * math.log(2.0)) / q > 709.78:
        return math.inf
    return mantissa ** (1.0 / q) * 2.0 ** (total.e / q)
