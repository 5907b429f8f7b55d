"""W/A plans (issue 22 item 5): activation bit-widths in ``pm.layer_sensitivity``,
``pm.mixed_precision_plan`` and ``pm.certify_plan``, certified as a whole by
``pm.deployment_report`` of the model the plan produces, on the shipped digits CNN (BatchNorm
after both convs) against measured gaps on the 1,797 digits, 1,000 random inputs and along a
gradient-ascent search."""
import pytest
import torch
import torch.nn.functional as F
from conftest import model_state, same_state
from torch import nn

import pathmetric as pm
from pathmetric.app import digits

LAYERS = ("conv1", "conv2", "fc1", "fc2")


@pytest.fixture(scope="module")
def data():
    x_train, y_train, x_test, y_test = digits.load_digits_tensors()
    model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
    return model, x_train[:256], torch.cat([x_train, x_test]), y_test, x_test


class HandDeployed(nn.Module):
    """The digits CNN written out with its weights replaced by ``weights`` and an explicit
    ``torch.fake_quantize_per_tensor_affine`` on the input of every layer of ``grids``: the model
    a plan describes, built without the plan's own code."""

    def __init__(self, model, weights, grids):
        super().__init__()
        self.model, self.grids = model, grids
        for name, value in weights.items():
            layer, _, role = name.rpartition(".")
            getattr(self.model, layer).register_parameter(role, nn.Parameter(value.clone()))

    def q(self, layer, x):
        grid = self.grids.get(layer)
        if grid is None:
            return x
        return torch.fake_quantize_per_tensor_affine(x, grid.scale, grid.zero_point,
                                                     grid.quant_min, grid.quant_max)

    def forward(self, x):
        m = self.model
        x = F.max_pool2d(F.relu(m.bn1(m.conv1(self.q("conv1", x)))), 2)
        x = F.max_pool2d(F.relu(m.bn2(m.conv2(self.q("conv2", x)))), 2)
        x = F.relu(m.fc1(self.q("fc1", torch.flatten(x, 1))))
        return m.fc2(self.q("fc2", x))


def _hand(model, plan, grids=None):
    import copy
    weights = {f"{layer}.weight": pm.quantize_weights(getattr(model, layer).weight.detach(), b)
               for layer, b in plan.bits.items()}
    return HandDeployed(copy.deepcopy(model), weights, plan.act_grids if grids is None else grids)


def _gap(model, other, x):
    with torch.no_grad():
        return (model(x) - other(x)).abs().sum(dim=1).double()


def test_plan_bound_equals_the_deployment_report_of_the_model_it_produces(data):
    model, calibration, _, _, x_test = data
    before = model_state(model)
    plan = pm.mixed_precision_plan(model, calibration, bits=(4, 8), avg_bits=6,
                                   act_bits={"conv1": None, "conv2": 8, "fc1": 4, "fc2": 8})
    assert same_state(before, model_state(model))   # the user's model is untouched
    assert plan.act_bits == {"conv2": 8, "fc1": 4, "fc2": 8} and set(plan.bits) == set(LAYERS)
    hand = _hand(model, plan)
    for x in (calibration, x_test):
        report = pm.deployment_report(model, hand, x)
        assert report.weight_term == pytest.approx(plan.certified_bound, rel=1e-9)
        assert report.activation_term == pytest.approx(plan.activation_bound, rel=1e-12)
        assert list(report.activation_terms.values()) == pytest.approx(
            list(plan.activation_terms.values()), rel=1e-12)
    # the plan's own report is that of its calibration batch, its deployed model the hand one's
    assert bool((plan.report.saturated == pm.deployment_report(model, hand, calibration)
                 .saturated).all())
    assert torch.equal(plan.deployed(model, calibration)(x_test), hand(x_test))
    sup = float(calibration.abs().amax())
    assert plan.bound(sup) >= max(sup, 1.0) * plan.certified_bound + plan.activation_bound


