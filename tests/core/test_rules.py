"""Rules (core/rules): each op's lifted image and facts against the brute-force oracle
or an equivalent model, and the refusals a rule states."""
import math

import pytest
import torch
import torch.nn.functional as F
from bruteforce import lq_norm_q, paths, to_dag
from models import X32, QuickstartNet, _at_w_pair
from torch import nn

import pathmetric as pm


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


def test_quickstart_model_reports_its_head():
    net = QuickstartNet().eval()
    report = pm.check_support(net, torch.zeros(1, 1, 28, 28))
    assert report.ok and report.head == "log_softmax" and "logits" in report.notes[0]
    assert pm.head_factor(net, torch.zeros(1, 1, 28, 28)) == 11


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


def test_x_at_w_with_a_vector_w_has_no_output_channels():
    class Vector(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return torch.relu(x) @ self.w
    model, x = Vector().eval(), torch.randn(2, 4)
    assert pm.path_norm(model, x) > 0 and pm.weight_scores(model, x)["w"].shape == (4,)
    with pytest.raises(pm.UnsupportedModelError, match="no output channels"):
        pm.channel_scores(model, x)


class TransposedW(nn.Module):
    """A hand-written linear layer: ``x @ W.t()`` (or ``torch.mm``, ``W.T``) with W laid out
    (out, in) as nn.Linear keeps it."""
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.W = nn.Parameter(torch.randn(6, 4))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        weight = {"t": lambda: self.W.t(), "T": lambda: self.W.T, "mm": lambda: self.W.t()}[
            self.how]()
        hidden = torch.mm(x, weight) if self.how == "mm" else x @ weight
        return self.head(torch.relu(hidden))


@pytest.mark.parametrize("how", ["t", "T", "mm"])
def test_x_at_a_transposed_parameter_is_refused_pointing_to_f_linear(how):
    model = TransposedW(how).eval()
    report = pm.check_support(model, torch.randn(2, 4))
    assert not report.ok
    with pytest.raises(pm.UnsupportedModelError, match=r"rearranged in forward.*F\.linear\(x, W\)"):
        pm.path_norm(model, torch.randn(2, 4))


def test_torch_mm_with_a_parameter_is_x_at_w():
    at_w, linear, x = _at_w_pair()

    class Mm(nn.Module):
        def __init__(self):
            super().__init__()
            self.W, self.head = at_w.W, at_w.head

        def forward(self, x):
            return self.head(torch.relu(torch.mm(x, self.W)))
    model = Mm().eval()
    assert pm.path_norm(model, x) == pytest.approx(pm.path_norm(linear, x), rel=1e-12)
    for name, score in pm.channel_scores(linear, x).items():
        torch.testing.assert_close(pm.channel_scores(model, x)[name], score, rtol=1e-10, atol=0)
