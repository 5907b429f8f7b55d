"""The deployed-model certificate (issue 22) against the real backends: torchao's PT2E flow
(X86InductorQuantizer, XNNPACKQuantizer) and Intel Neural Compressor's static int8 (per channel
and per tensor), on the shipped digits CNN (BatchNorm, folded by the backend), on the 450 test
digits (the calibration distribution; benchmarks/deployed_int8.py takes all 1,797 and the
larger models)."""
import math

import pytest
import torch

import pathmetric as pm
from pathmetric.app import digits
from pathmetric.deployed import gap_search


@pytest.fixture(scope="module")
def float_model():
    x_train, y_train, x_test, y_test = digits.load_digits_tensors()
    model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
    return model, x_train, x_test


def _calibrated(prepared, x):
    for i in range(0, 64):
        prepared(x[i:i + 1])   # the graphs are exported at batch size 1


def _torchao(model, x, quantizer):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    prepared = prepare_pt2e(torch.export.export(model, (x[:1],)).module(), quantizer)
    _calibrated(prepared, x)
    return convert_pt2e(prepared)


def _inc(model, x, config):
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import convert, prepare
    prepared = prepare(export(model, (x[:1],)), config)
    _calibrated(prepared, x)
    return convert(prepared)


def x86():
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


def xnnpack():
    from torchao.testing.pt2e._xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def inc_config(granularity):
    from neural_compressor.torch.quantization import StaticQuantConfig
    return StaticQuantConfig(w_granularity=granularity)


DEPLOY = {
    "torchao-x86": lambda model, x: _torchao(model, x, x86()),
    "torchao-xnnpack": lambda model, x: _torchao(model, x, xnnpack()),
    "inc-static-per-channel": lambda model, x: _inc(model, x, inc_config("per_channel")),
    "inc-static-per-tensor": lambda model, x: _inc(model, x, inc_config("per_tensor")),
}


@pytest.mark.parametrize("backend", list(DEPLOY))
def test_certificate_holds_on_every_certified_digit(float_model, backend):
    model, x_train, x_all = float_model
    deployed = DEPLOY[backend](model, x_train)
    report = pm.deployment_report(model, deployed, x_all)
    with torch.no_grad():
        gap = (model(x_all) - torch.cat([deployed(x_all[i:i + 1]) for i in range(len(x_all))])
               ).abs().sum(dim=1).double()
    certified = ~report.saturated
    assert report.weight_term > 0.0 and report.activation_term > 0.0
    assert len(report.activation_terms) >= 4   # the input, ReLU/pooling outputs, the flatten
    assert certified.any()
    assert torch.isinf(report.bound[report.saturated]).all()
    assert torch.isfinite(report.bound[certified]).all()
    assert (gap[certified] <= report.bound[certified]).all()
    assert torch.equal(pm.output_bound(model, deployed, x_all), report.bound)
    assert 0.0 < report.activation_share < 1.0
    radius = report.safe_input_radius
    assert 0.0 <= radius < math.inf
    inside = x_all.flatten(1).abs().amax(dim=1) <= radius
    assert not report.saturated[inside].any()


def test_weights_quantized_in_forward_are_the_dequantized_weights(float_model):
    """INC's converted graph quantizes each weight at every call: the certificate reads the
    weights the graph dequantizes, and the model passed in is left as it was."""
    model, x_train, _ = float_model
    deployed = DEPLOY["inc-static-per-channel"](model, x_train)
    before = {k: v.clone() for k, v in deployed.state_dict().items()}
    masses = pm.downstream_masses(deployed, x_train[:1])
    assert next(iter(masses.values())).shape == (1, 8, 8)
    after = deployed.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_dynamic_quantization_gets_a_per_sample_bound(float_model):
    """XNNPACK's dynamic int8 computes each activation scale from the tensor itself: the
    activation term is per sample, and no point saturates."""
    from torchao.testing.pt2e._xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    model, x_train, x_test = float_model
    x = x_test[:100]
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    deployed = _torchao(model, x_train, quantizer)
    report = pm.deployment_report(model, deployed, x)
    with torch.no_grad():
        gap = torch.cat([(model(v) - deployed(v)).abs().sum(dim=1) for v in x.split(1)]).double()
    assert report.saturated_count == 0 and report.activation_terms == {}
    assert report.safe_input_radius == math.inf   # a dynamic grid spans its tensor
    assert (report.dynamic_term > 0).all() and report.dynamic_term.unique().numel() > 1
    assert (gap <= report.bound).all()
    sup = x.flatten(1).abs().amax(1).double().clamp(min=1.0)
    assert (report.bound >= sup * report.weight_term + report.dynamic_term).all()