def test_w4a8_except_a_layer_is_certified_as_a_whole(data):
    model, calibration, _, _, x_test = data
    bits = {"conv1": 8, "conv2": 4, "fc1": 4, "fc2": 8}
    plan = pm.certify_plan(model, calibration, bits, act_bits=8)
    assert plan.act_bits == dict.fromkeys(LAYERS, 8)
    report = pm.deployment_report(model, _hand(model, plan), x_test)
    assert report.weight_term == pytest.approx(plan.certified_bound, rel=1e-9)
    assert report.activation_term == pytest.approx(plan.activation_bound, rel=1e-12)
    weights_only = pm.certify_plan(model, calibration, bits)
    assert weights_only.activation_bound == 0.0 and weights_only.report is None
    assert weights_only.certified_bound == pytest.approx(plan.certified_bound, rel=1e-12)
    # activations at 4 bits cost more than at 8, and a wider plan more than the weights alone
    assert pm.certify_plan(model, calibration, bits, act_bits=4).activation_bound > \
        plan.activation_bound > 0.0


@pytest.mark.parametrize("act_bits", [8, 4])
def test_plan_gap_stays_below_the_bound_on_digits_and_random_inputs(data, act_bits):
    model, calibration, x_digits, _, _ = data
    plan = pm.mixed_precision_plan(model, calibration, bits=(4, 8), avg_bits=6,
                                   act_bits=act_bits)
    deployed = plan.deployed(model, calibration)
    random = torch.rand((1000,) + tuple(x_digits.shape[1:]),
                        generator=torch.Generator().manual_seed(0))
    x = torch.cat([x_digits, random])
    report = pm.deployment_report(model, deployed, x)
    gap, certified = _gap(model, deployed, x), ~report.saturated
    assert int(certified[:len(x_digits)].sum()) >= 0.95 * len(x_digits)
    assert bool((gap[certified] <= report.bound[certified]).all())
    assert bool(torch.isinf(report.bound[report.saturated]).all())
    assert bool(torch.isfinite(report.bound[certified]).all())
    assert report.activation_term == pytest.approx(plan.activation_bound, rel=1e-12)


def test_gradient_ascent_on_the_gap_stays_below_the_plan_bound(data):
    model, calibration, x_digits, _, _ = data
    plan = pm.mixed_precision_plan(model, calibration, bits=(4, 8), avg_bits=5, act_bits=8)
    deployed = plan.deployed(model, calibration)
    x, visited = x_digits[:48].clone(), []
    for step in range(20):   # projected sign-gradient ascent in the digits' box [0, 1]
        x.requires_grad_(True)
        gap = (model(x) - deployed(x)).abs().sum()
        (grad,) = torch.autograd.grad(gap, x)
        x = (x.detach() + 0.05 * (1 - step / 20) * grad.sign()).clamp(0.0, 1.0)
        visited.append(x)
    x = torch.cat(visited)
    report = pm.deployment_report(model, deployed, x)
    gap, certified = _gap(model, deployed, x), ~report.saturated
    assert int(certified.sum()) > 0
    assert bool((gap[certified] <= report.bound[certified]).all())
    assert float(gap.max()) > float(_gap(model, deployed, x_digits[:48]).max())   # it ascended


def test_saturating_samples_are_reported_not_certified(data):
    model, calibration, _, _, x_test = data
    plan = pm.certify_plan(model, calibration, dict.fromkeys(LAYERS, 8), act_bits=8)
    deployed = plan.deployed(model, calibration)
    x = torch.cat([x_test[:20], 3.0 * x_test[:20]])   # beyond the calibrated input range
    report = pm.deployment_report(model, deployed, x)
    assert bool(report.saturated[20:].all()) and bool(torch.isinf(report.bound[20:]).all())
    assert report.saturated_points["0:input"] >= 20
    assert plan.saturated_count == plan.report.saturated_count < len(calibration)
    assert "calibration samples saturate a point" in str(plan)


