"""Follow-ups of issues 15 and 16: depthwise zeroing, log certificates in the adapters, heads in
every output, parameter views (LayerScale), ``x @ W`` weights as layers."""
import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pathmetric as pm

# ------------------------------------------------------------------ item 1: depthwise convolutions

class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Linear(4 * 5 * 5, 2)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.relu(self.pw(x)))).flatten(1))


def test_depthwise_members_zero_their_own_rows():
    torch.manual_seed(0)
    model = Depthwise().eval()
    x = torch.randn(1, 3, 5, 5)
    members = [("pw", "out", [1, 3], [1, 3]), ("dw", "in", [1, 3], [1, 3]),
               ("dw", "out", [1, 3], [1, 3])]
    zeroed = pm.zeroed_members(model, x, members)
    assert set(zeroed) == {"pw.weight", "pw.bias", "dw.weight", "dw.bias"}
    for c in range(4):
        assert bool((zeroed["dw.weight"][c] == 0).all()) == (c in (1, 3))
        assert bool(zeroed["dw.bias"][c] == 0) == (c in (1, 3))
    assert pm.path_metric(model, zeroed, x) > 0


# ------------------------------------------------------------------ item 2: ranking by log bounds

def deep_mlp(depth=300, width=8, scale=12.0):
    """A ReLU MLP whose path-metrics overflow float64 (weights scaled x12 at 300 layers)."""
    torch.manual_seed(0)
    layers = [nn.Linear(4, width)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, 3)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def test_prune_results_carry_a_finite_log_bound_past_float64():
    model, x = deep_mlp(), torch.randn(1, 4)
    result = pm.prune(model, 0.3, x)
    assert result.certified_bound == math.inf
    assert math.isfinite(result.log_certified_bound) and result.log_certified_bound > 709
    assert result.log_certified_bound == pm.log_path_metric(result.model, model, x)


def test_inc_sampler_ranks_by_log_bounds_past_float64():
    from neural_compressor.torch.quantization import RTNConfig

    from pathmetric.adapters import neural_compressor as pinc
    model, x = deep_mlp(), torch.randn(1, 4)
    configs = [RTNConfig(bits=2, group_size=-1), RTNConfig(bits=8, group_size=-1),
               RTNConfig(bits=4, group_size=-1)]
    sampler = pinc.path_metric_sampler(model, x)(configs)
    assert sampler.bounds == [math.inf] * 3
    assert all(math.isfinite(b) for b in sampler.log_bounds)
    assert list(sampler) == [1, 2, 0]
    per_bit = pinc.path_metric_sampler(model, x, order="bound_per_saved_bit")(configs)
    logs = per_bit.log_bounds
    assert list(per_bit) == sorted(range(3), key=lambda i: logs[i] - math.log(32 - per_bit.bits[i]))


def test_nni_and_torch_pruning_results_carry_a_finite_log_bound_past_float64():
    import torch_pruning as tp

    from pathmetric.adapters import nni as pnni
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step
    model, x = deep_mlp(depth=300), torch.randn(1, 4)
    result = pnni.prune_from_config(model, {"pruner": "path_metric", "config_list": [
        {"op_types": ["Linear"], "sparse_ratio": 0.25, "exclude_op_names": [f"{2 * 299}"]}]}, x)
    assert result.certified_bound == math.inf and math.isfinite(result.log_certified_bound)
    model = deep_mlp(depth=300)
    pruner = tp.pruner.MetaPruner(model, x, importance=PathMetricImportance(x), pruning_ratio=0.25,
                                  ignored_layers=[model[-1]])
    bound = certified_step(pruner, x)
    assert bound == math.inf and math.isfinite(bound.log_certified_bound) and bound.head is None


# ------------------------------------------------------------------ item 3: heads in every output

QUICKSTART = """import sys
sys.path[:0] = [{here!r}, {tests!r}]  # test_reach, and the oracle it imports (tests/bruteforce.py)
from test_reach import QuickstartNet


def make():
    return QuickstartNet()
"""


@pytest.fixture
def quickstart(tmp_path):
    path = tmp_path / "quickstart.py"
    here = Path(__file__).parent
    path.write_text(QUICKSTART.format(here=str(here), tests=str(here.parent)))
    return f"{path}:make"