class _NoBatchNorm(torch.nn.Module):
    """conv-ReLU-maxpool twice and a linear head on 8x8 digits (``prepare_qat_pt2e`` keeps a
    BatchNorm live during QAT, with its folding computed from the weights in forward)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        pool = torch.nn.functional.max_pool2d
        x = pool(torch.relu(self.c1(x)), 2)
        return self.fc(torch.flatten(pool(torch.relu(self.c2(x)), 2), 1))


def test_prepare_qat_pt2e_graph_is_certified(float_model):
    """torchao's QAT flow before conversion: fake-quantization modules on the weights (read as
    their fake-quantized values) and on the activations (points on the grids they hold, their
    observers left out); the certificate holds and the prepared graph is left as it was."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    _, x_train, x_test = float_model
    torch.manual_seed(0)
    model = _NoBatchNorm().eval()
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(torch.export.export(model, (x_train[:1],)).module(), quantizer)
    for i in range(400):   # the observers' moving averages (constant 0.01) settle
        prepared(x_train[i:i + 1])
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    x = x_test[:200]
    report = pm.deployment_report(model, prepared, x)
    after = prepared.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert report.weight_term > 0.0 and len(report.activation_terms) == 3
    for module in prepared.modules():
        if hasattr(module, "disable_observer"):
            module.disable_observer()
    with torch.no_grad():
        gap = torch.cat([(model(v) - prepared(v)).abs().sum(dim=1) for v in x.split(1)]).double()
    certified = ~report.saturated
    assert certified.sum() >= 20 and torch.isinf(report.bound[report.saturated]).all()
    assert (gap[certified] <= report.bound[certified]).all()


@pytest.mark.parametrize("backend", ["torchao-x86", "inc-static-per-channel"])
def test_derivative_free_ascent_on_the_gap_stays_below_the_bound(float_model, backend):
    """SPSA ascent on the measured gap of the real converted graph (no gradient through its
    rounding), from the 4 certified digits with the largest gap, in the box of intensities that
    the backend's input grid covers (INC's ends at 0.966): every certified iterate's gap is at
    most its bound, and the ascent does raise the gap."""
    model, x_train, x_all = float_model
    deployed = DEPLOY[backend](model, x_train)
    x = x_all[:200]
    report = pm.deployment_report(model, deployed, x)
    with torch.no_grad():
        gap = torch.cat([(model(v) - deployed(v)).abs().sum(dim=1) for v in x.split(1)])
    starts = x[gap.double().masked_fill(report.saturated, -1).argsort(descending=True)[:4]]
    iterates, gaps = gap_search(model, deployed, starts, steps=25, box=(0.0, 0.95))
    searched = pm.deployment_report(model, deployed, iterates)
    certified = ~searched.saturated
    assert certified.sum() > 4 and float(gaps[certified].max()) > float(gaps[::26].max())
    assert (gaps[certified] <= searched.bound[certified]).all()


def test_prepare_pt2e_graph_with_torchao_observers_is_the_float_function(float_model):
    """torchao's observers (its own copies of torch.ao's, recognised by name) are the identity:
    a calibrated prepare_pt2e graph (of a model without BatchNorm, which prepare_pt2e folds)
    has the float model's path-norm and no point, and its observers' statistics stay as they
    were."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    _, x_train, _ = float_model
    torch.manual_seed(0)
    model = _NoBatchNorm().eval()
    exported = torch.export.export(model, (x_train[:1],)).module()
    prepared = prepare_pt2e(torch.export.export(model, (x_train[:1],)).module(), x86())
    _calibrated(prepared, x_train)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    assert pm.path_norm(prepared, x_train[:1]) == pm.path_norm(exported, x_train[:1])
    assert pm.downstream_masses(prepared, x_train[:1]) == {}
    after = prepared.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
