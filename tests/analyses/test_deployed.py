"""Deployed integer models (issue 22): exported programs, quantization points, the activation
term and the certificate of a model whose activations are quantized."""
import math

import pytest
import torch
import torchvision
from bruteforce import Dag, _module, build
from torch import nn

import pathmetric as pm

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_exported_resnet18_gives_the_eager_numbers(resnet):
    exported = torch.export.export(resnet, (X,)).module()
    report = pm.check_support(exported, X)
    assert report.ok, str(report)
    assert report.ops["aten.conv2d.default"] == 20 and report.ops["aten.batch_norm.default"] == 20
    assert pm.path_norm(exported, X) == pm.path_norm(resnet, X)
    assert pm.log_path_norm(exported, X, q=2.0) == pm.log_path_norm(resnet, X, q=2.0)
    scores, eager = pm.weight_scores(exported, X), pm.weight_scores(resnet, X)
    assert scores.keys() == eager.keys()
    assert all(torch.equal(scores[k], eager[k]) for k in eager)


# ---------------------------------------------------------------- the activation term

class WithPoints(nn.Module):
    """``seq`` with a fake-quantization point (per tensor, scale ``scales[i]``, a grid too wide
    to saturate) before layer ``i`` (0: the model input)."""

    def __init__(self, seq, scales):
        super().__init__()
        self.seq, self.scales = seq, scales

    def forward(self, x):
        for i, layer in enumerate(self.seq):
            if i in self.scales:
                x = torch.fake_quantize_per_tensor_affine(x, self.scales[i], 0, -2**31, 2**31 - 1)
            x = layer(x)
        return x


def _enumerated_downstream_mass(dag, v) -> float:
    """``sum over paths p from v to an output of prod |c_e|``, path by path."""
    out_edges = [[] for _ in dag.edges]
    for w, incoming in enumerate(dag.edges):
        for u, c in incoming:
            out_edges[u].append((w, c))
    outputs, masses = set(dag.outputs), []

    def walk(u, value):
        if u in outputs:
            masses.append(value)
        for w, c in out_edges[u]:
            walk(w, value * abs(c))
    walk(v, 1.0)
    return math.fsum(masses)


SPECS = [
    [("conv", 2, 3, 1, 1, 1, 1, True), ("relu",), ("maxpool", 2, 2, 0, 1, False),
     ("conv", 2, 1, 1, 0, 1, 1, True)],
    [("conv", 2, 3, 1, 1, 1, 1, False), ("bn",), ("relu",),
     ("res", [("conv", 2, 3, 1, 1, 1, 1, True), ("relu",)]), ("avgpool", 2, 2, 0, False, True)],
]


@pytest.mark.parametrize("specs", SPECS)
def test_activation_term_equals_enumerated_downstream_masses(specs):
    channels, length = 2, 6
    seq = build(specs, channels, length, 2, torch.Generator().manual_seed(1))
    scales = {i: 0.01 * (i + 1) for i in range(len(seq))}
    deployed = WithPoints(seq, scales)
    x = torch.randn(3, channels, length, dtype=torch.float64)
    report = pm.deployment_report(seq, deployed, x)
    dag = Dag()
    ids = torch.tensor([dag.neuron([]) for _ in range(channels * length)]).reshape(channels, length)
    dag.inputs, shape, boundary = ids.reshape(-1).tolist(), (channels, length), []
    for layer in seq:
        boundary.append(ids)
        ids, shape = _module(dag, layer, ids, shape)
    dag.outputs = ids.reshape(-1).tolist()
    expected = {i: scales[i] / 2 * math.fsum(_enumerated_downstream_mass(dag, int(v))
                                              for v in boundary[i].reshape(-1))
                for i in scales}
    assert report.weight_term == 0.0 and report.saturated_count == 0
    got = list(report.activation_terms.values())
    assert len(got) == len(expected)
    for value, want in zip(got, expected.values()):
        assert want <= value <= want * (1 + 1e-9)
    masses = pm.downstream_masses(deployed, x)
    first = next(iter(masses.values()))
    assert first.shape == (channels, length)
    assert torch.allclose(first.reshape(-1), torch.tensor(
        [_enumerated_downstream_mass(dag, int(v)) for v in boundary[0].reshape(-1)],
        dtype=torch.float64), rtol=1e-9)
    assert torch.all(report.bound >= report.activation_term)


