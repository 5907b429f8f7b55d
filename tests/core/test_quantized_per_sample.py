"""The per-sample check of a graph with quantization points compares rows of batches of the same
size only (a value on a rounding boundary may round to two grid steps at two batch sizes: on
vgg11_bn under X86InductorQuantizer, benchmarks/results/deployed_int8.md), and still refuses
every model that mixes samples, branches on the batch size or escapes capture."""
import pytest
import torch
from torch import nn

import pathmetric as pm


class Quantized(nn.Module):
    """linear - fake-quant - ReLU - linear, with ``between(h)`` applied to the quantized hidden
    value."""

    def __init__(self, between=lambda h: h):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.between = between

    def forward(self, x):
        h = torch.fake_quantize_per_tensor_affine(self.l1(x), 0.05, 0, -128, 127)
        return self.l2(torch.relu(self.between(h)))


def _refusal(model):
    report = pm.check_support(model, torch.rand(1, 6))
    return " ".join(why for _, _, why in report.unsupported)


@pytest.mark.parametrize("between", [
    lambda h: h - h.mean(0, keepdim=True),     # a reduction over the batch
    lambda h: h.roll(1, 0),                    # rows moved
    lambda h: h.flip(0).roll(1, 0),            # the identity on two rows
    lambda h: h + h[:1],                       # the first row broadcast to every row
], ids=["mean", "roll", "flip-roll", "broadcast"])
def test_quantized_graph_mixing_samples_is_refused(between):
    assert "mixes samples" in _refusal(Quantized(between).eval())


def test_quantized_graph_branching_on_the_batch_size_is_refused():
    model = Quantized(lambda h: h * 2 if h.shape[0] > 1 else h).eval()
    assert "branches on the batch size" in _refusal(model)   # the replay at batch size 3


def test_quantized_graph_is_certified():
    model = Quantized().eval()
    assert pm.check_support(model, torch.rand(1, 6)).ok
    assert pm.path_norm(model, torch.rand(1, 6)) > 0


def test_quantized_graph_without_a_batch_still_checked():
    """A model written for one sample (``view(1, -1)``) is checked on one new sample alone."""
    model = Quantized().eval()
    flat = nn.Sequential(nn.Flatten(0), nn.Unflatten(0, (1, 6)), model).eval()
    assert pm.check_support(flat, torch.rand(1, 6)).ok
