"""pm.random_rescale: function-preserving neuron rescaling."""

import torch
from models import _at_w_pair

import pathmetric as pm


def test_x_at_w_random_rescale_keeps_the_function_and_the_scores():
    at_w, _, x = _at_w_pair()
    rescaled = pm.random_rescale(at_w, x, seed=2)
    assert not torch.allclose(rescaled.W, at_w.W)
    torch.testing.assert_close(rescaled(x), at_w(x), rtol=1e-10, atol=1e-12)
    for name, score in pm.channel_scores(at_w, x).items():
        torch.testing.assert_close(pm.channel_scores(rescaled, x)[name], score, rtol=1e-9, atol=0)