@pytest.mark.slow
def test_cli_json_gives_the_head_and_the_log_probability_certificate(quickstart, tmp_path, capsys):
    from pathmetric.app.cli import main
    done = subprocess.run([str(Path(sys.executable).parent / "pathmetric"), "prune", quickstart,
                           "--input-shape", "1,1,28,28", "--sparsity", "0.5", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["head"] == "log_softmax" and "logits" in out["notes"][0]
    assert out["head_factor"] == 11
    assert out["log_probabilities_certified_bound"] == 11 * out["certified_bound"] > 0

    def run_json(*argv):
        assert main([str(a) for a in argv] + ["--json"]) == 0
        return json.loads(capsys.readouterr().out)

    plan = run_json("quant-plan", quickstart, "--input-shape", "1,1,28,28", "--avg-bits", 6)
    assert plan["head"] == "log_softmax" and plan["notes"]
    assert plan["log_probabilities_certified_bound"] == 11 * plan["certified_bound"]
    report = run_json("report", quickstart, "--input-shape", "1,1,28,28")
    assert report["head"] == "log_softmax" and report["notes"]
    config = tmp_path / "prune.yaml"
    config.write_text("pruner: path_metric\nconfig_list:\n  - op_types: [Conv2d]\n"
                      "    sparse_ratio: 0.5\n")
    nni = run_json("nni", "prune", "--config", config, "--model", quickstart,
                   "--input-shape", "1,1,28,28")
    assert nni["head"] == "log_softmax" and nni["notes"]
    plain = run_json("prune", "digits", "--sparsity", 0.3)
    assert plain["head"] is None and plain["notes"] == [] and "head_factor" not in plain


def test_adapter_results_give_the_head():
    import torch_pruning as tp
    from neural_compressor.torch.quantization import quantize
    from test_reach import QuickstartNet

    from pathmetric.adapters import neural_compressor as pinc
    from pathmetric.adapters import nni as pnni
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step
    x = torch.randn(1, 1, 28, 28)
    torch.manual_seed(0)
    result = pnni.prune_from_config(QuickstartNet().eval(), {"pruner": "path_metric",
        "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}, x)
    assert result.head == "log_softmax" and result.notes
    net = QuickstartNet().eval()
    pruner = tp.pruner.MetaPruner(net, x, importance=PathMetricImportance(x), pruning_ratio=0.3,
                                  ignored_layers=[net.fc3])
    step = certified_step(pruner, x)
    assert step.head == "log_softmax" and 0 < step < math.inf
    pruned = quantize(QuickstartNet().eval(), pinc.PathMetricConfig(sparsity=0.5), example_inputs=x)
    assert pruned.path_metric_head == "log_softmax"
    assert pruned.path_metric_log_bound == pytest.approx(math.log(pruned.path_metric_bound))


# ------------------------------------------------------------------ item 5: x @ W weights

class MatmulNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.proj = nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        return torch.relu(self.fc(x)) @ self.proj


class AtW(nn.Module):
    """A hidden layer written ``x @ self.W`` (W laid out (in, out)), then a linear head."""
    def __init__(self, weight):
        super().__init__()
        self.W = nn.Parameter(weight.clone())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(x @ self.W))


class LinearW(nn.Module):
    """The same network with the hidden layer an ``nn.Linear`` holding ``W.T``."""
    def __init__(self, at_w):
        super().__init__()
        self.W = nn.Linear(4, 6, bias=False)
        self.head = copy.deepcopy(at_w.head)
        with torch.no_grad():
            self.W.weight.copy_(at_w.W.T)

    def forward(self, x):
        return self.head(torch.relu(self.W(x)))


def _at_w_pair():
    torch.manual_seed(0)
    at_w = AtW(torch.randn(4, 6)).double().eval()
    return at_w, LinearW(at_w).double().eval(), torch.randn(2, 4, dtype=torch.float64)


def test_x_at_w_is_a_layer_with_output_channels_along_dim_1():
    at_w, linear, x = _at_w_pair()
    assert pm.prunable_layers(at_w, x) == pm.prunable_layers(linear, x) == ["W", "head"]
    assert pm.path_norm(at_w, x) == pytest.approx(pm.path_norm(linear, x), rel=1e-12)
    for relative in (False, True):
        mine, theirs = pm.channel_scores(at_w, x, relative), pm.channel_scores(linear, x, relative)
        assert mine.keys() == theirs.keys()
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-10, atol=0)
    members = [pm.Member("W", "out", [1, 4], [0, 1]), ("head", "in", [2, 4], [0, 1])]
    torch.testing.assert_close(pm.group_mass(at_w, x, members, 2),
                               pm.group_mass(linear, x, members, 2), rtol=1e-10, atol=0)
    zeroed = pm.zeroed_members(at_w, x, members)
    assert zeroed["W"][:, [1, 4]].eq(0).all() and zeroed["W"][:, [0, 2, 3, 5]].ne(0).all()
    assert pm.path_metric(at_w, zeroed, x) == pytest.approx(
        pm.path_metric(linear, pm.zeroed_members(linear, x, members), x), rel=1e-10)


@pytest.mark.parametrize("granularity, group_size", [("per_channel", None), ("per_group", 2),
                                                     ("per_tensor", None)])
def test_x_at_w_is_quantized_per_output_channel_like_its_linear_twin(granularity, group_size):
    at_w, linear, x = _at_w_pair()
    args = dict(bits=(2, 4, 8), granularity=granularity, group_size=group_size)
    mine, theirs = pm.layer_sensitivity(at_w, x, **args), pm.layer_sensitivity(linear, x, **args)
    assert mine.keys() == theirs.keys() == {(l, b) for l in ("W", "head") for b in (2, 4, 8)}
    for key in mine:
        assert mine[key] == pytest.approx(theirs[key], rel=1e-9)
    one = dict(bits=3, granularity=granularity, group_size=group_size)
    assert pm.quantization_bound(at_w, x, **one) == pytest.approx(
        pm.quantization_bound(linear, x, **one), rel=1e-9)
    plan = dict(bits=(2, 4, 8), avg_bits=5, granularity=granularity, group_size=group_size)
    assert pm.mixed_precision_plan(at_w, x, **plan).bits == \
        pm.mixed_precision_plan(linear, x, **plan).bits


@pytest.mark.parametrize("structured", [False, True])
def test_x_at_w_prunes_like_its_linear_twin(structured):
    at_w, linear, x = _at_w_pair()
    mine = pm.prune(at_w, 0.5, x, structured=structured, max_layer_sparsity=0.9)
    theirs = pm.prune(linear, 0.5, x, structured=structured, max_layer_sparsity=0.9)
    assert torch.equal(mine.masks["W"], theirs.masks["W.weight"].T)
    assert mine.certified_bound == pytest.approx(theirs.certified_bound, rel=1e-9)
    assert 0 < mine.certified_bound and mine.sparsity == pytest.approx(theirs.sparsity)
    if structured:   # whole output channels: columns of W
        assert (mine.masks["W"].all(dim=0) | ~mine.masks["W"].any(dim=0)).all()


def test_x_at_w_random_rescale_keeps_the_function_and_the_scores():
    at_w, _, x = _at_w_pair()
    rescaled = pm.random_rescale(at_w, x, seed=2)
    assert not torch.allclose(rescaled.W, at_w.W)
    torch.testing.assert_close(rescaled(x), at_w(x), rtol=1e-10, atol=1e-12)
    for name, score in pm.channel_scores(at_w, x).items():
        torch.testing.assert_close(pm.channel_scores(rescaled, x)[name], score, rtol=1e-9, atol=0)


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


def test_weight_scores_cover_x_at_w_weights():
    torch.manual_seed(0)
    model, x = MatmulNet().eval(), torch.randn(2, 4)
    scores = pm.weight_scores(model, x)
    total = pm.path_norm(model, x)
    for i, j in ((0, 0), (3, 2)):   # N(theta) - N(theta with W_ij = 0)
        zeroed = model.proj.detach().clone()
        zeroed[i, j] = 0
        assert float(scores["proj"][i, j]) == pytest.approx(
            total - pm.path_norm(_with(model, proj=zeroed), x), rel=1e-9, abs=1e-12)


def _with(model, **tensors):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(other, name).copy_(value)
    return other


def test_step_certificate_is_a_float_that_pickles_with_its_fields():
    import pickle

    from pathmetric.adapters.torch_pruning import StepCertificate
    step = pickle.loads(pickle.dumps(StepCertificate(2.5, math.log(2.5), "softmax")))
    assert step == 2.5 and isinstance(step, float) and step.head == "softmax"
    assert step.log_certified_bound == math.log(2.5)


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
