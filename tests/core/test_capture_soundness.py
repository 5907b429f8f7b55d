"""Capture soundness (issue 13): nothing a model does escapes the captured graph unseen.

Each test is one of the issue's repro models: the engine must either compute the right number or
refuse with a clear reason, the same way in ``check_support`` and every computation, and leave the
user's model bit for bit as it was.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import model_state, same_state
from torch import nn

import pathmetric as pm

X = torch.randn(1, 3, 8, 8)


def refused_everywhere(model, x, match):
    """check_support refuses with ``match`` in a reason; every computation refuses with the same
    first entry; the model is untouched."""
    before = model_state(model)
    report = pm.check_support(model, x)
    assert not report.ok
    assert any(match in why for _, _, why in report.unsupported), report.unsupported
    other = copy.deepcopy(model)
    for call in (lambda: pm.path_norm(model, x), lambda: pm.log_path_norm(model, x, q=2),
                 lambda: pm.path_metric(model, other, x), lambda: pm.output_bound(model, other, x),
                 lambda: pm.weight_scores(model, x)):
        with pytest.raises(pm.UnsupportedModelError) as info:
            call()
        assert info.value.unsupported[0] == report.unsupported[0]
    assert same_state(before, model_state(model))
    return report


def bound_holds(model, other, x, steps=30):
    """``||R(x) - R'(x)||_1 <= output_bound`` on ``x`` and after sign-gradient ascent from it."""
    x = x.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        gap = (model(x) - other(x)).abs().flatten(1).sum(1)
        (grad,) = torch.autograd.grad(gap.sum(), x)
        with torch.no_grad():
            assert (gap <= pm.output_bound(model, other, x.detach())).all()
        x = (x.detach() + 0.2 * grad.sign())
    return True


# ---------------------------------------------------------------- 1, 2: in-place ops on views

class ViewMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        y = self.conv(x)
        y[:, :2].mul_(100.0)
        return self.fc(F.relu(y).flatten(1))


class NarrowAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        y.narrow(1, 0, 2).add_(z[:, :2])
        return y


def test_in_place_op_on_a_view_is_refused():
    refused_everywhere(ViewMul(), X, "changed in place through a view")


def test_in_place_add_into_a_view_is_refused():
    refused_everywhere(NarrowAdd(), X, "changed in place by 'Tensor.add_'")


def test_writes_through_data_and_setitem_are_refused():
    class Data(ViewMul):
        def forward(self, x):
            y = self.conv(x)
            y.data[:, :2] *= 3.0
            return self.fc(y.flatten(1))

    class SetItem(ViewMul):
        def forward(self, x):
            y = self.conv(x)
            y[:, 0] = 0.0
            return self.fc(y.flatten(1))
    refused_everywhere(Data(), X, "in place")
    refused_everywhere(SetItem(), X, "in place")


def test_in_place_ops_on_whole_activations_still_work():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y, z = self.a(x), self.b(x)
            y.relu_()
            y += z
            y.mul_(2.0)
            return F.relu(y, inplace=True)

    class OutOfPlace(InPlace):
        def forward(self, x):
            return F.relu((F.relu(self.a(x)) + self.b(x)) * 2.0)
    model = InPlace()
    reference = OutOfPlace()
    reference.load_state_dict(model.state_dict())
    before = model_state(model)
    assert pm.check_support(model, X).ok
    assert pm.path_norm(model, X) == pytest.approx(pm.path_norm(reference, X), rel=1e-12)
    assert same_state(before, model_state(model))


def test_replay_writes_in_place_calls_into_copies():
    """The replay check computes what the graph says, not what the aliasing write does."""
    from pathmetric.core.replay import replay
    from pathmetric.core.support import capture
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    graph = capture(model, X)
    assert any(node.inplace for node in graph.nodes)
    x = torch.randn(1, 3, 8, 8)
    pre = model[0](x)
    (out,) = replay(graph, model, [x])
    assert torch.equal(out, F.relu(pre)) and not torch.equal(pre, F.relu(pre))


# ---------------------------------------------------------------- 3: buffer-derived tensors

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("s", torch.rand(4) + 0.5)

    def forward(self, x):
        return self.conv(x) * self.s.view(1, -1, 1, 1)


def _folded(model):
    """The same function with the scale folded into the conv (same path products)."""
    conv = copy.deepcopy(model.conv)
    with torch.no_grad():
        conv.weight.mul_(model.s.view(-1, 1, 1, 1))
        conv.bias.mul_(model.s)
    return conv


