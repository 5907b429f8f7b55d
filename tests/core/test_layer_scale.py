"""Issue 15 item 4: parameters rearranged in forward (LayerScale ``x * gamma.view(1, -1, 1, 1)``,
``x + b[:, None]``) are parameter coordinates: identity neurons with a weight (or a bias)."""
import copy

import bruteforce as bf
import pytest
import torch
from bruteforce import l1_distance, lq_norm_q, paths, to_dag
from torch import nn

import pathmetric as pm

SPECS = [("conv", 3, 3, 1, 1, 1, 1, True), ("relu",),
         ("res", [("conv", 3, 3, 1, 1, 1, 1, True), ("relu",), ("scale",)]), ("vbias",),
         ("relu",), ("scale",)]
X = torch.zeros(1, 2, 4, dtype=torch.float64)


def tiny(seed=0):
    return bf.build(SPECS, 2, 4, 2, torch.Generator().manual_seed(seed))


def gammas(model):
    return [n for n, _ in model.named_parameters() if n.endswith("gamma")]


@pytest.mark.parametrize("seed", [0, 1])
def test_path_norm_against_enumeration(seed):
    model = tiny(seed)
    assert pm.check_support(model, X).ok
    phi = paths(to_dag(model, 2, 4))
    for q in (1.0, 2.0):
        assert pm.path_norm(model, X, q=q) == pytest.approx(lq_norm_q(phi, q) ** (1 / q), rel=1e-12)


def test_pruning_path_metric_is_exact():
    model = tiny()
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name in gammas(pruned):
            dict(pruned.named_parameters())[name][1] = 0
        pruned[0].weight[0, 1] = 0
    expected = l1_distance(paths(to_dag(model, 2, 4)), paths(to_dag(pruned, 2, 4)))
    assert expected > 0
    assert pm.path_metric(model, pruned, X) == pytest.approx(expected, rel=1e-12)


def test_weight_scores_of_gamma_are_the_pruning_cost():
    model = tiny()
    scores = pm.weight_scores(model, X)
    total = pm.path_norm(model, X)
    for name in gammas(model) + ["3.bias"]:
        param = dict(model.named_parameters())[name]
        assert scores[name].shape == param.shape
        for i in range(param.numel()):
            zeroed = copy.deepcopy(model)
            with torch.no_grad():
                dict(zeroed.named_parameters())[name].view(-1)[i] = 0
            assert float(scores[name].view(-1)[i]) == pytest.approx(
                total - pm.path_norm(zeroed, X), rel=1e-10, abs=1e-12)


def test_output_bound_holds_after_perturbing_gamma():
    model = tiny()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2, 4, generator=g, dtype=torch.float64) * 3
    for trial in range(5):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for name in gammas(other):
                p = dict(other.named_parameters())[name]
                p.mul_(1 + 0.8 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        with torch.no_grad():
            gap = (model(x) - other(x)).abs().sum(dim=1)
        assert (gap <= pm.output_bound(model, other, x) * (1 + 1e-9)).all()


def test_random_rescale_keeps_the_function():
    model = tiny()
    rescaled = pm.random_rescale(model, X, seed=1)
    x = torch.randn(8, 2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), rescaled(x), rtol=1e-10, atol=1e-10)


class Viewed(nn.Module):
    def __init__(self, use):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.use = use
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(self.use(self, y).mean((2, 3)))


X2 = torch.zeros(1, 3, 5, 5)
FORMS = {
    "view": lambda m, y: y * m.gamma.view(1, -1, 1, 1) + y,
    "index": lambda m, y: y * m.gamma[:, None, None] + y,
    "reshape": lambda m, y: y * m.gamma.reshape(-1, 1, 1) + y,
    "unsqueeze": lambda m, y: m.gamma.unsqueeze(-1).unsqueeze(-1) * y + y,
    "Tensor.mul": lambda m, y: y.mul(m.gamma.view(1, -1, 1, 1)) + y,
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_view_form_equals_the_broadcastable_parameter(form):
    torch.manual_seed(0)
    model = Viewed(FORMS[form]).double().eval()
    plain = Viewed(lambda m, y: y * m.gamma + y).double().eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.gamma = nn.Parameter(model.gamma.detach().view(-1, 1, 1).clone())
    x = X2.double()
    assert pm.path_norm(model, x) == pytest.approx(pm.path_norm(plain, x), rel=1e-12)
    assert torch.allclose(pm.weight_scores(model, x)["gamma"],
                          pm.weight_scores(plain, x)["gamma"].view(-1), rtol=1e-12)


@pytest.mark.parametrize("use,match", [
    (lambda m, y: y / m.gamma.view(1, -1, 1, 1), "dividing by an activation or a parameter"),
    (lambda m, y: y * torch.cat([m.gamma, m.gamma])[:4].view(1, -1, 1, 1),
     "computed from parameters"),
    (lambda m, y: torch.nn.functional.prelu(y, m.gamma.view(-1)),
     "rearranged in forward"),
])
def test_division_concatenation_and_other_roles_are_refused(use, match):
    report = pm.check_support(Viewed(use).eval(), X2)
    assert not report.ok and match in report.unsupported[0][2]


def test_a_parameter_viewed_twice_is_shared():
    model = Viewed(lambda m, y: y * m.gamma.view(1, -1, 1, 1) * m.gamma[:, None, None]).eval()
    with pytest.raises(pm.UnsupportedModelError, match="more than one operation"):
        pm.weight_scores(model, X2)


@pytest.mark.slow
def test_timm_fasternet_with_layer_scale():
    """timm's FasterNet-T2 (ReLU) with LayerScale: ``layer_scale.unsqueeze(-1).unsqueeze(-1)``."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("fasternet_t2", pretrained=False, layer_scale_init_value=0.5).eval()
    x = torch.zeros(1, 3, 32, 32)
    assert pm.check_support(model, x).ok
    scores = pm.weight_scores(model, x)
    scales = [n for n, _ in model.named_parameters() if n.endswith("layer_scale")]
    assert scales and all(scores[n].shape == dict(model.named_parameters())[n].shape and
                          bool((scores[n] > 0).all()) for n in scales)
    rescaled = pm.random_rescale(model, x, seed=1)
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(inputs)
        assert (out - rescaled(inputs)).abs().max() <= 1e-4 * out.abs().max()


def test_layer_scale_counts_as_an_identity_neuron_layer_like_batch_norm():
    """A learnt scale read directly by a conv cannot fold into that conv's weights (a product
    of two parameters): it is an identity neuron layer, so the reports' depth D counts it as it
    counts a frozen BatchNorm (an undercounted D would make the generalization bound too small)."""
    from pathmetric import reports

    class Scaled(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 2, 3)
            self.scale = scale

        def forward(self, x):
            return self.c2(self.scale(torch.relu(self.c1(x))))

    class Gamma(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.rand(3) + 0.5)

        def forward(self, x):
            return x * self.gamma.view(1, -1, 1, 1)

    x = torch.randn(1, 2, 8, 8)
    with_gamma = reports.graph_facts(Scaled(Gamma()), x)
    with_bn = reports.graph_facts(Scaled(nn.BatchNorm2d(3).eval()), x)
    assert with_gamma.depth == with_bn.depth
    assert with_gamma.width == with_bn.width
