"""pm.prune: masks and certificates."""
import math

import pytest
import torch
from models import _at_w_pair, deep_mlp

import pathmetric as pm


def test_prune_results_carry_a_finite_log_bound_past_float64():
    model, x = deep_mlp(), torch.randn(1, 4)
    result = pm.prune(model, 0.3, x)
    assert result.certified_bound == math.inf
    assert math.isfinite(result.log_certified_bound) and result.log_certified_bound > 709
    assert result.log_certified_bound == pm.log_path_metric(result.model, model, x)


@pytest.mark.parametrize("structured", [False, True])
def test_x_at_w_prunes_like_its_linear_twin(structured):
    at_w, linear, x = _at_w_pair()
    mine = pm.prune(at_w, 0.5, x, structured=structured, max_layer_sparsity=0.9)
    theirs = pm.prune(linear, 0.5, x, structured=structured, max_layer_sparsity=0.9)
    assert torch.equal(mine.masks["W"], theirs.masks["W.weight"].T)
    assert mine.certified_bound == pytest.approx(theirs.certified_bound, rel=1e-9)
    assert 0 < mine.certified_bound and mine.sparsity == pytest.approx(theirs.sparsity)
    if structured:   # whole output channels: columns of W
        assert (mine.masks["W"].all(dim=0) | ~mine.masks["W"].any(dim=0)).all()
