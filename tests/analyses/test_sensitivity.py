"""Layer sensitivity, quantization bounds and mixed-precision plans."""

import pytest
from models import _at_w_pair

import pathmetric as pm


@pytest.mark.parametrize("granularity, group_size", [("per_channel", None), ("per_group", 2),
                                                     ("per_tensor", None)])
def test_x_at_w_is_quantized_per_output_channel_like_its_linear_twin(granularity, group_size):
    at_w, linear, x = _at_w_pair()
    args = dict(bits=(2, 4, 8), granularity=granularity, group_size=group_size)
    mine, theirs = pm.layer_sensitivity(at_w, x, **args), pm.layer_sensitivity(linear, x, **args)
    assert mine.keys() == theirs.keys() == {(l, b) for l in ("W", "head") for b in (2, 4, 8)}
    for key in mine:
        assert mine[key] == pytest.approx(theirs[key], rel=1e-9)
    one = dict(bits=3, granularity=granularity, group_size=group_size)
    assert pm.quantization_bound(at_w, x, **one) == pytest.approx(
        pm.quantization_bound(linear, x, **one), rel=1e-9)
    plan = dict(bits=(2, 4, 8), avg_bits=5, granularity=granularity, group_size=group_size)
    assert pm.mixed_precision_plan(at_w, x, **plan).bits == \
        pm.mixed_precision_plan(linear, x, **plan).bits
