"""Static int8 configs of Intel Neural Compressor 3.10 with layers in fp16/bf16 (issue 22 item 4),
against real INC on the shipped digits CNN: the casts of the converted graph are rounding points
of the deployed certificate, and the layer computing in half precision adds its rounding."""
import math
import warnings

import pytest
import torch

import pathmetric as pm
from pathmetric.app.digits import load_digits_tensors, pretrained

pytest.importorskip("neural_compressor.torch.quantization",
                    reason="the inc extra (neural-compressor-pt) is not installed")
from neural_compressor.torch.quantization import INT8StaticQuantConfig  # noqa: E402

from pathmetric.adapters.neural_compressor import (  # noqa: E402
    path_metric_sampler,
    quantization_bound,
    simulate_weights,
    static_deployed,
)

FP16 = torch.finfo(torch.float16)
U, ETA = FP16.eps / 2, FP16.smallest_normal * FP16.eps / 2


def config(**layers):
    """W8A8 with the named layers in ``dtype`` (``"fp16"``, ``"bf16"``, ``"fp32"``)."""
    c = INT8StaticQuantConfig()
    for name, dtype in layers.items():
        c.set_local(name, INT8StaticQuantConfig(w_dtype=dtype, act_dtype=dtype))
    return c


@pytest.fixture(scope="module")
def data():
    return load_digits_tensors(0)


@pytest.fixture(scope="module")
def model(data):
    return pretrained(data).eval()


@pytest.fixture(scope="module")
def calibration(data):
    return data[0][:64]


@pytest.fixture(scope="module")
def half(model, calibration):
    return static_deployed(model, config(fc1="fp16"), calibration)


def _gap(model, deployed, x):
    with torch.no_grad():
        return (model(x) - deployed(x)).abs().sum(dim=1).double()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_certified_digit_is_within_its_bound(model, calibration, data, dtype):
    """256 training digits past the calibration ones (the calibration distribution)."""
    deployed = static_deployed(model, config(fc1=dtype), calibration)
    x = data[0][64:320]
    report = pm.deployment_report(model, deployed, x)
    certified = ~report.saturated
    assert int(certified.sum()) >= 200
    assert bool((_gap(model, deployed, x)[certified] <= report.bound[certified]).all())
    assert bool((report.rounding_term[certified] > 0).all()) and report.rounding_share > 0
    assert "half-precision" in report.arithmetic
    # INC 3.10 runs its bf16 layers in float16 (its bf16 rewrite patterns are the fp16 ones):
    # the certificate reads the casts the graph does
    assert sorted(report.rounding_terms) == ["0:dequantize to float16",
                                             "1:aten.linear.default in float16"]


def _half_linear(deployed, x):
    """``(z, z', W', b')``: the input of the cast before the half-precision linear, and the
    linear's arguments, from a run of the converted graph (torch.fx's own interpreter)."""
    linear = next(n for n in deployed.graph.nodes if n.target == torch.ops.aten.linear.default
                  and n.args[0].target == torch.ops.aten.to.dtype)
    seen = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in (linear.args[0].args[0], *linear.args):
                seen[n] = out
            return out
    with torch.no_grad():
        Recorder(deployed).run(x)
    return [seen[n].double() for n in (linear.args[0].args[0], *linear.args)]