def test_activation_sensitivity_is_the_term_of_each_point_alone(data):
    model, calibration, _, _, _ = data
    sens = pm.layer_sensitivity(model, calibration, bits=(4, 8), act_bits=(4, 8))
    assert set(sens) == {(layer, b) for layer in LAYERS for b in (4, 8)}
    assert set(sens.activations) == set(sens)
    assert pm.layer_sensitivity(model, calibration, bits=(4,)).activations == {}
    ranges = pm.quantize.layer_input_ranges(model, calibration, LAYERS)
    plan = pm.certify_plan(model, calibration, {})
    for layer in ("conv1", "fc1"):
        for a in (4, 8):
            grids = {layer: pm.activation_grid(*ranges[layer], a)}
            report = pm.deployment_report(model, _hand(model, plan, grids), calibration)
            assert report.weight_term == 0.0
            assert sens.activations[layer, a] == pytest.approx(report.activation_term,
                                                               rel=1e-12)
        assert sens.activations[layer, 4] > sens.activations[layer, 8] > 0.0
    assert "layer input (activation term)" in str(sens)


def test_activation_grid_is_the_min_max_observers():
    observer = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    values = torch.tensor([-0.37, 0.0, 2.9, 5.31])
    observer(values)
    scale, zero_point = observer.calculate_qparams()
    grid = pm.activation_grid(float(values.min()), float(values.max()), 8)
    assert grid.scale == pytest.approx(float(scale), rel=1e-6)
    assert grid.zero_point == int(zero_point) and (grid.quant_min, grid.quant_max) == (0, 255)
    assert pm.activation_grid(0.0, 6.0, 4) == pm.ActivationGrid(
        float(torch.tensor(6.0 / 15, dtype=torch.float32)), 0, 0, 15)


def test_bad_activation_bits_get_clear_errors(data):
    model, calibration, _, _, _ = data
    with pytest.raises(KeyError, match="unknown layers"):
        pm.mixed_precision_plan(model, calibration, bits=(4, 8), act_bits={"bn1": 8})
    with pytest.raises(ValueError, match="activation bits of 'fc1' must be between 2 and 16"):
        pm.certify_plan(model, calibration, {"fc1": 8}, act_bits={"fc1": 1})
    with pytest.raises(ValueError, match="quantizes activations itself"):
        plan = pm.certify_plan(model, calibration, {"fc1": 8}, act_bits=8)
        pm.layer_sensitivity(plan.deployed(model, calibration), calibration, bits=(8,),
                             act_bits=(8,))