class SmallNet(nn.Module):
    """conv-BN-ReLU, a residual conv-ReLU, global average pooling and a linear head; with
    ``points``, 8-bit fake-quantization of the input (signed, range about [-2.6, 2.5]) and of
    the ReLU outputs (unsigned): weights as they are, activations quantized."""

    def __init__(self, points=False):
        super().__init__()
        self.points = points
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def q(self, x, scale, low):
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, low, low + 255) if self.points \
            else x

    def forward(self, x):
        y = self.q(torch.relu(self.b1(self.c1(self.q(x, 0.02, -128)))), 0.01, 0)
        y = self.q(torch.relu(self.c2(y)), 0.01, 0) + y
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def small_pair():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.b1.running_mean.uniform_(-0.2, 0.2)
        model.b1.running_var.uniform_(0.5, 2.0)
    deployed = SmallNet(points=True).eval()
    deployed.load_state_dict(model.state_dict())
    return model, deployed


def test_activations_only_quantized_model_gets_a_positive_bound_that_holds(small_pair):
    model, deployed = small_pair
    x = 0.8 * torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    report = pm.deployment_report(model, deployed, x)
    assert report.weight_term == 0.0 and report.activation_term > 0.0
    assert report.activation_share == 1.0 and len(report.activation_terms) == 3
    assert "exact" in report.arithmetic
    bound = pm.output_bound(model, deployed, x)
    assert torch.equal(bound, report.bound)
    with torch.no_grad():
        gap = (model(x) - deployed(x)).abs().sum(dim=1).double()
    # samples beyond the input grid's range [-2.57, 2.55] saturate: not certified, and counted
    outside = (x.flatten(1).amax(1) > 2.55) | (x.flatten(1).amin(1) < -2.57)
    assert torch.equal(report.saturated, outside) and 0 < report.saturated_count < len(x)
    assert torch.isinf(bound[outside]).all() and torch.isfinite(bound[~outside]).all()
    assert (gap[~outside] <= bound[~outside]).all()
    assert report.saturated_points["0:input"] == report.saturated_count


def test_gradient_ascent_on_the_gap_stays_below_the_bound(small_pair):
    model, deployed = small_pair
    x = 0.5 * torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    gap, worst = pm.adversarial_gap(model, deployed, x, radius=1.0, starts=8, steps=30)
    bound = pm.output_bound(model, deployed, worst.unsqueeze(0).float())
    assert torch.isfinite(bound).all() and gap <= float(bound[0])


# ---------------------------------------------------------------- the no-saturation radius

class Tiny(nn.Module):
    """linear-ReLU-linear, a signed 8-bit point on the second linear's output (before its
    ReLU, about [-25.6, 25.4]), then ``act`` into an unsigned 8-bit point of step ``top`` and a
    linear head; the input point's grid is wide (about [-128, 127])."""

    def __init__(self, act, top, points=True):
        super().__init__()
        self.points, self.act, self.top = points, act, top
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def q(self, x, scale, low):
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, low, low + 255) if self.points \
            else x

    def hidden(self, x):
        """The value the signed hidden point reads."""
        return self.l2(torch.relu(self.l1(self.q(x, 1.0, -128))))

    def forward(self, x):
        return self.l3(self.q(self.act(self.q(self.hidden(x), 0.2, -128)), self.top, 0))


def _tiny(act, top=6 / 255):
    torch.manual_seed(3)
    model = Tiny(act, top, points=False).eval()
    deployed = Tiny(act, top).eval()
    deployed.load_state_dict(model.state_dict())
    return model, deployed


def _worst_hidden(deployed, radius, starts=64, steps=60):
    """Gradient ascent (signed steps, projected on the box ``||x||_inf <= radius``) on the
    largest ``|z|`` the signed hidden point reads: the final iterates."""
    x = radius * (2 * torch.rand(starts, 4, generator=torch.Generator().manual_seed(4)) - 1)
    for _ in range(steps):
        x.requires_grad_(True)
        peak = deployed.hidden(x).abs().amax(dim=1).sum()
        grad, = torch.autograd.grad(peak, x)
        x = (x.detach() + 0.05 * radius * grad.sign()).clamp(-radius, radius)
    return x.detach()


def test_no_input_inside_the_safe_radius_saturates_a_point():
    """The radius is the signed hidden point's (the head's grid is wide): random inputs, the
    box's corners and gradient ascent on that point's ``|z|`` inside it saturate nothing; at six
    times the radius the ascent saturates the point."""
    model, deployed = _tiny(torch.relu, top=1.0)
    report = pm.deployment_report(model, deployed, torch.zeros(1, 4))
    radius = report.safe_input_radius
    assert list(report.safe_radius) == ["0:input", "1:l2", "2:relu"]
    assert radius == report.safe_radius["1:l2"] == min(report.safe_radius.values())
    assert 1.0 <= radius < math.inf
    assert 127 * (1 - 1e-9) <= report.safe_radius["0:input"] <= 127
    corners = torch.tensor([[(k >> i) & 1 for i in range(4)] for k in range(16)]) * 2.0 - 1.0
    box = torch.cat([radius * (2 * torch.rand(2000, 4, generator=torch.Generator().manual_seed(5))
                               - 1), radius * corners, _worst_hidden(deployed, radius)])
    assert box.abs().amax() <= radius
    inside = pm.deployment_report(model, deployed, box)
    assert inside.saturated_count == 0
    outside = pm.deployment_report(model, deployed, _worst_hidden(deployed, 6 * radius))
    assert outside.saturated_points["1:l2"] > 0


