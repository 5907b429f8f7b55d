"""Certified output bounds (issue 3): path-metrics, output bounds, quantizers."""
import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bruteforce import _changed, tiny_networks
from torch import nn

import pathmetric as pm


def test_counterexample_across_orthants_gets_a_bound_of_at_least_one():
    """v*relu(u*x) with (u, v) = (1, 1) and (-1, -1): same Phi, output gap 1 at x = -1."""
    def net(sign):
        model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
        with torch.no_grad():
            model[0].weight.fill_(sign)
            model[2].weight.fill_(sign)
        return model

    a, b = net(1.0), net(-1.0)
    x = -torch.ones(1, 1)
    gap = float((a(x) - b(x)).abs().sum())
    assert gap == 1.0
    assert pm.path_metric(a, b, x) >= 1.0
    assert float(pm.output_bound(a, b, x)[0]) >= gap


def test_tiny_path_mass_is_not_lost_to_cancellation():
    """Pruning a weight carrying 1e-13 of the mass: the (A, D) pair gets it to 1e-6 relative,
    where N(theta) - N(theta') in float64 would keep about three digits."""
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1e-13]]))
        model[2].weight.fill_(1.0)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned[0].weight[1, 0] = 0.0
    x = torch.zeros(1, 1)
    assert pm.path_metric(model, pruned, x) == pytest.approx(1e-13, rel=1e-6)
    difference = pm.path_norm(model, x) - pm.path_norm(pruned, x)
    assert abs(difference - 1e-13) / 1e-13 > 1e-6  # the naive difference is visibly off


def test_replacement_dict_equals_model_and_errors_are_clear():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.zeros(1, 3, 32, 32)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.layer1[0].conv1.weight.mul_(0.5)
    as_dict = {"layer1.0.conv1.weight": other.layer1[0].conv1.weight.detach()}
    assert pm.path_metric(model, other, x) == pm.path_metric(model, as_dict, x)
    with pytest.raises(KeyError, match="unknown parameters"):
        pm.path_metric(model, {"nope.weight": torch.zeros(1)}, x)
    with pytest.raises(ValueError, match="shape"):
        pm.path_metric(model, {"fc.weight": torch.zeros(3)}, x)
    with pytest.raises(ValueError, match="same architecture"):
        pm.path_metric(model, torchvision.models.resnet34(weights=None).eval(), x)


