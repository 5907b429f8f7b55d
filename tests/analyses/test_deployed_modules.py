"""Deployed models whose quantization points are ``torch.ao.quantization`` modules (issue 22):
``FakeQuantize`` / ``FusedMovingAvgObsFakeQuantize`` modules and observers in forward, and the
QAT models of ``prepare_qat`` (weights fake-quantized at every call). Capture records a
fake-quantization module as one point on the grid of its buffers (the identity when disabled),
an observer as the identity, and never updates their statistics."""
import copy
import warnings

import pytest
import torch
import torch.ao.quantization as tq
from conftest import model_state, same_state
from torch import nn

import pathmetric as pm
from pathmetric.core.support import capture


class Net(nn.Module):
    """conv-ReLU-maxpool, conv-ReLU, linear; ``points`` maps a position (0: the input, 1: after
    the first ReLU, 2: after the second) to a quantization module, or to a per-tensor grid
    ``(scale, zero_point, qmin, qmax)`` applied with ``torch.fake_quantize_per_tensor_affine``."""

    def __init__(self, points=None):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3), nn.Linear(6 * 2 * 2, 4)
        self.grids = {k: v for k, v in (points or {}).items() if isinstance(v, tuple)}
        self.points = nn.ModuleDict({str(k): v for k, v in (points or {}).items()
                                     if isinstance(v, nn.Module)})

    def q(self, x, k):
        if k in self.grids:
            return torch.fake_quantize_per_tensor_affine(x, *self.grids[k])
        return self.points[str(k)](x) if str(k) in self.points else x

    def forward(self, x):
        x = self.q(x, 0)
        x = self.q(nn.functional.max_pool2d(torch.relu(self.c1(x)), 2), 1)
        x = self.q(torch.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


X = torch.randn(64, 3, 10, 10, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def float_model():
    torch.manual_seed(0)
    return Net().eval()


def _observed(model, points, x=X):
    """``model`` with the quantization modules ``points``, calibrated on ``x`` in train mode,
    then in eval mode (observers still on: capture must leave them out)."""
    deployed = Net(points)
    deployed.load_state_dict(model.state_dict(), strict=False)
    deployed.train()
    with torch.no_grad():
        deployed(x)
    return deployed.eval()


def _grid(module):
    observer = module.activation_post_process
    return (float(module.scale), int(module.zero_point), observer.quant_min, observer.quant_max)


def _modules():
    return {0: tq.FakeQuantize(observer=tq.MovingAverageMinMaxObserver, quant_min=-128,
                               quant_max=127, dtype=torch.qint8),
            1: tq.FusedMovingAvgObsFakeQuantize(quant_min=0, quant_max=255),
            2: tq.FakeQuantize(observer=tq.MovingAverageMinMaxObserver, quant_min=0,
                               quant_max=255)}


def test_fake_quantize_modules_are_the_points_of_their_grids(float_model):
    """The modules' certificate is that of the same grids written with
    ``torch.fake_quantize_per_tensor_affine``, it holds, and the modules (observers on) are
    left exactly as they were: no statistic, scale or flag moves."""
    deployed = _observed(float_model, _modules())
    grids = Net({k: _grid(m) for k, m in deployed.points.items() for k in [int(k)]}).eval()
    grids.load_state_dict(float_model.state_dict(), strict=False)
    before = model_state(deployed)
    report = pm.deployment_report(float_model, deployed, X)
    assert same_state(before, model_state(deployed))
    assert list(report.activation_terms) == ["0:input", "1:max_pool", "2:relu"]
    same = pm.deployment_report(float_model, grids, X)
    assert report.activation_terms.keys() == same.activation_terms.keys()
    assert list(report.activation_terms.values()) == list(same.activation_terms.values())
    assert torch.equal(report.bound, same.bound) and report.weight_term == 0.0
    assert "observers of points.0, points.1, points.2 are on" in report.notes[0]
    deployed.apply(tq.disable_observer)
    assert pm.deployment_report(float_model, deployed, X[:2]).notes == []
    with torch.no_grad():
        gap = (float_model(X) - deployed(X)).abs().sum(1).double()
    certified = ~report.saturated
    assert certified.sum() > len(X) // 2
    assert (gap[certified] <= report.bound[certified]).all()


def test_a_disabled_fake_quantize_is_the_identity_and_the_flag_is_read_anew(float_model):
    deployed = _observed(float_model, _modules())
    full = pm.deployment_report(float_model, deployed, X)
    assert capture(deployed, X[:1]).rule_counts()["fake_quantize"] == 3
    deployed.points["1"].disable_fake_quant()   # (the cached capture is not reused: the
    # flag is in its key)
    assert capture(deployed, X[:1]).rule_counts()["fake_quantize"] == 2
    without = pm.deployment_report(float_model, deployed, X)
    assert list(without.activation_terms) == ["0:input", "1:relu"]
    assert without.activation_term < full.activation_term
    deployed.points["1"].enable_fake_quant()
    assert pm.deployment_report(float_model, deployed, X).activation_term == full.activation_term


def test_an_observer_in_forward_is_the_identity(float_model):
    """A model with observers only (calibration inserted, nothing quantized): the float model's
    numbers, no point, and the observers' statistics untouched."""
    observed = _observed(float_model, {0: tq.MinMaxObserver(), 2: tq.HistogramObserver()})
    before = model_state(observed)
    assert pm.path_norm(observed, X[:1]) == pm.path_norm(float_model, X[:1])
    assert pm.downstream_masses(observed, X[:1]) == {}
    assert same_state(before, model_state(observed))


def test_per_channel_fake_quantize_module(float_model):
    points = {1: tq.FakeQuantize(observer=tq.MovingAveragePerChannelMinMaxObserver, ch_axis=1,
                                 quant_min=0, quant_max=255, dtype=torch.quint8,
                                 qscheme=torch.per_channel_affine)}
    deployed = _observed(float_model, points)
    deployed.apply(tq.disable_observer)
    report = pm.deployment_report(float_model, deployed, X)
    with torch.no_grad():
        gap = (float_model(X) - deployed(X)).abs().sum(1).double()
    assert report.saturated_count == 0 and report.activation_term > 0
    assert (gap <= report.bound).all()


class Qat(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3), nn.Linear(6 * 2 * 2, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.c1(self.quant(x))), 2)
        return self.dequant(self.fc(torch.flatten(torch.relu(self.c2(x)), 1)))


def test_prepare_qat_model_weights_and_activations():
    """Eager QAT (``prepare_qat``, the x86 default: per-channel weight fake-quants inside the
    layers, activation fake-quants in forward hooks): the certificate covers the fake-quantized
    weights and every activation point, and holds; the QAT model is left as it was."""
    torch.manual_seed(1)
    model = Qat().eval()
    qat = copy.deepcopy(model).train()
    qat.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = tq.prepare_qat(qat)
    for _ in range(3):
        with torch.no_grad():
            qat(X)
    qat.eval()
    before = model_state(qat)
    report = pm.deployment_report(model, qat, X)
    assert same_state(before, model_state(qat))
    assert report.weight_term > 0 and list(report.activation_terms) == ["0:input", "1:c1", "2:c2", "3:fc"]
    qat.apply(tq.disable_observer)
    with torch.no_grad():
        gap = (model(X) - qat(X)).abs().sum(1).double()
    certified = ~report.saturated
    assert certified.any() and (gap[certified] <= report.bound[certified]).all()
