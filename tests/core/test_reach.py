"""Issue 15: ReLU6 networks (MobileNetV2 and friends), softmax heads and the other exactly
representable ops, through every public function and the three adapters."""
import copy
import math

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
import torch_pruning as tp
import torchvision
from bruteforce import lq_norm_q, paths, to_dag
from torch import nn

import pathmetric as pm
from pathmetric import reports
from pathmetric.core.ir import Param
from pathmetric.core.support import capture

X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def mobilenet_v2(width_mult=1.0):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10,
                                            width_mult=width_mult).eval()
    with torch.no_grad():   # non-trivial running statistics, some negative BatchNorm scales
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.4)
                m.bias.normal_(0, 0.2)
    return model


class QuickstartNet(nn.Module):
    """NNI's pruning quickstart model (LeNet-style, ends in log_softmax)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, 1)
        self.conv2 = nn.Conv2d(6, 16, 5, 1)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


# ------------------------------------------------------------------ zoo models are supported

ZOO = {
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "mnasnet0_5": lambda: torchvision.models.mnasnet0_5(weights=None),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(weights=None),
    "timm_mobilenetv2_100": lambda: timm.create_model("mobilenetv2_100", pretrained=False),
    "smp_unet_mobilenet_v2": lambda: smp.Unet("mobilenet_v2", encoder_weights=None, classes=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_are_supported_and_certified(name):
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    report = pm.check_support(model, X32)
    assert report.ok, str(report)
    assert math.isfinite(pm.log_path_norm(model, X32))
    bound = pm.quantization_bound(model, X32, bits=8)
    assert 0 < bound < math.inf
    scores = pm.weight_scores(model, X32)
    assert all(torch.isfinite(s).all() for s in scores.values())


@pytest.mark.slow
def test_mobilenet_v2_public_functions():
    model = mobilenet_v2()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 3
    facts = reports.graph_facts(model, X32)
    # 17 blocks, each conv-BN-ReLU6 (ReLU6: two neuron layers) ...: depth counts the ReLU6 layers
    assert facts.depth >= 3 * 35 and facts.max_pools_on_path == 0
    sensitivity = pm.layer_sensitivity(model, X32, bits=(4, 8))
    assert all(0 < v < math.inf for v in sensitivity.values())
    plan = pm.mixed_precision_plan(model, X32, bits=(4, 8), avg_bits=6)
    assert 0 < plan.certified_bound < math.inf
    result = pm.prune(model, 0.3, X32, structured=True)
    with torch.no_grad():
        gap = (model(x) - result.model(x)).abs().sum(dim=1)
    assert (gap <= pm.output_bound(model, result.model, x)).all()
    generalization = reports.generalization_bound(model, X32, n=50_000)
    assert math.isfinite(generalization["log_bound"])


@pytest.mark.slow
def test_mobilenet_v2_random_rescale_keeps_function_and_scores():
    model = mobilenet_v2()
    rescaled = pm.random_rescale(model, X32, seed=3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        out, out2 = model(x), rescaled(x)
    assert (out - out2).abs().max() <= 1e-4 * out.abs().max()
    changed = [n for n, p in model.named_parameters()
               if not torch.equal(p, dict(rescaled.named_parameters())[n])]
    assert changed   # something was rescaled (the linear bottlenecks feed convolutions directly)
    # never across a ReLU6: the BatchNorms in front of one keep their parameters
    graph = capture(model, X32)
    users = graph.users()
    guarded = 0
    for index, node in enumerate(graph.nodes):
        if node.rule == "batch_norm" and any(graph.nodes[j].rule == "hardtanh" for j in users[index]):
            names = [r.name for r in list(node.args) + list(node.kwargs.values())
                     if isinstance(r, Param)]
            assert names and not set(names) & set(changed)
            guarded += 1
    assert guarded == 35
    before, after = pm.weight_scores(model, X32), pm.weight_scores(rescaled, X32)
    for name in before:
        assert torch.allclose(before[name], after[name], rtol=1e-9, atol=1e-12 * float(before[name].abs().max()))


def test_treating_relu6_as_relu_would_be_wrong():
    """The engine's ReLU6 path-norm is the brute-force one of relu(v) - relu(v - 6), not ReLU's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 2)).double().eval()
    relu = nn.Sequential(model[0], nn.ReLU(), model[2]).eval()
    x = torch.zeros(1, 3, dtype=torch.float64)
    # by hand: the lifted ReLU6 is 2 v + 6 per hidden neuron
    w1, b1, w2, b2 = (p.detach().abs() for p in model.parameters())
    hidden = 2 * (w1.sum(1) + b1) + 6
    expected = float((w2 @ hidden).sum() + b2.sum())
    assert pm.path_norm(model, x) == pytest.approx(expected, rel=1e-12)
    assert pm.path_norm(model, x) > pm.path_norm(relu, x)


