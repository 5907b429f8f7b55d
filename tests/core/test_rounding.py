"""The a priori rounding-error bound of a lifted pass (docs/design.md, "Rounding")."""
import math

import pytest
import torch
import torch.nn as nn

from pathmetric.core import support
from pathmetric.core.algebras import NormLifting

torch.set_num_threads(1)


def _pass(model, x, dtype=torch.float64):
    ev = NormLifting(support.capture(model, x), model, dtype=dtype)
    with torch.no_grad():
        ev.run()
    return ev


def test_the_final_sum_of_the_outputs_counts_its_terms():
    """Linear(3, k) sums 3 + 2 terms per entry whatever k, but the path-norm then sums the k
    output entries: the bound grows by 2 u per output entry (``-ln(1 - g) <= 2 g``)."""
    narrow, wide = (_pass(nn.Linear(3, k), torch.zeros(1, 3)) for k in (2, 2002))
    assert narrow.summed_terms == wide.summed_terms
    u = torch.finfo(torch.float64).eps / 2
    assert wide.relative_error() - narrow.relative_error() == pytest.approx(2 * 2000 * u, rel=1e-6, abs=0)


def test_the_bound_is_infinite_past_a_third_of_the_unit_roundoff():
    """``e = expm1(2 n u / (1 - n u))`` holds while ``n u <= 1/3`` (where ``gamma_n <= 1/2``);
    past it the bound is ``inf``, in float32 from about 5.6 million counted terms."""
    ev = _pass(nn.Linear(3, 2), torch.zeros(1, 3), dtype=torch.float32)
    u = torch.finfo(torch.float32).eps / 2
    base = 2 * len(ev.graph.nodes) + ev._output_entries() + 16
    ev.summed_terms = math.floor(1 / (3 * u)) - base
    assert math.isfinite(ev.relative_error())
    ev.summed_terms += 1
    assert ev.relative_error() == math.inf
