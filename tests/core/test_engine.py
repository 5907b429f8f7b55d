"""Engine behaviour on zoo models and edge cases: support, numerics, invariance, errors, purity."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import model_state, same_state
from torch import nn

import pathmetric as pm
from pathmetric.core import rules
from pathmetric.core import support as capture_module
from pathmetric.core.algebras import NormLifting, PairLifting
from pathmetric.core.interpreter import Scratch, named_tensors

X64 = torch.zeros(1, 3, 64, 64)


def zoo(name):
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def unet():
    import segmentation_models_pytorch as smp
    return smp.Unet("resnet18", encoder_weights=None, classes=2).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn", "densenet121", "alexnet",
                                  "squeezenet1_1", "googlenet"])
def test_zoo_models_have_finite_path_norms(name):
    model = zoo(name)
    value = pm.log_path_norm(model, X64)
    assert math.isfinite(value) and value > 0
    assert pm.path_norm(model, X64) == pytest.approx(math.exp(value), rel=1e-12)


def test_unet_and_dict_outputs():
    model = unet()
    assert math.isfinite(pm.log_path_norm(model, X64))
    seg = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                       num_classes=3, aux_loss=True).eval()
    # dict outputs {'out', 'aux'} count every tensor: the sum of both heads' path-norms
    both = pm.path_norm(seg, X64)
    seg.aux_classifier = None
    assert pm.path_norm(seg, X64) < both


@pytest.mark.slow
@pytest.mark.parametrize("name,op", [("mobilenet_v3_small", "F.hardswish"), ("efficientnet_b0", "F.silu"),
                                     ("convnext_tiny", "F.layer_norm")])
def test_unsupported_zoo_models_name_the_op(name, op):
    model = zoo(name)
    with pytest.raises(pm.UnsupportedModelError) as info:
        pm.path_norm(model, X64)
    assert op in str(info.value) and "features" in str(info.value)
    report = pm.check_support(model, X64)
    assert not report.ok and any(entry[0] == op for entry in report.unsupported)
    assert len(report.unsupported) > 1


class Wrap(nn.Module):
    def __init__(self, fn, layer=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.layer = layer
        self.fn = fn

    def forward(self, x):
        x = self.conv(x)
        return self.fn(self.layer(x) if self.layer is not None else x).sum(dim=(2, 3))


REFUSED = [
    ("Hardswish", lambda x: x, nn.Hardswish(), "F.hardswish"),
    ("Threshold(1, 0)", lambda x: x, nn.Threshold(1.0, 0.0), "F._threshold"),
    ("GELU", lambda x: x, nn.GELU(), "F.gelu"),
    ("SiLU", lambda x: x, nn.SiLU(), "F.silu"),
    ("sigmoid", torch.sigmoid, None, "torch.sigmoid"),
    ("tanh", torch.tanh, None, "torch.tanh"),
    ("softmax", lambda x: F.softmax(x, dim=1), None, "F.softmax"),
    ("LayerNorm", lambda x: x, nn.LayerNorm([4, 6, 6]), "F.layer_norm"),
    ("GroupNorm", lambda x: x, nn.GroupNorm(2, 4), "F.group_norm"),
    ("InstanceNorm", lambda x: x, nn.InstanceNorm2d(4), "F.instance_norm"),
    ("product", lambda x: x * x, None, "Tensor."),
    ("batch statistics", lambda x: x, nn.BatchNorm2d(4, track_running_stats=False), "F.batch_norm"),
    ("tensor clamp bound", lambda x: x.clamp(min=torch.zeros(1)), None, "Tensor.clamp"),
    ("clamp min > max", lambda x: x.clamp(1, 0), None, "Tensor.clamp"),
    ("hardtanh min >= max", lambda x: F.hardtanh(x, 1.0, 1.0), None, "F.hardtanh"),
    ("softmax over space", lambda x: F.softmax(x, dim=2), None, "F.softmax"),
    ("leaky slope > 1", lambda x: F.leaky_relu(x, 2.0), None, "F.leaky_relu"),
]


@pytest.mark.parametrize("label,fn,layer,op", REFUSED, ids=[r[0] for r in REFUSED])
def test_every_refused_op_raises_with_op_and_module(label, fn, layer, op):
    model = Wrap(fn, layer).eval()
    with pytest.raises(pm.UnsupportedModelError) as info:
        pm.path_norm(model, torch.zeros(1, 3, 8, 8))
    assert op in str(info.value)
    if layer is not None:
        assert "'layer'" in str(info.value)


def test_attention_is_refused():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    with pytest.raises(pm.UnsupportedModelError):
        pm.path_norm(Attn().eval(), torch.zeros(1, 3, 4))


def test_weight_computed_in_forward_is_refused():
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 2)))
    with pytest.raises(pm.UnsupportedModelError, match="computed from parameters"):
        pm.path_norm(model, torch.zeros(1, 3))


def test_thousand_layer_mlp_matches_closed_form():
    """All |w| = c, width k, no biases: ||Phi||_1 = (k c)^L, here about 1e1505."""
    depth, width, c = 1000, 2, 16.0
    layers = [nn.Linear(width, width, bias=False) for _ in range(depth - 1)]
    layers += [nn.Linear(width, 1, bias=False)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())][:-1])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            signs = torch.randint(0, 2, layer.weight.shape, generator=g) * 2 - 1
            layer.weight.copy_(signs * c)
    expected = depth * math.log(width * c)
    assert pm.log_path_norm(model, torch.zeros(1, width)) == pytest.approx(expected, rel=1e-12)
    assert pm.path_norm(model, torch.zeros(1, width)) == math.inf
    assert pm.log_path_norm(model, torch.zeros(1, width), q=2) == pytest.approx(
        depth * math.log(width * c * c) / 2, rel=1e-12)


def _manual_rescale(model):
    """Independent of pm.random_rescale: layer1.0.bn1 channels times 2^k, conv2 inputs / 2^k."""
    out = copy.deepcopy(model)
    k = torch.arange(out.layer1[0].bn1.num_features) % 5 - 2
    factors = torch.pow(2.0, k.float())
    with torch.no_grad():
        out.layer1[0].bn1.weight.mul_(factors)
        out.layer1[0].bn1.bias.mul_(factors)
        out.layer1[0].conv2.weight.div_(factors[None, :, None, None])
    return out


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_path_norm_invariant_under_rescaling(q):
    model = zoo("resnet18")
    x = torch.randn(2, 3, 64, 64)
    for rescaled in (pm.random_rescale(model, X64, seed=3), _manual_rescale(model)):
        assert torch.allclose(model(x), rescaled(x), rtol=1e-4, atol=1e-5)
        assert pm.path_norm(rescaled, X64, q=q) == pytest.approx(pm.path_norm(model, X64, q=q),
                                                                 rel=1e-12)
        assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), rescaled.parameters()))


def test_float32_mode_agrees():
    model = zoo("resnet18")
    assert pm.log_path_norm(model, X64, precision="float32") == pytest.approx(
        pm.log_path_norm(model, X64), rel=1e-4)


def test_user_model_is_left_untouched():
    model = zoo("resnet18").train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.layer1.register_forward_hook(lambda *a: None)
    other = pm.random_rescale(model, X64, seed=1)
    before = model_state(model)
    x = torch.randn(2, 3, 64, 64)
    pm.path_norm(model, x)
    pm.check_support(model, x)
    pm.path_metric(model, other, x)
    pm.output_bound(model, other, x)
    pm.quantization_bound(model, x, bits=4)
    pm.weight_scores(model, x)
    pm.channel_scores(model, x)
    pm.layer_sensitivity(model, x, bits=(4,))
    pm.prune(model, 0.5, x)
    assert same_state(before, model_state(model))
    assert model.training and model.fc.weight.dtype == torch.float32
    assert torch.equal(x, x.clone())


def test_bad_inputs_get_clear_errors():
    model = zoo("resnet18")
    with pytest.raises(pm.ModelCaptureError, match=r"shape \(1, 5, 64, 64\)"):
        pm.path_norm(model, torch.zeros(1, 5, 64, 64))
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer2.0.conv1.weight"):
        pm.path_norm(bad, X64)
    captured = copy.deepcopy(model)
    pm.path_norm(captured, X64)
    with torch.no_grad():
        captured.layer3[1].bn2.running_var[3] = float("inf")  # after capture: the cached graph
    with pytest.raises(ValueError, match="layer3.1.bn2.running_var"):
        pm.path_metric(model, captured, X64)
    with torch.no_grad():
        captured.layer3[1].bn2.running_var[3] = 1.0
        captured.layer4[0].conv2.weight[1, 2, 0, 0] = -float("inf")
    with pytest.raises(ValueError, match="layer4.0.conv2.weight"):
        pm.weight_scores(captured, X64)
    with pytest.raises(pm.UnsupportedModelError, match="empty model|no tensor"):
        pm.path_norm(nn.Sequential(), torch.zeros(1, 3))
    with pytest.raises(pm.UnsupportedModelError, match="no parameter"):
        pm.path_norm(nn.Sequential(nn.ReLU(), nn.MaxPool1d(2)), torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="example_inputs"):
        pm.path_norm(model, [1, 2, 3])


def test_capture_is_cached_and_invalidated(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    calls = []
    original = capture_module.decide
    monkeypatch.setattr(capture_module, "decide", lambda *a: calls.append(1) or original(*a))
    x = torch.zeros(1, 3)
    first = pm.path_norm(model, x)
    with torch.no_grad():
        model[0].weight.mul_(2)  # values change in place: same graph, new number
    second = pm.path_norm(model, x)
    assert len(calls) == 1  # values changed in place: no new capture, the new values are read
    assert second == pytest.approx(2 * first - _bias_mass(model), rel=1e-6)
    model[2] = nn.Linear(4, 2)  # the parameter set changes: captured again
    pm.path_norm(model, x)
    assert len(calls) == 2


def test_scratch_memory_is_reused_safely_across_calls_and_threads():
    """Lifted parameters live in scratch memory kept with the captured graph: repeated and
    concurrent calls give the same numbers bit for bit, a value changed in place is read (no
    stale lifted parameter), and no result shares memory with the scratch."""
    import threading
    model = torchvision.models.resnet18(weights=None).eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_((torch.rand_like(p) > 0.3).to(p.dtype))
    x = torch.zeros(1, 3, 32, 32)
    expected = [pm.path_norm(model, x), pm.path_metric(model, other, x),
                pm.path_norm(model, x, precision="float32")]
    graph = capture_module.capture(model, x)
    kept = graph.scratch.buffer.numel()
    assert kept > 0
    for _ in range(2):
        assert [pm.path_norm(model, x), pm.path_metric(model, other, x),
                pm.path_norm(model, x, precision="float32")] == expected
    assert graph.scratch.buffer.numel() == kept  # reused, not grown
    results, errors = [], []

    def work():
        try:
            results.append([pm.path_norm(model, x), pm.path_metric(model, other, x)])
        except Exception as exc:  # noqa: BLE001 - any failure in a thread is reported below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [expected[:2]] * 4
    with torch.no_grad():
        model.fc.weight.mul_(0.5)
    assert pm.path_norm(model, x) < expected[0]
    ev = NormLifting(graph, model, dtype=torch.float64)
    outputs, _ = ev.run()
    assert not any(graph.scratch.owns(out[0].m) for out in outputs)


def test_the_walk_frees_each_value_after_its_last_reader():
    """Both passes hold the values later nodes read (here the residual input, until the sum),
    not every value of the network: a 64-layer chain keeps the lifted memory of about one
    layer, and the result is the one computed with every value kept."""
    import weakref

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(64))

        def forward(self, x):
            skip = x = self.layers[0](x)
            for layer in self.layers[1:]:
                x = torch.relu(layer(x))
            return x + skip

    model = Chain().eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.layers[3].weight.mul_(0.5)
    x = torch.zeros(1, 16)
    graph = capture_module.capture(model, x)
    for algebra, args in ((NormLifting, (model,)),
                          (PairLifting, (named_tensors(model), named_tensors(other)))):
        made, alive = [], []

        class Watched(algebra):
            def linear(self, *args, **kwargs):
                alive.append(sum(ref() is not None for ref in made))
                out = super().linear(*args, **kwargs)
                made.extend(weakref.ref(part.m) for part in out)
                return out
        with torch.no_grad():
            outputs, _ = Watched(graph, *args).run()
        assert max(alive) <= 2 * len(outputs[0]) + 1  # the layer's input, the skip (A, D)
        whole = {index: None for index in range(len(graph.nodes))}
        with torch.no_grad():
            expected, _ = algebra(graph, *args).run(keep=whole)
        assert [float(part.m.sum()) for part in outputs[0]] == [
            float(part.m.sum()) for part in expected[0]]


@pytest.mark.parametrize("func, shape, kernel, stride, padding, dilation, groups", [
    (F.conv2d, (2, 4, 17, 13), (3, 3), 1, 1, 1, 1), (F.conv2d, (2, 4, 31, 9), (7, 7), 2, 3, 1, 1),
    (F.conv2d, (1, 4, 15, 15), (3, 3), 1, 2, 2, 2), (F.conv2d, (1, 4, 22, 10), (3, 3), 3, 0, 1, 1),
    (F.conv2d, (1, 4, 19, 12), (3, 5), (2, 1), (1, 2), 1, 1), (F.conv1d, (1, 3, 40), (3,), 2, 1, 1, 1),
    (F.conv3d, (1, 3, 9, 8, 7), (3, 3, 3), 1, 1, 1, 1)])
def test_a_float64_convolution_by_blocks_of_output_rows_is_the_convolution(
        monkeypatch, func, shape, kernel, stride, padding, dilation, groups):
    """Blocks of one output row (the padding rows made explicit at both ends): the whole
    convolution and its gradients to rounding (each entry the same sum of the same products; a
    BLAS may order a one-row block's sum otherwise, and a weight's gradient sums the blocks)."""
    from pathmetric.core.rules import linear
    monkeypatch.setattr(linear, "COLUMN_ENTRIES", 1)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(shape, dtype=torch.float64, generator=generator).requires_grad_()
    w = torch.rand((6, shape[1] // groups) + kernel, dtype=torch.float64,
                   generator=generator).requires_grad_()
    whole = func(x, w, None, stride, padding, dilation, groups)
    blocks = linear.convolve(func, x, w, stride, padding, dilation, groups)
    torch.testing.assert_close(blocks, whole, rtol=1e-14, atol=0)
    expected = torch.autograd.grad(whole.sum(), (x, w))
    for got, want in zip(torch.autograd.grad(blocks.sum(), (x, w)), expected):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_scratch_grows_by_doubling_only_up_to_what_it_keeps(monkeypatch):
    """Past ``KEEP_BYTES`` a scratch buffer is the size asked for, never twice the previous one
    (VGG's 25088 x 4096 classifier ran out of memory on the doubled pair-pass buffers)."""
    monkeypatch.setattr(Scratch, "KEEP_BYTES", 1000)
    scratch = Scratch()
    small = scratch.empty((50,), torch.float64, "cpu")            # 400 bytes
    assert scratch.buffer.numel() == 400
    scratch.empty((50,), torch.float64, "cpu")                    # grows to 2 x 400 <= 1000
    assert scratch.buffer.numel() == 800 and small.numel() == 50
    scratch.reset()
    scratch.empty((120,), torch.float64, "cpu")      # 960 bytes: 2 x 800 would pass 1000
    assert scratch.buffer.numel() == 960
    scratch.reset()
    scratch.empty((250,), torch.float64, "cpu")
    assert scratch.buffer.numel() == 2000
    scratch.empty((10,), torch.float64, "cpu")       # past KEEP_BYTES: the request, not 4000
    assert scratch.buffer.numel() == 80


def _bias_mass(model):
    """Mass of the paths that start at a bias of the 2-layer MLP (unchanged by scaling W1)."""
    with torch.no_grad():
        return float((model[2].weight.abs() @ model[0].bias.abs()).sum() + model[2].bias.abs().sum())


def test_shared_weights_are_detected():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    model = Twice()
    assert pm.path_norm(model, torch.zeros(1, 3)) > 0
    with pytest.raises(pm.UnsupportedModelError, match="more than one operation"):
        pm.weight_scores(model, torch.zeros(1, 3))


def test_functional_and_module_forms_agree():
    class Functional(nn.Module):
        def __init__(self, conv, fc):
            super().__init__()
            self.w, self.b, self.fc = conv.weight, conv.bias, fc

        def forward(self, x):
            x = F.max_pool2d(F.relu(F.conv2d(x, self.w, self.b, padding=1)), 2)
            return self.fc(x.flatten(1))

    conv, fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 5)
    modular = nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(), fc)
    x = torch.zeros(1, 3, 8, 8)
    assert pm.path_norm(Functional(conv, fc), x) == pytest.approx(pm.path_norm(modular, x), rel=1e-14)


