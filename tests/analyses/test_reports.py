"""Reports: graph constants, generalization bound, classical bound and symmetries by hand."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathmetric as pm
from pathmetric import reports
from pathmetric.app.digits import DigitsCNN


class Residual(nn.Module):
    """conv a -> relu -> h; h + conv b(h) -> relu -> adaptive max-pool 6x6 -> 2x2 (windows 3x3)
    -> flatten -> linear(8 -> 3) -> leaky relu."""

    def __init__(self, leaky=False):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(8, 3)
        self.leaky = leaky

    def forward(self, x):
        h = F.relu(self.a(x))
        y = F.adaptive_max_pool2d(F.relu(h + self.b(h)), 2)
        y = self.fc(torch.flatten(y, 1))
        return F.leaky_relu(y, 0.1) if self.leaky else y


X6 = torch.zeros(1, 1, 6, 6)
X8 = torch.zeros(1, 1, 8, 8)


def test_constants_by_hand():
    # C^2 = D ln((3+2P)K) + ln((3+2P)/(1+P) (d_in+1) d_out); C'^2 = D ln 3 + M ln K + ln((d_in+1) d_out)
    c, c_sharp = reports.generalization_constants(8, 1, 4, 2, 64, 10)
    assert c == pytest.approx(math.sqrt(8 * math.log(20) + math.log(2.5 * 65 * 10)), rel=1e-12)
    assert c_sharp == pytest.approx(math.sqrt(8 * math.log(3) + 2 * math.log(4) + math.log(650)),
                                    rel=1e-12)
    # no max-pooling: P = 0, K = 1 -> C^2 = D ln 3 + ln(3 (d_in+1) d_out), C'^2 = D ln 3 + ln(...)
    c, c_sharp = reports.generalization_constants(3, 0, 1, 0, 2, 1)
    assert c ** 2 == pytest.approx(3 * math.log(3) + math.log(9))
    assert c_sharp ** 2 == pytest.approx(3 * math.log(3) + math.log(3))
    assert c_sharp < reports.generalization_constants(3, 1, 4, 1, 2, 1)[0]


def test_graph_facts_digits_cnn():
    facts = reports.graph_facts(DigitsCNN(), X8)
    # conv1, bn1, maxpool, conv2, bn2, maxpool, fc1, fc2 (ReLU is the layer's activation)
    assert facts == reports.GraphFacts(depth=8, pool_types=1, kernel=4, max_pools_on_path=2,
                                       d_in=64, d_out=10, affine_depth=4, width=16 * 8 * 8)


def test_graph_facts_residual_adaptive_pool_and_leaky_relu():
    facts = reports.graph_facts(Residual(), X6)
    # longest path: a, b, add, adaptive max-pool, fc; windows 6 -> 2 are 3x3 = 9 inputs
    assert (facts.depth, facts.pool_types, facts.kernel, facts.max_pools_on_path) == (5, 1, 9, 1)
    assert (facts.d_in, facts.d_out, facts.affine_depth, facts.width) == (36, 3, 3, 72)
    leaky = reports.graph_facts(Residual(leaky=True), X6)
    # LeakyReLU = identity neuron a*x, then a 2-input max-pooling neuron: two more layers
    assert (leaky.depth, leaky.kernel, leaky.max_pools_on_path) == (7, 9, 2)
    no_pool = reports.graph_facts(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                                  torch.zeros(1, 3))
    assert (no_pool.depth, no_pool.pool_types, no_pool.kernel, no_pool.max_pools_on_path) == (2, 0, 1, 0)


def test_generalization_bound_formula():
    torch.manual_seed(0)
    model = Residual().eval()
    out = reports.generalization_bound(model, X6, n=1000, input_bound=2.0, lipschitz=3.0)
    c, c_sharp = reports.generalization_constants(5, 1, 9, 1, 36, 3)
    norm = pm.path_norm(model, X6)
    assert (out["C"], out["C_sharp"]) == (c, c_sharp)
    assert out["bound"] == pytest.approx(3.0 * 4 * c * 2.0 * norm / math.sqrt(1000), rel=1e-9)
    assert out["bound_sharp"] == pytest.approx(3.0 * 4 * c_sharp * 2.0 * norm / math.sqrt(1000), rel=1e-9)
    # B below 1 counts as 1 (paths starting at a bias see the input 1)
    small = reports.generalization_bound(model, X6, n=1000, input_bound=0.5)
    assert small["bound"] == pytest.approx(4 * c * norm / math.sqrt(1000), rel=1e-9)


def test_generalization_bound_stays_finite_past_float64():
    model = nn.Sequential(*[m for _ in range(120) for m in (nn.Linear(8, 8), nn.ReLU())]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(100.0)
    out = reports.generalization_bound(model, torch.zeros(1, 8), n=10)
    assert out["bound"] == math.inf and math.isfinite(out["log_bound"])
    mass = 1                      # lifted value of one neuron, exactly, layer after layer
    for _ in range(120):
        mass = 8 * 100 * mass + 100
    assert out["log_path_norm"] == pytest.approx(math.log(8 * mass), rel=1e-9)


def test_classical_bound_by_hand_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    new_w = model[2].weight.detach().clone()
    new_w[1, 2] += 0.25
    out = reports.classical_bound(model, {"2.weight": new_w}, torch.zeros(1, 3), input_bound=2.0)
    rows = [model[0].weight.detach().abs().sum(1).max(), model[0].bias.detach().abs().max(),
            model[2].weight.detach().abs().sum(1).max(), new_w.abs().sum(1).max(),
            model[2].bias.detach().abs().max()]
    R = max(1.0, max(float(r) for r in rows))
    L, W = 2, 4
    assert (out["L"], out["W"]) == (L, W)
    assert out["R"] == pytest.approx(R) and out["delta_inf"] == pytest.approx(0.25)
    assert out["log_bound"] == pytest.approx(
        math.log((W * 2.0 + 1) * W * L ** 2 * R ** (L - 1) * 0.25))


def test_classical_bound_folds_batch_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 2))
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].running_mean.uniform_(-1, 1)
        model[1].weight.uniform_(2, 3)
    model.eval()
    x = torch.zeros(1, 1, 4, 4)
    out = reports.classical_bound(model, {"4.bias": model[4].bias.detach() + 0.5}, x)
    bn = model[1].requires_grad_(False)
    model[0].requires_grad_(False)
    model[4].requires_grad_(False)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - bn.running_mean * s
    conv_rows = (model[0].weight.abs().flatten(1).sum(1) * s.abs()).max()
    conv_bias = (s * model[0].bias + t).abs().max()
    fc = model[4].weight.abs().sum(1).max()
    expected_r = max(1.0, float(conv_rows), float(conv_bias), float(fc),
                     float((model[4].bias + 0.5).abs().max()))
    assert out["L"] == 2 and out["W"] == 16 and out["R"] == pytest.approx(expected_r)
    assert out["delta_inf"] == pytest.approx(0.5)


def test_classical_vs_path_on_quantized_digits_cnn():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    change = {f"{l}.weight": pm.quantize_weights(dict(model.named_modules())[l].weight.detach(), 4)
              for l in pm.prunable_layers(model, X8)}
    out = reports.classical_vs_path(model, change, X8)
    assert out["path_metric"] == pm.path_metric(model, change, X8)
    assert out["log_path_bound"] == pytest.approx(math.log(out["path_metric"]))
    assert out["log_ratio"] == pytest.approx(out["classical_log_bound"] - out["log_path_bound"])
    assert out["log_ratio"] > 0   # the path-metric certificate is the sharper one here
    same = reports.classical_vs_path(model, {}, X8)
    assert same["classical_log_bound"] == -math.inf and math.isnan(same["log_ratio"])


def test_symmetries_by_hand():
    sym = reports.symmetries(DigitsCNN(), X8)
    # rescalings: conv1, bn1 (16 each), conv2, bn2 (32 each), fc1 (64): one factor per channel
    assert sym["rescaling_dims"] == 16 + 16 + 32 + 32 + 64
    # permutations: a BatchNorm is diagonal, so conv+BN channels permute together: 16!, 32!, 64!
    assert sym["permutation_groups"] == 3
    assert sym["permutation_log_factor"] == pytest.approx(
        sum(math.log(math.factorial(n)) for n in (16, 32, 64)))
    assert sym["parameters"] == sum(p.numel() for p in DigitsCNN().parameters())
    # residual stream: a's and b's channels are tied by the add -> one group of 2 channels
    res = reports.symmetries(Residual(), X6)
    assert (res["rescaling_dims"], res["permutation_groups"]) == (2, 1)
    assert res["permutation_log_factor"] == pytest.approx(math.log(2))
    # a model whose hidden channels reach the output or the input directly has fewer symmetries
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x))) + x
    skip = reports.symmetries(Skip(), torch.zeros(1, 3))
    assert (skip["rescaling_dims"], skip["permutation_groups"]) == (3, 1)