def test_relu6_into_a_0_6_grid_never_saturates():
    """ReLU6 into a [0, 6] grid: an infinite radius at that point; ReLU into the same grid: the
    upper end alone bounds it (finite, at least 1)."""
    model, deployed = _tiny(nn.ReLU6())
    report = pm.deployment_report(model, deployed, torch.zeros(1, 4))
    assert report.safe_radius["2:act"] == math.inf
    assert report.safe_input_radius == report.safe_radius["1:l2"] < math.inf
    relu = pm.deployment_report(*_tiny(torch.relu), torch.zeros(1, 4))
    assert 1.0 <= relu.safe_radius["2:relu"] < math.inf


def test_a_dropout_on_one_side_only_is_matched_as_the_identity():
    """Dropout states the rule fact ``identity``: a deployed model without the float model's
    (eval-mode) dropout is the same function, certified with a zero weight term."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
    deployed = WithPoints(nn.Sequential(model[0], model[1], model[3]), {0: 0.01, 2: 0.01})
    report = pm.deployment_report(model, deployed, torch.randn(8, 4))
    assert report.weight_term == 0.0 and len(report.activation_terms) == 2


# ---------------------------------------------------------------- casts to half precision

class HalfCast(nn.Module):
    """``seq`` (linear, ReLU, linear) with a fine fake-quantization point on its input and the
    ReLU's output cast to float16 and back (its input, if ``relu_in_half``: the ReLU computes
    in float16)."""

    def __init__(self, seq, relu_in_half=False):
        super().__init__()
        self.seq, self.relu_in_half = seq, relu_in_half

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 1e-6, 0, -2**31, 2**31 - 1)
        if self.relu_in_half:
            return self.seq[2](self.seq[1](self.seq[0](x).half()).float())
        return self.seq[2](self.seq[1](self.seq[0](x)).half().float())


def test_a_float16_cast_in_a_deployed_model_is_a_rounding_point():
    """The cast's error ``u |z| + eta`` dominates the gap here (the input grid's step is 1e-6,
    the weights are shared): the bound holds only with the cast's term, which is per sample
    ``sum_v (2^-11 |z_v| + eta) G(v)``, ``G`` the second layer's column masses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    deployed = HalfCast(model)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    report = pm.deployment_report(model, deployed, x)
    with torch.no_grad():
        gap = (model(x) - deployed(x)).abs().sum(dim=1).double()
        z = model[1](model[0](torch.fake_quantize_per_tensor_affine(x, 1e-6, 0, -2**31,
                                                                    2**31 - 1))).double()
    fp16 = torch.finfo(torch.float16)
    g = model[2].weight.detach().double().abs().sum(dim=0)
    cast = ((fp16.eps / 2 * z.abs() + fp16.smallest_normal * fp16.eps / 2) * g).sum(dim=1)
    assert list(report.rounding_terms) == ["0:seq.1 to float16"]
    assert report.rounding_terms["0:seq.1 to float16"] == pytest.approx(cast, rel=1e-9)
    assert report.weight_term == 0.0 and not report.saturated.any()
    assert (gap <= report.bound).all()
    assert (gap > report.activation_term).any()   # without the cast's term it would not hold


def test_an_op_computing_in_float16_other_than_a_layer_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    with pytest.raises(pm.UnsupportedModelError, match=r"relu in 'seq.1': it computes in "
                                                       "float16"):
        pm.deployment_report(model, HalfCast(model, relu_in_half=True), torch.randn(4, 6))


def test_an_integer_cast_in_a_deployed_model_is_still_refused():
    """Only float-to-float casts are rounding points: truncation to int32 is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()

    class Truncated(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = model

        def forward(self, x):
            x = torch.fake_quantize_per_tensor_affine(x, 0.01, 0, -128, 127)
            return self.seq[2](self.seq[1](self.seq[0](x)).to(torch.int32).float())
    with pytest.raises(pm.UnsupportedModelError, match="a cast from torch.float32 to torch.int32 "
                                                       "changes values"):
        pm.deployment_report(model, Truncated(), torch.randn(4, 6))