def test_buffer_derived_scale_is_read_at_every_call():
    model = Scaled()
    before = model_state(model)
    first = pm.path_norm(model, X)
    assert first == pytest.approx(pm.path_norm(_folded(model), X), rel=1e-6)  # float32 fold
    assert same_state(before, model_state(model))
    with torch.no_grad():
        model.s.fill_(10.0)
    assert pm.path_norm(model, X) == pytest.approx(pm.path_norm(_folded(model), X), rel=1e-6)
    assert pm.path_norm(model, X) != pytest.approx(first, rel=1e-3)


def test_buffer_derived_scale_is_compared_between_models():
    model = Scaled()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.s.mul_(3.0)
    metric = pm.path_metric(model, other, X)
    # |s| grows by 3 on every path: the metric is exactly 2 ||Phi(theta)||_1
    assert metric == pytest.approx(2 * pm.path_norm(model, X), rel=1e-6)
    assert pm.path_metric(model, {"s": other.s}, X) == metric
    assert bound_holds(model, other, torch.randn(16, 3, 8, 8))


def test_division_by_a_buffer_is_a_coefficient_of_the_model_evaluated():
    class Divided(Scaled):
        def forward(self, x):
            return self.conv(x) / self.s.view(1, -1, 1, 1)
    model = Divided()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.s.mul_(0.5)
    assert pm.path_metric(model, other, X) == pytest.approx(pm.path_norm(model, X), rel=1e-6)
    assert bound_holds(model, other, torch.randn(16, 3, 8, 8))


# ---------------------------------------------------------------- 4: Python reads

@pytest.mark.parametrize("read", [lambda t: float(t), lambda t: t.item(),
                                  lambda t: t.tolist()[0], lambda t: int(t), lambda t: t.abs().item()])
def test_parameters_and_buffers_read_into_python_are_refused(read):
    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.g = nn.Parameter(torch.tensor([2.0]))

        def forward(self, x):
            return self.fc(x) * read(self.g)

    class ReadsBuffer(Reads):
        def __init__(self):
            super().__init__()
            self.register_buffer("b", torch.tensor([2.0]))

        def forward(self, x):
            return self.fc(x) * read(self.b)
    report = refused_everywhere(Reads(), torch.zeros(1, 3), "read into Python")
    assert "(g)" in report.unsupported[0][2] or "computed from them" in report.unsupported[0][2]
    refused_everywhere(ReadsBuffer(), torch.zeros(1, 3), "read into Python")


# ---------------------------------------------------------------- 5: train-mode batch norm

def test_functional_train_mode_batch_norm_is_refused_and_buffers_untouched():
    class TrainBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("mean", torch.zeros(4))
            self.register_buffer("var", torch.ones(4))

        def forward(self, x):
            return F.batch_norm(self.conv(x), self.mean, self.var, training=True)
    refused_everywhere(TrainBN(), X, "training=True")


def test_forward_that_updates_a_buffer_is_refused_and_restored():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("calls", torch.zeros(1))

        def forward(self, x):
            self.calls += 1
            return self.fc(x)
    refused_everywhere(Counter(), torch.zeros(1, 3), "writes into the model's parameter or buffer")


# ---------------------------------------------------------------- 6: the cache

def test_cache_follows_module_swaps_code_hooks_and_settings():
    x = torch.zeros(1, 2, 8)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                          nn.Linear(9, 2))

    def fresh():
        return pm.path_norm(copy.deepcopy(model), x)
    assert pm.path_norm(model, x) == fresh()
    model[1] = nn.LeakyReLU(0.5)  # another parameter-free module
    assert pm.path_norm(model, x) == fresh()
    model[1].negative_slope = 0.25  # a setting
    assert pm.path_norm(model, x) == fresh()
    model[2] = nn.Identity()  # the max-pool removed
    model[4] = nn.Linear(18, 2)
    assert pm.path_norm(model, x) == fresh()
    model[2] = nn.AvgPool1d(2)
    model[4] = nn.Linear(9, 2)
    value = pm.path_norm(model, x)
    assert value == fresh()
    model[2].forward = lambda t: F.max_pool1d(t, 2)  # an instance-level forward override
    assert pm.path_norm(model, x) == fresh() != value
    model[1] = nn.GELU()
    with pytest.raises(pm.UnsupportedModelError, match="F.gelu"):
        pm.path_norm(model, x)
    model[1] = nn.ReLU()
    handle = model[1].register_forward_hook(lambda m, i, o: torch.sigmoid(o))
    with pytest.raises(pm.UnsupportedModelError, match="sigmoid"):
        pm.path_norm(model, x)
    handle.remove()
    assert pm.path_norm(model, x) == fresh()