# ------------------------------------------------------------------ adapters

@pytest.mark.slow
def test_torch_pruning_prunes_mobilenet_v2():
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step
    model = mobilenet_v2()
    shape = model(X32).shape
    convs = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    original = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(model, X32, importance=PathMetricImportance(X32),
                                  pruning_ratio=0.4, ignored_layers=[model.classifier[-1]])
    bound = certified_step(pruner, X32)   # depthwise convolutions zeroed row by row
    assert model(X32).shape == shape
    kept = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert 0.5 * convs <= kept <= 0.7 * convs
    assert 0 < bound < math.inf
    for seed in range(3):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        change = (original(x) - model(x)).abs().sum(1).max().item()
        assert change <= max(x.abs().max().item(), 1.0) * bound
    assert math.isfinite(pm.log_path_norm(model, X32))


@pytest.mark.slow
def test_nni_prunes_mobilenet_v2_and_the_quickstart_model(tmp_path):
    from pathmetric.adapters import nni as pnni
    model = mobilenet_v2()
    config = {"pruner": "path_metric", "speedup": True,
              "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.4,
                               "exclude_op_names": ["features.0.0"]}]}
    shape = model(X32).shape
    result = pnni.prune_from_config(model, config, X32)
    assert result.speedup and result.params_after < 0.85 * result.params_before
    assert model.eval()(X32).shape == shape
    assert 0 < result.certified_bound < math.inf

    torch.manual_seed(0)
    net = QuickstartNet().eval()
    mnist = torch.randn(1, 1, 28, 28)
    quick = pnni.prune_from_config(net, {"pruner": "path_metric", "speedup": True, "config_list": [
        {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "exclude_op_names": ["fc3"]}]},
        mnist)
    assert quick.params_after < quick.params_before and net(mnist).shape == (1, 10)
    assert 0 < quick.certified_bound < math.inf


@pytest.mark.slow
def test_neural_compressor_certifies_mobilenet_v2():
    from neural_compressor.torch.quantization import RTNConfig

    from pathmetric.adapters import neural_compressor as pinc
    model = mobilenet_v2()
    bound = pinc.quantization_bound(model, X32, RTNConfig(bits=4))
    assert 0 < bound < math.inf


def test_quickstart_model_reports_its_head():
    net = QuickstartNet().eval()
    report = pm.check_support(net, torch.zeros(1, 1, 28, 28))
    assert report.ok and report.head == "log_softmax" and "logits" in report.notes[0]
    assert pm.head_factor(net, torch.zeros(1, 1, 28, 28)) == 11


# ------------------------------------------------------------------ item 4: every other op

def _norm_of(model, x):
    return pm.path_norm(model, x)


class Seq(nn.Module):
    def __init__(self, fn, c=2, length=4):
        super().__init__()
        self.conv = nn.Conv1d(c, c, 3, padding=1)   # border entries differ from inner ones
        self.fn = fn
        self.fc = nn.Linear(c * length, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.fn(self.conv(x)), 1))


REARRANGED = [
    ("ravel", lambda x: x.ravel().reshape(1, 2, 4)),
    ("swapaxes", lambda x: x.swapaxes(1, 2).swapaxes(2, 1)),
    ("moveaxis", lambda x: torch.moveaxis(torch.moveaxis(x, 1, 2), 2, 1)),
    (".T", lambda x: x.flatten(1).T.T.reshape(-1, 2, 4)),
    ("unsqueeze_", lambda x: x.clone().unsqueeze_(0).squeeze_(0)),
    ("index_select", lambda x: torch.index_select(x, 2, torch.tensor([0, 1, 2, 3]))),
    ("hstack", lambda x: torch.hstack([x[:, :1], x[:, 1:]])),
    (".to/.type", lambda x: x.to(torch.float64).type(torch.float64)),
]


@pytest.mark.parametrize("label,fn", REARRANGED, ids=[r[0] for r in REARRANGED])
def test_reshapes_and_casts_equal_the_model_without_them(label, fn):
    torch.manual_seed(0)
    model = Seq(fn).double().eval()
    plain = Seq(lambda x: x).double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    assert pm.check_support(model, x).ok
    assert pm.path_norm(model, x) == pytest.approx(pm.path_norm(plain, x), rel=1e-12)


def test_reshape_cast_test_would_catch_a_dropped_entry():
    model = Seq(lambda x: torch.index_select(x, 2, torch.tensor([0, 0, 2, 3]))).double().eval()
    plain = Seq(lambda x: x).double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    assert pm.path_norm(model, x) != pytest.approx(pm.path_norm(plain, x), rel=1e-6)