class Fixed(nn.Module):
    """A 1x1 convolution of weight one (the parameter the path-norm needs) then a fixed op."""

    def __init__(self, channels, dims, op):
        super().__init__()
        self.conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](channels, channels, 1, bias=False)
        nn.init.dirac_(self.conv.weight)
        self.op = op

    def forward(self, x):
        return self.op(self.conv(x))


FIXED_OPS = [
    ("bilinear", 2, lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
    ("bilinear-corners", 2, lambda x: F.interpolate(x, size=(7, 4), mode="bilinear", align_corners=True)),
    ("trilinear", 3, lambda x: F.interpolate(x, scale_factor=1.5, mode="trilinear")),
    ("nearest", 2, nn.Upsample(scale_factor=2)),
    ("area", 2, lambda x: F.interpolate(x, size=(3, 4), mode="area")),
    ("avgpool-excl-ceil", 2, nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("avgpool3d-divisor", 3, nn.AvgPool3d(2, 1, divisor_override=3)),
    ("adaptive-avg", 2, nn.AdaptiveAvgPool2d((2, 3))),
    ("mean", 2, lambda x: x.mean(dim=(2, 3))),
    ("scale", 2, lambda x: -0.5 * x / 4),
    ("reflect-pad", 2, lambda x: F.pad(x, (1, 2, 0, 1), mode="reflect")),
    ("pixel-shuffle", 2, lambda x: F.pixel_shuffle(torch.cat([x, x], 1), 2)),
]


@pytest.mark.parametrize("q", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("label,dims,op", FIXED_OPS, ids=[f[0] for f in FIXED_OPS])
def test_fixed_linear_ops_lift_coefficients_to_power_q(label, dims, op, q):
    """For one fixed linear op after an identity layer, paths are the Jacobian's entries:
    ``||Phi||_q^q = sum |J_ij|^q``, with J read off PyTorch by autograd."""
    shape = (1, 2) + (5, 6, 4)[:dims]
    model = Fixed(2, dims, op).double().eval()
    x = torch.zeros(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: model(t).reshape(-1), x).reshape(-1, x.numel())
    expected = float((jac.abs() ** q).sum()) ** (1 / q)
    assert pm.path_norm(model, x, q=q) == pytest.approx(expected, rel=1e-12)


MAX_POOLS = [
    nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(2, 1, 0, dilation=2),
    nn.MaxPool3d(2, 2, 1, ceil_mode=True), nn.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True),
    nn.AdaptiveMaxPool2d((3, 2)),
]


@pytest.mark.parametrize("pool", MAX_POOLS, ids=[repr(p) for p in MAX_POOLS])
def test_max_pooling_becomes_sum_pooling(pool):
    """Each (window, valid input) pair is one path: found by probing inputs one at a time."""
    dims = 1 if "1d" in type(pool).__name__ else 3 if "3d" in type(pool).__name__ else 2
    shape = (1, 1) + (7, 6, 5)[:dims]
    model = Fixed(1, dims, pool).double().eval()
    n = math.prod(shape)
    probes = torch.full((n, n), -1e9, dtype=torch.float64)
    probes.fill_diagonal_(1.0)
    hits = int((pool(probes.reshape((n,) + shape[1:])) > 0).sum())
    assert pm.path_norm(model, torch.zeros(shape)) == pytest.approx(hits, rel=1e-12)


def test_prelu_and_transposed_conv():
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
                          nn.PReLU(3, init=0.25), nn.Flatten(), nn.Linear(3 * 8 * 8, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    x = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    # positive network: max(x, a x) lifts to (1 + a) x, so N = sum of outputs with PReLU -> 1.25 x
    lifted = copy.deepcopy(model)
    lifted[1] = nn.Identity()
    with torch.no_grad():
        lifted[3].bias.div_(1.25)
    assert pm.path_norm(model, x) == pytest.approx(1.25 * float(lifted(x).sum()), rel=1e-12)
    with torch.no_grad():
        model[1].weight.fill_(1.5)
    with pytest.raises(pm.UnsupportedModelError, match="PReLU slope"):
        pm.path_norm(model, x)


def _summed_terms(model, x):
    """``summed_terms`` of the path-norm pass and of the pair pass (against ``model`` halved)."""
    graph = capture_module.capture(model, x)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    counts = []
    for ev in (NormLifting(graph, model), PairLifting(graph, named_tensors(model),
                                                      named_tensors(other))):
        with torch.no_grad():
            ev.run()
        counts.append(ev.summed_terms)
    return counts


def test_rounding_terms_of_a_small_network_counted_by_hand():
    """Each primitive counts the terms an entry of its result sums: ``linear`` the fan-in it is
    told (in + 2 for a linear layer), ``add`` its operands (the bias: 2), a max-pooling its window
    + 2, ``affine`` three; the pair pass adds one per linear map (D' sums two of them)."""
    model = nn.Sequential(nn.Conv1d(2, 3, 3, bias=False), nn.BatchNorm1d(3), nn.ReLU(),
                          nn.MaxPool1d(2), nn.Flatten(), nn.Linear(3 * 3, 2)).eval()
    x = torch.zeros(1, 2, 8)
    conv, bn, pool, fc = 2 * 3 + 2, 3, 2 + 2, (9 + 2) + 2
    assert _summed_terms(model, x) == [conv + bn + pool + fc, conv + bn + pool + fc + 2]


class Summed(nn.Module):
    """``n`` features of one input, then their sum: a sum op of fan-in ``n``."""

    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(1, n, bias=False)

    def forward(self, x):
        return torch.relu(self.fc(x)).sum(dim=1)


def test_rounding_terms_grow_with_the_fan_in_of_a_sum():
    """Wider sums count more terms, by the added fan-in, in both passes: a linear layer of 2 or
    5 inputs, a sum of 2 or 5 entries, and ``add`` of 2 or 5 lifted values."""
    layers = [_summed_terms(nn.Linear(n, 1, bias=False).eval(), torch.zeros(1, n)) for n in (2, 5)]
    sums = [_summed_terms(Summed(n).eval(), torch.zeros(1, 1)) for n in (2, 5)]
    for narrow, broad in (layers, sums):
        assert [b - a for a, b in zip(narrow, broad)] == [3, 3]
    model = Summed(2).eval()
    ev = NormLifting(capture_module.capture(model, torch.zeros(1, 1)), model)
    value = ev.inputs((1, 3))
    for k in (2, 5):
        before = ev.summed_terms
        ev.add([value] * k)
        assert ev.summed_terms - before == k


@pytest.mark.parametrize("call", ["fixed", "linear"])
def test_a_rule_that_leaves_a_sum_uncounted_fails_at_once(call):
    """``ev.fixed`` and ``ev.linear`` require ``terms=``: a rule that omits it is a TypeError at
    the first evaluation, reported with the op and module, never an uncounted rounding error."""
    @rules.rule("uncounted", F.softshrink, depth=0, max_pool=0, affine=False, weighted=False,
                homogeneous=True, channels="preserve", transforms_through=True)
    def uncounted(ev, x, lambd=0.5, *, func=None):
        if call == "fixed":
            return ev.fixed(x, lambda m: m)
        return ev.linear(x, lambda m, p: m * p, ev.param(None, torch.ones(())))
    try:
        with pytest.raises(pm.UnsupportedModelError, match="uncounted.*terms") as info:
            pm.path_norm(Wrap(lambda y: F.softshrink(y, 0.0)).eval(), torch.zeros(1, 3, 8, 8))
        assert info.value.unsupported[0][0] == "uncounted"
    finally:
        rules.unregister("uncounted")


def test_a_cold_path_norm_runs_the_lifted_pass_once(monkeypatch):
    """The capture's one evaluation of the lifted network (the support decision) is the default
    path-norm pass: a cold ``path_norm`` uses its outputs instead of running it again, and gives
    the warm call's number; any other pass (another q, precision) runs its own."""
    model = torchvision.models.resnet18(weights=None).eval()
    runs = []
    original = NormLifting.run
    monkeypatch.setattr(NormLifting, "run", lambda self, *a: runs.append(self.q) or original(self, *a))
    cold = pm.path_norm(model, X64)
    assert runs == [1.0]
    assert pm.path_norm(model, X64) == cold and runs == [1.0, 1.0]
    capture_module.forget(model)
    pm.path_norm(model, X64, q=2)
    assert runs == [1.0, 1.0, 1.0, 2.0]