def test_the_rounding_terms_are_those_of_the_values_the_graph_uses(model, half, data):
    """The cast of fc1's input, ``sum_j (u |z_j| + eta) G_j``, and fc1 computing in float16,
    ``sum_i (gamma_66 S_i + (1 + gamma_66) 66 eta) G_i``, ``gamma_66 = (1 + u)^66 - 1`` (64
    products, the bias, the final rounding; ``S = |W'| |z'| + |b'|``), with ``G`` from the
    dequantized fc2 after the ReLU: recomputed from the graph's own values; the bound counts
    both (it fails if either term is dropped)."""
    x = data[2][:32]
    report = pm.deployment_report(model, half, x)
    z, z_half, weight, bias = _half_linear(half, x)
    after = list(pm.downstream_masses(half, x).values())[-1].reshape(1, -1).double()  # fc2's input
    n = weight.shape[1] + 2
    gamma = (1 + U) ** n - 1
    cast = ((U * z.abs() + ETA) * (after @ weight.abs())).sum(dim=1)
    s = z_half.abs() @ weight.abs().T + bias.abs()
    layer = ((gamma * s + (1 + gamma) * n * ETA) * after).sum(dim=1)
    terms = report.rounding_terms
    assert terms["0:dequantize to float16"] == pytest.approx(cast, rel=1e-9)
    assert terms["1:aten.linear.default in float16"] == pytest.approx(layer, rel=1e-9)
    assert bool((cast > 0).all()) and bool((layer > cast).all())
    sup = x.reshape(len(x), -1).abs().amax(dim=1).double().clamp(min=1)
    without = sup * report.weight_term + report.activation_term
    certified = ~report.saturated
    assert bool((report.bound[certified] >= without[certified] + cast[certified]
                 + layer[certified]).all())
    assert report.bound[certified] == pytest.approx((without + cast + layer)[certified],
                                                    rel=1e-9)
    assert torch.equal(pm.output_bound(model, half, x), report.bound)


def test_the_cast_weights_are_a_weight_change(model, half, calibration, data):
    """fc1's weight and bias cast to float16 move the weight term above the config that keeps
    fc1 in float32; ``quantization_bound`` reads them off the converted graph (INC runs bf16
    layers in float16: the same bound), and ``simulate_weights``, which cannot tell what INC's
    rewriter matches, refuses."""
    x = data[2][:8]
    kept = pm.deployment_report(model, static_deployed(model, config(fc1="fp32"), calibration), x)
    report = pm.deployment_report(model, half, x)
    assert report.weight_term > kept.weight_term
    bound = quantization_bound(model, calibration, config(fc1="fp16"))
    assert bound == pytest.approx(report.weight_term, rel=1e-9)
    assert quantization_bound(model, calibration, config(fc1="bf16")) == pytest.approx(bound,
                                                                                    rel=1e-9)
    with pytest.raises(ValueError, match=r"\['fc1'\] run in fp16/bf16"):
        simulate_weights(model, config(fc1="fp16"))


def test_an_activation_past_the_float16_range_saturates(model, calibration, data):
    """With conv1 and conv2 in float32, fc1's input is cast to float16 unquantized: digits
    scaled by 1e5 pass 65504 there, and every sample is uncertified, counted at the cast."""
    deployed = static_deployed(model, config(conv1="fp32", conv2="fp32", fc1="fp16"),
                               calibration)
    x = data[2][:8]
    report = pm.deployment_report(model, deployed, x)
    assert report.saturated_count == 0 and bool(torch.isfinite(report.bound).all())
    scaled = pm.deployment_report(model, deployed, x * 1e5)
    cast = "0:aten.flatten.using_ints to float16"
    assert float(_half_linear(deployed, x * 1e5)[0].abs().amax()) > FP16.max
    assert scaled.saturated_count == len(x) and scaled.saturated_points[cast] == len(x)
    assert bool(torch.isinf(scaled.bound).all())


def test_the_sampler_ranks_half_precision_configs_by_their_full_certificate(model, calibration):
    """No config is left uncertified: each is ranked by ``max(s, 1) * weight term +
    activation term + the largest rounding term over the calibration digits``."""
    configs = [config(fc1="fp16"), config(), config(fc1="fp32"), config(fc1="bf16", fc2="fp16")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = path_metric_sampler(model, calibration)(configs)
    assert not [w for w in caught if "no certificate" in str(w.message)]
    sup = max(1.0, float(calibration.abs().max()))
    expected = []
    for report in sampler.reports:
        rounding = float(report.rounding_term[~report.saturated].max())
        expected.append(sup * report.weight_term + report.activation_term + rounding)
    assert sampler.bounds == pytest.approx(expected, rel=1e-9)
    assert [math.log(b) for b in sampler.bounds] == pytest.approx(sampler.log_bounds, rel=1e-9)
    assert list(sampler) == sorted(range(len(configs)), key=expected.__getitem__)
    assert sampler.reports[1].rounding_share == 0 and sampler.reports[0].rounding_share > 0