def test_layer_scale_and_constant_terms_against_enumeration():
    """``x + c``, ``x + 0.0``, ``sum([a, b])``, ``x + b`` (a parameter), ``x @ W``,
    ``F.pad(value=c)``: the oracle's explicit neurons (tests/bruteforce.py)."""
    import bruteforce as bf
    torch.manual_seed(0)
    specs = [("conv", 2, 1, 1, 0, 1, 1, True), ("const", 0.5), ("const", 0.0), ("bias",),
             ("matmul",), ("pad", -1.5), ("relu6",)]
    model = bf.build(specs, 2, 4, 2, torch.Generator().manual_seed(0))
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    phi = paths(to_dag(model, 2, 4))
    for q in (1.0, 2.0):
        assert pm.path_norm(model, x, q=q) == pytest.approx(lq_norm_q(phi, q) ** (1 / q), rel=1e-12)


class TwoInputSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return sum([self.a(x), self.b(x)])


def test_python_sum_of_activations_is_supported():
    torch.manual_seed(0)
    model = TwoInputSum().double().eval()
    x = torch.zeros(1, 3, dtype=torch.float64)
    w = [p.detach().abs() for p in model.parameters()]
    expected = float(w[0].sum() + w[1].sum() + w[2].sum() + w[3].sum())
    assert pm.path_norm(model, x) == pytest.approx(expected, rel=1e-12)


def test_minus_inf_padding_must_feed_a_max_pool():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return F.pad(self.conv(x), (1, 1, 1, 1), value=-math.inf).clamp(min=-5).sum((2, 3))

    report = pm.check_support(Bad(), X32)
    assert not report.ok and "-inf padding" in report.unsupported[0][2]


def test_max_indices_used_as_values_are_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            values, indices = torch.max(self.conv(x), 1)
            return values.sum((1, 2)) + indices.sum((1, 2))

    assert not pm.check_support(Bad(), X32).ok


def test_instance_norm_with_running_stats_is_a_frozen_affine_map():
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
        norm.weight.normal_()
        norm.bias.normal_()
    bn.load_state_dict(norm.state_dict(), strict=False)
    a = nn.Sequential(nn.Conv2d(3, 3, 3), norm, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    a(X32)
    b = nn.Sequential(a[0], bn, nn.ReLU(), nn.Flatten(), a[4]).eval()
    assert pm.path_norm(a, X32) == pytest.approx(pm.path_norm(b, X32), rel=1e-12)
    assert not pm.check_support(nn.Sequential(nn.Conv2d(3, 3, 1), nn.InstanceNorm2d(3)), X32).ok


def test_rrelu_threshold_amax_and_max_pool_alias():
    import bruteforce as bf
    specs = [("conv", 2, 1, 1, 0, 1, 1, True), ("rrelu", 0.1, 0.3), ("threshold",),
             ("same_maxpool",), ("amax_len",)]
    model = bf.build(specs, 2, 4, 2, torch.Generator().manual_seed(1))
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    phi = paths(to_dag(model, 2, 4))
    assert pm.path_norm(model, x) == pytest.approx(lq_norm_q(phi, 1.0), rel=1e-12)


@pytest.mark.parametrize("mode,antialias,scale", [("bicubic", False, 2.0), ("bicubic", True, 0.5),
                                                 ("bilinear", True, 0.5)])
def test_bicubic_and_antialiased_interpolation_against_their_coefficients(mode, antialias, scale):
    """2-D resampling: the engine's path-norm equals the one computed from the Jacobian of the
    op (the explicit coefficient matrix, negative bicubic ones included)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 1).double()
    fc = nn.Linear(int(6 * scale) ** 2, 1).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = conv, fc

        def forward(self, x):
            y = F.interpolate(self.conv(x), scale_factor=scale, mode=mode, antialias=antialias)
            return self.fc(torch.flatten(y, 1))

    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    eye = torch.eye(36, dtype=torch.float64).reshape(36, 1, 6, 6)
    jac = F.interpolate(eye, scale_factor=scale, mode=mode, antialias=antialias).reshape(36, -1).T
    w, b = conv.weight.abs().item(), conv.bias.abs().item()
    hidden = jac.abs().sum(1) * w + jac.abs().sum(1) * b      # paths from the input and conv bias
    expected = float(fc.weight.detach().abs() @ hidden) + float(fc.bias.abs())
    for q in (1.0,):
        assert pm.path_norm(Net().eval(), x, q=q) == pytest.approx(expected, rel=1e-12)