def test_quant_plan_command_with_act_bits_is_the_library_plan(data, capsys, tmp_path):
    import json

    from pathmetric.app.cli import main
    model, calibration, _, _, _ = data
    torch.save(calibration, tmp_path / "calibration.pt")
    argv = ["quant-plan", "digits", "--avg-bits", "6", "--bits", "4,8", "--act-bits", "8",
            "--calibration", str(tmp_path / "calibration.pt"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    plan = pm.mixed_precision_plan(model, calibration, bits=(4, 8), avg_bits=6, act_bits=8)
    assert out["bits"] == plan.bits and out["act_bits"] == dict.fromkeys(LAYERS, 8)
    assert out["activation_bound"] == pytest.approx(plan.activation_bound, rel=1e-12)
    assert out["saturated"] == plan.saturated_count
    assert out["calibration_samples"] == len(calibration)
    assert out["act_grids"]["fc1"] == plan.act_grids["fc1"]._asdict()
    assert main(["quant-plan", "torchvision:resnet18", "--avg-bits", "4", "--act-bits", "8"]) == 2
    assert "--act-bits needs --calibration" in capsys.readouterr().err


def test_residual_plan_whose_points_share_a_tensor_holds():
    """torchvision resnet18 at 32x32 (random weights): layer2.0's conv1 and its downsample conv
    read the same tensor, so the plan has one point per reader; the bound holds on the
    calibration batch and on 200 fresh inputs, and equals the deployment report's."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    calibration = torch.randn(32, 3, 32, 32)
    shared = {"layer2.0.conv1": 4, "layer2.0.downsample.0": 4, "fc": 8}
    plan = pm.certify_plan(model, calibration, shared, act_bits=8)
    assert list(plan.activation_terms) == ["layer2.0.conv1", "layer2.0.downsample.0", "fc"]
    deployed = plan.deployed(model, calibration)
    x = torch.cat([calibration, 0.5 * torch.randn(200, 3, 32, 32)])
    report = pm.deployment_report(model, deployed, x)
    assert report.activation_term == pytest.approx(plan.activation_bound, rel=1e-12)
    assert report.weight_term == pytest.approx(plan.certified_bound, rel=1e-9)
    gap, certified = _gap(model, deployed, x), ~report.saturated
    assert int(certified.sum()) >= 200
    assert bool((gap[certified] <= report.bound[certified]).all())


def test_given_activation_ranges_replace_the_calibration(data):
    """``act_ranges`` (an observer's min/max, say) sets the grids: the calibrated ranges give the
    calibrated plan; ranges twice as wide make the activation term twice as large and saturate
    no more test digits, and the bound still holds."""
    model, calibration, _, _, x_test = data
    bits = dict.fromkeys(LAYERS, 8)
    calibrated = pm.certify_plan(model, calibration, bits, act_bits=8)
    ranges = pm.quantize.layer_input_ranges(model, calibration, LAYERS)
    same = pm.certify_plan(model, calibration, bits, act_bits=8, act_ranges=ranges)
    assert same.act_grids == calibrated.act_grids
    assert same.activation_bound == calibrated.activation_bound
    wide = pm.certify_plan(model, calibration, bits, act_bits=8,
                           act_ranges={k: (2 * lo, 2 * hi) for k, (lo, hi) in ranges.items()})
    assert wide.activation_bound == pytest.approx(2 * calibrated.activation_bound, rel=1e-3)
    narrow_report = pm.deployment_report(model, calibrated.deployed(model, calibration), x_test)
    deployed = wide.deployed(model, calibration)
    report = pm.deployment_report(model, deployed, x_test)
    assert report.saturated_count <= narrow_report.saturated_count
    certified = ~report.saturated
    assert bool((_gap(model, deployed, x_test)[certified] <= report.bound[certified]).all())
    given = pm.layer_sensitivity(model, calibration, bits=(8,), act_bits=(8,), act_ranges=ranges)
    assert given.activations == pm.layer_sensitivity(model, calibration, bits=(8,),
                                                     act_bits=(8,)).activations
    with pytest.raises(KeyError, match=r"no range for the activation points of \['fc2'\]"):
        pm.certify_plan(model, calibration, bits, act_bits=8,
                        act_ranges={k: ranges[k] for k in ("conv1", "conv2", "fc1")})


def test_observer_ranges_of_a_torchao_prepared_model_set_the_plan(data):
    """The ranges torchao's X86 observers record at the layer inputs of the prepared digits CNN
    are the float model's layer-input ranges on the same digits, and give a plan that holds."""
    pytest.importorskip("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    model, calibration, _, _, x_test = data
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (calibration[:1],)).module(), quantizer)
    with pytest.raises(ValueError, match="has recorded nothing"):
        pm.observer_ranges(prepared)
    with torch.no_grad():
        for i in range(64):
            prepared(calibration[i:i + 1])
    ranges = pm.observer_ranges(prepared)
    mine = pm.quantize.layer_input_ranges(model, calibration[:64], LAYERS)
    assert list(ranges) == list(LAYERS)
    for layer in LAYERS:
        assert ranges[layer] == pytest.approx(mine[layer], rel=1e-5, abs=1e-6)
    plan = pm.certify_plan(model, calibration, dict.fromkeys(LAYERS, 8), act_bits=8,
                           act_ranges=ranges)
    deployed = plan.deployed(model, calibration)
    report = pm.deployment_report(model, deployed, x_test)
    certified = ~report.saturated
    assert bool((_gap(model, deployed, x_test)[certified] <= report.bound[certified]).all())
    with pytest.raises(TypeError, match="prepared torch.fx.GraphModule"):
        pm.observer_ranges(model)