def _folded_sign_flip(model):
    """Move BatchNorm running means so that folded shifts t = beta - mean * s change sign
    while the raw beta does not."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, nn.BatchNorm2d):
                s = m.weight / torch.sqrt(m.running_var + m.eps)
                m.bias.fill_(0.1)
                m.running_mean.copy_(2 * m.bias / s.clamp(min=1e-3))
    return other


def _magnitude_pruned(model, fraction=0.5):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() > 1:
                p.mul_(p.abs() > p.abs().flatten().kthvalue(max(1, int(fraction * p.numel()))).values)
    return other


def _quantized(model, bits):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() > 1:
                p.copy_(pm.quantize_weights(p, bits))
    return other


def _noisy(model, seed=0):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return other


def _zoo(name):
    if name == "unet":
        import segmentation_models_pytorch as smp
        return smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
    return getattr(torchvision.models, name)(weights=None).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "unet"])
def test_zoo_output_gaps_never_exceed_the_bound(name):
    model = _zoo(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, 32, 32, generator=g) * torch.rand(24, 1, 1, 1, generator=g) * 3
    out = model(x)
    changes = [(_magnitude_pruned,), (_quantized, 2), (_quantized, 4), (_quantized, 8),
               (_noisy,), (_folded_sign_flip,)]
    for make, *args in changes:   # one changed copy at a time (vgg11_bn's is 0.5 GB)
        other = make(model, *args)
        bound = pm.output_bound(model, other, x)
        gap = (out - other(x)).flatten(1).abs().sum(dim=1).double()
        assert (gap <= bound).all()
        assert torch.isfinite(bound).all()


@settings(max_examples=12)
@given(tiny_networks(), st.sampled_from(["mix", "flip", "quantize"]))
def test_adversarial_inputs_find_no_violation(net, mode):
    """Gradient ascent on the input maximises gap / max(||x||_inf, 1)."""
    model, shape, _, seed = net
    other = _changed(model, seed, mode)
    metric = pm.path_metric(model, other, torch.zeros((1,) + shape, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((16,) + shape, generator=g, dtype=torch.float64).requires_grad_()
    optimiser = torch.optim.Adam([x], lr=0.1)
    worst = 0.0
    for _ in range(60):
        out, out_other = model(x), other(x)
        scale = x.flatten(1).abs().amax(dim=1).clamp(min=1)
        ratio = (out - out_other).abs().sum(dim=1) / scale
        # the gap itself is measured in float64: allow its own rounding (a few ulps of the outputs)
        slack = 8 * torch.finfo(torch.float64).eps * (out.abs() + out_other.abs()).sum(dim=1) / scale
        worst = max(worst, float((ratio - slack).max()))
        optimiser.zero_grad()
        (-ratio.sum()).backward()
        optimiser.step()
    assert worst <= metric


# ---------------------------------------------------------------- quantizers

@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity,group_size", [("per_tensor", None), ("per_channel", None),
                                                    ("per_group", 4)])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantizer_grids(scheme, granularity, group_size, bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 10, generator=g)
    w[0] = 0.0
    w[1] = w[1].abs()
    q = pm.quantize_weights(w, bits, scheme, granularity, group_size)
    assert q.shape == w.shape
    assert (q * w >= 0).all()          # never a sign change
    assert (q[0] == 0).all()           # zero is on the grid
    rows = {"per_tensor": q.reshape(1, -1), "per_channel": q,
            "per_group": torch.nn.functional.pad(q, (0, 2)).reshape(-1, 4)}[granularity]
    levels = max(len(torch.unique(r)) for r in rows)
    assert levels <= 2 ** bits
    error = (q - w).abs().max()
    scale = w.abs().max() / (2 ** (bits - 1) - 1) if scheme == "symmetric" else \
        (w.max() - w.min()) / (2 ** bits - 1)
    assert error <= scale / 2 + 1e-6


def test_quantizer_rejects_bad_arguments():
    w = torch.randn(3, 3)
    for kwargs in ({"bits": 1}, {"bits": 4, "scheme": "nf4"}, {"bits": 4, "granularity": "row"},
                   {"bits": 4, "granularity": "per_group"}):
        with pytest.raises(ValueError):
            pm.quantize_weights(w, **kwargs)


def test_quantization_bound_equals_path_metric_to_quantized_model():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.zeros(1, 3, 32, 32)
    for bits, scheme in [(4, "symmetric"), (3, "asymmetric")]:
        expected = pm.path_metric(model, _quantized_like(model, bits, scheme), x)
        assert pm.quantization_bound(model, x, bits=bits, scheme=scheme) == pytest.approx(
            expected, rel=1e-12)
    one = pm.quantization_bound(model, x, bits=2, layers=["layer1.0.conv1"])
    assert 0 < one < pm.quantization_bound(model, x, bits=2)


def _quantized_like(model, bits, scheme):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for module in other.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(pm.quantize_weights(module.weight, bits, scheme))
    return other


def _reference_quantizer(w, bits, scheme, granularity, group_size):
    """The quantizer as the docstring writes it, clamps and zero-row guard included."""
    rows = w.reshape(1, -1) if granularity == "per_tensor" else w.reshape(w.shape[0], -1)
    pad = 0
    if granularity == "per_group":
        pad = (-rows.shape[1]) % group_size
        rows = torch.nn.functional.pad(rows, (0, pad)).reshape(-1, group_size)
    if scheme == "symmetric":
        top = 2 ** (bits - 1) - 1
        scale = rows.abs().amax(dim=1, keepdim=True) / top
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(rows / safe), -top - 1, top) * safe
    else:
        top = 2 ** bits - 1
        lo = rows.amin(dim=1, keepdim=True).clamp(max=0)
        hi = rows.amax(dim=1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / top
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / safe)
        q = (torch.clamp(torch.round(rows / safe) + zero, 0, top) - zero) * safe
    q = torch.where(scale > 0, q, torch.zeros_like(q))
    if granularity == "per_group":
        q = q.reshape(w.shape[0], -1)[:, :q.numel() // w.shape[0] - pad]
    return q.reshape(w.shape)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity,group_size", [("per_tensor", None), ("per_channel", None),
                                                    ("per_group", 5)])
def test_quantizer_is_the_documented_formula_bit_for_bit_and_w_minus_q_is_exact(
        scheme, granularity, group_size):
    """The in-place quantizer drops the symmetric clamp and the zero-row guard (both never
    bind) and shares row statistics across bit-widths; the sensitivity relies on ``w - q`` being
    exact in float32 (Sterbenz)."""
    g = torch.Generator().manual_seed(7)
    for trial in range(30):
        w = torch.randn(12, 3, 3, 3, generator=g) * 10.0 ** (trial % 9 - 4)
        w[0] = 0.0
        w[1] = w[1].abs()
        w[2] = -w[2].abs()
        w[3, 0, 0, 0] = 1e-30
        quantize = pm.quantizer(w, scheme, granularity, group_size)
        for bits in (2, 3, 4, 8, 16):
            q = pm.quantize_weights(w, bits, scheme, granularity, group_size)
            assert torch.equal(q, _reference_quantizer(w, bits, scheme, granularity, group_size))
            assert torch.equal(quantize(bits), q)
            assert torch.equal((w - q).double(), w.double() - q.double())
