"""Log-form certificates (finite at any depth) and the softmax-head transfer factors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathmetric as pm
from pathmetric import reports


def mlp(depth, width=8, gain=3.0, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(depth):
        layers += [nn.Linear(width, width if i < depth - 1 else 2), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    return model


X = torch.zeros(1, 8, dtype=torch.float64)


def test_500_layer_mlp_has_finite_log_certificates():
    model = mlp(500)
    assert pm.log_path_norm(model, X) > 709.8  # past float64
    assert pm.quantization_bound(model, X, bits=4) == math.inf
    log_bound = pm.log_quantization_bound(model, X, bits=4)
    assert math.isfinite(log_bound) and log_bound > pm.log_path_norm(model, X) - 50
    other = {name: p * 0.9 for name, p in model.named_parameters() if name.endswith("weight")}
    assert pm.path_metric(model, other, X) == math.inf
    assert math.isfinite(pm.log_path_metric(model, other, X))
    x = torch.randn(3, 8, dtype=torch.float64) * 5
    logs = pm.log_output_bound(model, other, x)
    assert torch.isfinite(logs).all() and pm.output_bound(model, other, x).isinf().all()


@pytest.mark.parametrize("depth", [3, 60, 200])
def test_log_certificates_match_the_float64_value_where_finite(depth):
    model = mlp(depth)
    value = pm.quantization_bound(model, X, bits=4)
    assert 0 < value < math.inf
    log_value = pm.log_quantization_bound(model, X, bits=4)
    assert log_value >= math.log(value) - 1e-12 * abs(math.log(value))
    assert abs(log_value - math.log(value)) <= 1e-12 * max(1.0, abs(math.log(value)))
    x = torch.randn(4, 8, dtype=torch.float64) * 3
    other = {name: p.round() for name, p in model.named_parameters()}
    bound = pm.output_bound(model, other, x)
    logs = pm.log_output_bound(model, other, x)
    assert torch.allclose(logs, bound.log(), rtol=1e-12, atol=1e-12) and (logs >= bound.log() - 1e-12).all()


def test_log_path_metric_of_identical_models_is_minus_infinity():
    model = mlp(3)
    assert pm.log_path_metric(model, model, X) == -math.inf


class Classifier(nn.Module):
    def __init__(self, head, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, classes))
        self.head = head

    def forward(self, x):
        logits = self.body(x)
        if self.head == "softmax":
            return F.softmax(logits, dim=1)
        if self.head == "log_softmax":
            return F.log_softmax(logits, dim=-1)
        return logits


@pytest.mark.parametrize("head,factor", [("softmax", 1.0), ("log_softmax", 6.0), (None, 1.0)])
def test_softmax_head_is_set_aside_and_the_bound_transfers(head, factor):
    """The analysed function is the logits; the certificate bounds the probabilities with factor
    1 and the log-probabilities with factor n + 1 (n = 5 classes), checked on random changes."""
    torch.manual_seed(1)
    model = Classifier(head).double().eval()
    logits = Classifier(None).double().eval()
    logits.load_state_dict(model.state_dict())
    x = torch.randn(2000, 6, dtype=torch.float64) * 4
    report = pm.check_support(model, x[:1])
    assert report.ok and report.head == head and (bool(report.notes) == (head is not None))
    assert pm.path_norm(model, x[:1]) == pm.path_norm(logits, x[:1])
    assert pm.head_factor(model, x[:1]) == factor
    assert reports.generalization_bound(model, x[:1], n=100)["head"] == head
    worst = 0.0
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        other = {n: p * (1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
                 for n, p in model.named_parameters()}
        changed = Classifier(head).double().eval()
        changed.load_state_dict(other)
        with torch.no_grad():
            gap = (model(x) - changed(x)).abs().sum(dim=1)
        logit_bound = pm.output_bound(model, other, x)
        bound = pm.head_output_bound(model, other, x)
        assert torch.equal(bound >= logit_bound * factor, torch.ones_like(bound, dtype=torch.bool))
        assert (gap <= bound).all()
        worst = max(worst, float((gap / bound).max()))
    assert worst > 0


def test_softmax_inside_the_network_is_refused():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.b(F.softmax(self.a(x), dim=1))

    report = pm.check_support(Inner(), torch.zeros(1, 4))
    assert not report.ok and report.unsupported[0][0] == "F.softmax"
    assert "inside the network" in report.unsupported[0][2]


def test_softmax_on_one_of_two_outputs_is_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x):
            y = self.a(x)
            return F.softmax(y, dim=1), y * 2

    report = pm.check_support(Two(), torch.zeros(1, 4))
    assert not report.ok and "some outputs only" in report.unsupported[0][2]