# ---------------------------------------------------------------- 7: large q

def test_large_q_stays_finite_in_log_form_and_q_inf_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5, bias=False), nn.ReLU(), nn.Linear(5, 2, bias=False))
    with torch.no_grad():  # |w| in [0.05, 0.1]: |w|^700 spans 2^700, inside float64's range
        for p in model.parameters():
            p.copy_((0.05 + 0.05 * torch.rand_like(p)) * torch.randn_like(p).sign())
    w1, w2 = (p.detach().double().abs() for p in model.parameters())
    for q in (1.0, 3.0, 700.0):
        # ||Phi||_q^q = sum_{k,j,i} (|w2_kj| |w1_ji|)^q, in logs
        logs = (torch.log(w2)[:, :, None] + torch.log(w1)[None]) * q
        expected = float(torch.logsumexp(logs.flatten(), 0)) / q
        assert pm.log_path_norm(model, torch.zeros(1, 3), q=q) == pytest.approx(expected, rel=1e-9)
    assert pm.path_norm(model, torch.zeros(1, 3), q=700.0) == pytest.approx(
        math.exp(pm.log_path_norm(model, torch.zeros(1, 3), q=700.0)), rel=1e-9)
    with pytest.raises(ValueError, match="too large"):  # |w|^5000 spans 2^5000: refused
        pm.path_norm(model, torch.zeros(1, 3), q=5000.0)
    with pytest.raises(ValueError, match="q = inf"):
        pm.path_norm(model, torch.zeros(1, 3), q=math.inf)


# ---------------------------------------------------------------- 8-10: one shared decision

def test_cat_with_a_constant_buffer_is_bias_neurons():
    class CoordConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(5, 4, 3)
            self.register_buffer("coords", torch.randn(1, 2, 8, 8))

        def forward(self, x):
            return self.conv(torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], 1))
    model = CoordConv()
    assert pm.check_support(model, X).ok
    w, b = model.conv.weight.detach().double().abs(), model.conv.bias.detach().double().abs()
    expected = (F.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.float64), w[:, :3])
                + F.conv2d(model.coords.double().abs(), w[:, 3:])).sum() + 36 * b.sum()
    assert pm.path_norm(model, X) == pytest.approx(float(expected), rel=1e-12)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.coords.mul_(-2.0)
        other.conv.weight.mul_(0.9)
    assert bound_holds(model, other, torch.randn(8, 3, 8, 8))


def test_3d_max_pool_whose_kernel_exceeds_the_input():
    class Pool3d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(2, 3, 1)

        def forward(self, x):
            return F.max_pool3d(self.conv(x), (3, 3, 3), (2, 2, 2), (1, 1, 1))
    model = Pool3d()
    x = torch.zeros(1, 2, 1, 4, 4)
    assert pm.check_support(model, x).ok
    lifted = (model.conv.weight.detach().double().abs().sum((1, 2, 3, 4))
              + model.conv.bias.detach().double().abs())  # per channel, at every position
    # each output window sums the valid entries it covers: depth 1, rows/cols {0,1} or {1,2,3}
    windows = sum(a * b for a in (2, 3) for b in (2, 3))
    assert pm.path_norm(model, x) == pytest.approx(float(lifted.sum()) * windows, rel=1e-12)


def test_conv_with_a_buffer_kernel_is_a_fixed_linear_map():
    class Blur(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("kernel", torch.tensor([1.0, 2.0, 1.0]).outer(
                torch.tensor([1.0, 2.0, 1.0])).div(16).expand(4, 1, 3, 3).clone())

        def forward(self, x):
            return F.conv2d(F.pad(self.conv(x), (1, 1, 1, 1), mode="reflect"), self.kernel,
                            stride=2, groups=4)

    class Expanded(Blur):
        def forward(self, x):
            kernel = self.kernel[:1].expand(4, -1, -1, -1)
            return F.conv2d(F.pad(self.conv(x), (1, 1, 1, 1), mode="reflect"), kernel,
                            stride=2, groups=4)
    model, expanded = Blur(), Expanded()
    expanded.load_state_dict(model.state_dict())
    assert pm.check_support(model, X).ok
    assert pm.path_norm(model, X) == pytest.approx(pm.path_norm(expanded, X), rel=1e-12)
    from pathmetric import reports  # reports read buffer-derived kernels too
    assert reports.classical_vs_path(expanded, copy.deepcopy(expanded), X)["path_metric"] == 0.0
    assert "conv.weight" in pm.weight_scores(model, X) and "kernel" not in pm.weight_scores(model, X)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.kernel[:, :, 1, 1] *= -1.5
    assert pm.path_metric(model, other, X) > 0
    assert bound_holds(model, other, torch.randn(8, 3, 8, 8))


def test_prelu_slope_outside_the_unit_interval_is_known_to_check_support():
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
    refused_everywhere(model, torch.zeros(1, 3), "PReLU slope")
    with torch.no_grad():
        model[1].weight.fill_(0.5)
    assert pm.check_support(model, torch.zeros(1, 3)).ok


# ---------------------------------------------------------------- 11: true refusal reasons

def test_ops_after_a_refusal_get_their_own_reason_or_none():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.tail = nn.Threshold(0.5, 0.0)

        def forward(self, x):
            y = F.gelu(self.a(x))
            z = y + self.b(x)                      # a residual add: a consequence, not listed
            z = torch.cat([z, self.b(x)], 1)       # a concatenation: not listed
            z = z * torch.sigmoid(z)               # refused by itself: listed with its reason
            return self.tail(z + 1.0)              # a constant added (a shared bias): fine;
                                                   # threshold(0.5, 0): its own, true reason
    report = pm.check_support(Mixed(), X)
    ops = [op for op, _, _ in report.unsupported]
    assert ops[0] == "F.gelu" and "torch.sigmoid" in ops
    assert "torch.cat" not in ops and all("weight computed" not in why
                                          for _, _, why in report.unsupported)
    assert not [op for op in ops if op.endswith("add")]
    tails = [(path, why) for op, path, why in report.unsupported if "threshold" in op]
    assert len(tails) == 1 and tails[0][0] == "tail" and "discontinuity" in tails[0][1]


# ---------------------------------------------------------------- 12: clear errors

def test_clear_errors_for_scripted_meta_empty_inference_and_integer_inputs():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.zeros(1, 3)
    for scripted in (torch.jit.script(model), torch.jit.trace(model, x)):
        with pytest.raises(pm.UnsupportedModelError, match="TorchScript"):
            pm.path_norm(scripted, x)
        assert "TorchScript" in pm.check_support(scripted, x).unsupported[0][2]
    with pytest.raises(pm.ModelCaptureError, match="meta device"):
        pm.path_norm(copy.deepcopy(model).to("meta"), x)
    before = model_state(model)
    assert pm.output_bound(model, copy.deepcopy(model), torch.zeros(0, 3)).shape == (0,)
    expected = pm.weight_scores(model, x)
    with torch.inference_mode():
        scores = pm.weight_scores(model, x)
    assert all(torch.equal(scores[k], expected[k]) for k in expected)
    assert same_state(before, model_state(model))
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(pm.UnsupportedModelError, match="torch.int64 input"):
        pm.path_norm(embedding, torch.tensor([[1, 2]]))
    assert pm.check_support(embedding, torch.tensor([[1, 2]])).unsupported[0][0] == "input"


# ---------------------------------------------------------------- 13: the knapsack

def test_mixed_precision_plan_never_misses_a_plan_that_fits():
    model = nn.Sequential(nn.Linear(300, 400), nn.ReLU(), nn.Linear(400, 70))
    x = torch.zeros(1, 300)
    plan = pm.mixed_precision_plan(model, x, bits=(4,), avg_bits=4)
    assert plan.avg_bits == 4.0
    plan = pm.mixed_precision_plan(model, x, bits=(2, 8), avg_bits=2)
    assert plan.avg_bits == 2.0
    budget = (300 * 400 + 400 * 70) * 8  # all 8 bits fits exactly (not on a grid of 12 bits)
    plan = pm.mixed_precision_plan(model, x, bits=(2, 8), size_bits=budget)
    assert plan.bits == {"0": 8, "2": 8}
    with pytest.raises(ValueError, match="no assignment"):
        pm.mixed_precision_plan(model, x, bits=(4,), size_bits=budget // 4)


def test_int8_model_gets_one_true_reason():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(Warning):  # torch.ao's deprecation notice
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    report = pm.check_support(quantized, torch.zeros(1, 4))
    assert not report.ok and all("quantized" in why for _, _, why in report.unsupported)


def test_forward_that_writes_into_a_parameter_is_refused_and_the_parameter_kept():
    class Clamp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            self.fc.weight.data.clamp_(-0.1, 0.1)
            with torch.no_grad():
                self.fc.bias.mul_(2.0)
            return self.fc(x)
    model = Clamp()
    with torch.no_grad():
        model.fc.weight.fill_(0.5)
    refused_everywhere(model, torch.zeros(1, 3), "writes into the model's parameter")
    assert (model.fc.weight == 0.5).all()
