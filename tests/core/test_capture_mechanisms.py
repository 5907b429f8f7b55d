"""Capture soundness, round 2 (issue 21): each mechanism by which model code escaped capture.

Two models differing in a constant, value-changing casts, ops across the batch dimension, random
ops, forward side effects on the model and state the cache key did not see. Every case also
checks that the model is left bit for bit as it was (``conftest.model_state``).
"""
import copy
import random
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import model_state, same_state
from torch import nn

import pathmetric as pm
from pathmetric.core.support import forget

X = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3


def refused(model, x, match):
    """``check_support`` and ``path_norm`` refuse ``model`` for a reason matching ``match``, and
    leave it (and the global random generator) as it was."""
    before, rng = model_state(model), torch.random.get_rng_state()
    report = pm.check_support(model, x)
    assert not report.ok and re.search(match, str(report)), str(report)
    with pytest.raises(pm.UnsupportedModelError, match=match):
        pm.path_norm(model, x)
    assert same_state(before, model_state(model))
    assert torch.equal(rng, torch.random.get_rng_state())


class Net(nn.Module):
    """conv -> ``step`` -> relu -> linear head, on (n, 2, 8) inputs, in float64."""

    def __init__(self, step=None, act=None, conv=None, dtype=torch.float64):
        super().__init__()
        self.conv = conv or nn.Conv1d(2, 2, 3, padding=1)
        self.act = act or nn.ReLU()
        self.head = nn.Linear(16, 2)
        self.step = step
        self.to(dtype)

    def forward(self, x):
        h = self.conv(x)
        h = self.step(self, h) if self.step else h
        return self.head(self.act(h).flatten(1))


# ---------------------------------------------------------------- item 1: constants of a pair

class Scale(nn.Module):
    def __init__(self, scale, mode="nearest"):
        super().__init__()
        self.scale = scale
        self.mode = mode
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.head = nn.Linear(16, 2)
        self.double()

    def forward(self, x):
        h = F.relu(self.conv(x)) * self.scale
        h = F.interpolate(h[:, :, ::2], scale_factor=2, mode=self.mode)
        return self.head(h.flatten(1))


class PlainWeight(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.double()

    def forward(self, x):
        return F.linear(F.relu(self.conv(x)).flatten(1), self.w)


PAIRS = {
    "leaky_relu slope": (lambda: Net(act=nn.LeakyReLU(0.01)), lambda: Net(act=nn.LeakyReLU(0.9)),
                         r"negative_slope' is 0\.01 vs 0\.9"),
    "relu6 vs hardtanh(0, 1)": (lambda: Net(act=nn.ReLU6()), lambda: Net(act=nn.Hardtanh(0, 1)),
                                "max_val"),
    "batch norm eps": (lambda: Net(act=nn.Sequential(nn.BatchNorm1d(2), nn.ReLU())),
                       lambda: Net(act=nn.Sequential(nn.BatchNorm1d(2, eps=0.5), nn.ReLU())),
                       "eps"),
    "interpolation mode": (lambda: Scale(1.0), lambda: Scale(1.0, "linear"), "mode"),
    "dilation": (lambda: Net(conv=nn.Conv1d(2, 2, 3, padding=1)),
                 lambda: Net(conv=nn.Conv1d(2, 2, 3, padding=2, dilation=2)), "padding"),
    "padding mode": (lambda: Net(conv=nn.Conv1d(2, 2, 3, padding=1)),
                     lambda: Net(conv=nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")),
                     "first difference"),
    "float attribute": (lambda: Scale(1.0), lambda: Scale(2.0), "1.0 vs 2.0"),
    "plain tensor attribute": (lambda: Scale(torch.ones(2, 1, dtype=torch.float64)),
                               lambda: Scale(torch.full((2, 1), 2.0, dtype=torch.float64)),
                               "constant tensor"),
    "weight held as a plain tensor": (lambda: PlainWeight(torch.ones(2, 16, dtype=torch.float64)),
                                      lambda: PlainWeight(torch.eye(2, 16, dtype=torch.float64)),
                                      "'weight' is a constant tensor"),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_two_models_differing_in_a_constant_are_refused_naming_it(case):
    make_a, make_b, match = PAIRS[case]
    torch.manual_seed(0)
    a, b = make_a(), make_b()
    b.load_state_dict(a.state_dict())
    assert (a(X) - b(X)).abs().max() > 1e-3  # the two functions differ
    before_a, before_b = model_state(a), model_state(b)
    for call in (lambda: pm.path_metric(a, b, X), lambda: pm.output_bound(a, b, X)):
        with pytest.raises(ValueError, match="first difference") as info:
            call()
        assert re.search(match, str(info.value)), str(info.value)
    assert same_state(before_a, model_state(a)) and same_state(before_b, model_state(b))


def test_identical_constants_still_make_a_pair():
    a, b = Scale(torch.ones(2, 1, dtype=torch.float64)), Scale(torch.ones(2, 1, dtype=torch.float64))
    b.load_state_dict(a.state_dict())
    assert pm.path_metric(a, b, X) == 0.0


# ---------------------------------------------------------------- item 3: the batch dimension

BATCH_OPS = {
    "roll over dim 0": lambda m, h: torch.roll(h, 1, 0),
    "flip(0)": lambda m, h: h.flip(0),
    "sum(0)": lambda m, h: h.sum(0, keepdim=True).expand_as(h),
    "x - x.mean(0)": lambda m, h: h - h.mean(0),
    "branch on the batch size": lambda m, h: h * 2 if h.shape[0] == 1 else h,
    # the identity on a batch of two rows: why the per-sample check runs a batch of three
    "roll then flip over dim 0": lambda m, h: torch.roll(h, 1, 0).flip(0),
    "roll by two over dim 0": lambda m, h: torch.roll(h, 2, 0),
    "branch on a batch of more than two": lambda m, h: h * 2 if h.shape[0] > 2 else h,
}


@pytest.mark.parametrize("case", sorted(BATCH_OPS))
def test_ops_across_the_batch_dimension_are_refused(case):
    refused(Net(BATCH_OPS[case]), X, "batch")


class SummedOutput(Net):
    def forward(self, x):
        return super().forward(x).sum()


def test_an_output_summed_over_the_batch_is_refused():
    refused(SummedOutput(), X, "batch dimension")


class DoublesItsInput(Net):
    def forward(self, x):
        x.mul_(2)
        return super().forward(x)


def test_a_forward_writing_into_its_input_is_the_function_it_computes():
    """``x.mul_(2)`` in forward is a per-sample function (2x then the net): the per-sample check
    compares against the capture sample as drawn, not as the forward left it (it refused with
    'a sample's output changes when other samples are in the batch'); the user's input is
    untouched."""
    model, twin = DoublesItsInput(), Net(lambda m, h: h)
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        twin.conv.weight.mul_(2)
    x = X.clone()
    assert pm.path_norm(model, x) == pytest.approx(pm.path_norm(twin, x), rel=1e-12)
    assert torch.equal(x, X)


# ---------------------------------------------------------------- item 4: random numbers

RANDOM_OPS = {
    "F.dropout (training=True by default)": lambda m, h: F.dropout(h, 0.5),
    "F.dropout with p=1": lambda m, h: F.dropout(h, 1.0),
    "rand_like": lambda m, h: h + torch.rand_like(h),
    "bernoulli": lambda m, h: h * torch.bernoulli(torch.full(h.shape, 0.5, dtype=h.dtype)),
    "a generator passed": lambda m, h: h + torch.randn(h.shape, dtype=h.dtype,
                                                       generator=torch.Generator()),
    "rrelu in training mode": lambda m, h: F.rrelu(h, training=True),
    # drawn outside torch, and so rarely that the batch and replay checks never see a difference
    "Python's random": lambda m, h: h * (3.0 if random.random() > 0.999 else 1.0),
    "NumPy's np.random": lambda m, h: h * (3.0 if np.random.rand() > 0.999 else 1.0),
}


@pytest.mark.parametrize("case", sorted(RANDOM_OPS))
def test_random_ops_are_refused_whatever_the_seed(case):
    for seed in range(5):
        torch.manual_seed(seed)
        refused(Net(RANDOM_OPS[case]), X, "random")


def test_the_global_generators_are_left_as_they_were():
    random.seed(1)
    np.random.seed(1)
    expected = random.random(), np.random.rand()
    random.seed(1)
    np.random.seed(1)
    refused(Net(RANDOM_OPS["Python's random"]), X, "random")
    refused(Net(RANDOM_OPS["NumPy's np.random"]), X, "random")
    assert (random.random(), np.random.rand()) == expected


def test_dropout_in_eval_mode_and_with_training_false_is_the_identity():
    plain = Net()
    for step in (lambda m, h: F.dropout(h, 0.5, training=False),
                 lambda m, h: F.dropout(h, 0.5, training=m.training)):
        model = Net(step)
        model.load_state_dict(plain.state_dict())
        assert pm.path_norm(model, X) == pm.path_norm(plain, X)


# ---------------------------------------------------------------- item 2: casts

CASTS = {
    ".to(int32)": lambda m, h: h.to(torch.int32).to(h.dtype),
    ".type(int64)": lambda m, h: h.type(torch.int64).type(h.dtype),
    ".to(uint8)": lambda m, h: h.to(torch.uint8).to(h.dtype),
    ".to(bool)": lambda m, h: h.to(torch.bool).to(h.dtype),
    ".half()": lambda m, h: h.half().to(h.dtype),
    ".bfloat16()": lambda m, h: h.bfloat16().to(h.dtype),
    ".float() on float64": lambda m, h: h.float().to(h.dtype),
}


@pytest.mark.parametrize("case", sorted(CASTS))
def test_value_changing_casts_are_refused(case):
    refused(Net(CASTS[case]), X, "cast from torch.float")


def test_value_preserving_casts_pass():
    plain = Net(dtype=torch.float32)
    for step in (lambda m, h: h.to(torch.float32), lambda m, h: h.type(torch.float32)):
        model = Net(step, dtype=torch.float32)
        model.load_state_dict(plain.state_dict())
        assert pm.path_norm(model, X.float()) == pm.path_norm(plain, X.float())

    class Widened(Net):
        def forward(self, x):
            return super().forward(x).double()
    widened = Widened(dtype=torch.float32)
    widened.load_state_dict(plain.state_dict())
    assert pm.path_norm(widened, X.float()) == pm.path_norm(plain, X.float())


def test_random_rescale_refuses_an_integer_cast():
    model = Net(CASTS[".to(int32)"])
    before = model_state(model)
    with pytest.raises(pm.UnsupportedModelError, match="cast"):
        pm.random_rescale(model, X)
    assert same_state(before, model_state(model))


# ---------------------------------------------------------------- item 8: forward side effects

class Counter(Net):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.seen = []
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls += 1
        self.seen.append(x.shape[0])
        return super().forward(x)


class RebindsBuffer(Counter):
    def forward(self, x):
        self.count = self.count + 1
        return super().forward(x)


class WritesData(Net):
    def forward(self, x):
        self.head.weight.data = self.head.weight.data * 0.5
        return super().forward(x)


class TrainOverride(Net):
    def train(self, mode=True):
        super().train(mode)
        for p in self.parameters():
            p.requires_grad_(mode)
        return self


def test_a_buffer_rebound_or_data_written_in_forward_is_refused_and_restored():
    refused(RebindsBuffer(), X, r"changes \['count'\]")
    refused(WritesData(), X, r"changes \['head.weight'\]")


class WritesUnseen(Net):
    """Writes into a parameter's memory where the recorder cannot see it (no version bump); with
    ``once``, on the capture's recorded run alone (batch size 1)."""

    def __init__(self, how, once=False, step=None):
        super().__init__(step)
        self.how, self.once = how, once

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            if self.once and x.shape[0] > 1:
                pass
            elif self.how == "data":
                self.head.weight.data.mul_(0.5)
            else:
                self.head.weight.detach().numpy()[0, 0] += 1.0
        return super().forward(x)


def _fake_quantized(m, h):
    return torch.fake_quantize_per_tensor_affine(h, 0.01, 0, -128, 127)


@pytest.mark.parametrize("once", [False, True])
@pytest.mark.parametrize("how", ["data", "numpy"])
def test_a_parameter_written_with_torch_functions_disabled_is_refused_and_restored(how, once):
    """Refused whether every run writes or only the recorded one (the parameters are compared
    with their copy after the per-sample check's run), and on a graph with quantization points,
    whose per-sample check may draw new samples again, as well."""
    refused(WritesUnseen(how, once), X, r"changes \['head.weight'\]")
    refused(WritesUnseen(how, once, _fake_quantized), X, r"changes \['head.weight'\]")


class WritesThenFails(WritesUnseen):
    def forward(self, x):
        super().forward(x)
        raise ValueError("the model's own error")


@pytest.mark.parametrize("how", ["data", "numpy"])
def test_a_forward_that_writes_unseen_then_fails_leaves_the_parameters_as_they_were(how):
    model = WritesThenFails(how)
    before = model_state(model)
    with pytest.raises(pm.ModelCaptureError, match="the model's own error"):
        pm.path_norm(model, X)
    assert same_state(before, model_state(model))


class WritesOnABatch(Net):
    """Adds to a parameter in place (its version counter bumped) on a batch alone, so that the
    recorded run (batch size 1) does not."""

    def forward(self, x):
        if x.shape[0] > 1:
            with torch.no_grad():
                self.head.weight.add_(1.0)
        return super().forward(x)


def test_a_parameter_written_in_place_on_a_batch_alone_is_refused_and_restored():
    refused(WritesOnABatch(), X, r"changes \['head.weight'\]")


def test_every_public_call_leaves_counters_lists_and_flags_as_they_were():
    for model in (Counter(), TrainOverride()):
        model.train()
        before = model_state(model)
        pm.check_support(model, X)
        pm.path_norm(model, X)
        pm.weight_scores(model, X)
        pm.path_metric(model, model, X)
        assert same_state(before, model_state(model))
        assert all(p.requires_grad for p in model.parameters()) and model.training
        assert getattr(model, "calls", 0) == 0 and getattr(model, "seen", []) == []


# ---------------------------------------------------------------- item 5: state the cache sees

SCALE = 1.0
DEEP = 1.0
METHOD = 1.0
NESTED = 1.0
HELD = 1.0
CONFIG = types.ModuleType("config")   # read as config.FACTOR, a module attribute
CONFIG.FACTOR = 1.0
ELSEWHERE = types.ModuleType("elsewhere")   # a helper imported from another module
exec("FACTOR = 1.0\ndef scaled(h):\n    return h * FACTOR\n", ELSEWHERE.__dict__)
scaled = ELSEWHERE.scaled


def _one(h):
    return _two(h)


def _two(h):
    return scaled(_three(h))


def _three(h):
    return h * DEEP   # a global read three calls below forward


def _held(h):
    return h * HELD   # a global read by a function held as a module attribute


class Stateful(nn.Module):
    factor = 1.0

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.t = torch.ones(2, 1, dtype=torch.float64)
        self.big = torch.ones(1 << 20, dtype=torch.float64)  # 8 MiB
        self.held = _held
        self.items = [1.0]
        self.table = {"a": 1.0}
        self.np = np.float64(1.0)
        self.pool = nn.AdaptiveAvgPool1d([4])
        self.head = nn.Linear(8, 2)
        self.double()

    def forward(self, x):
        h = F.relu(self.conv(x)) * self.t * self.items[0] * self.table["a"]
        h = h * float(self.np) * self.factor * SCALE * self.big[-1]
        h = self.held(_one(h)) * self.from_method() * CONFIG.FACTOR

        def nested(v):
            return v * NESTED
        h = sum(nested(v) for v in (h,))
        return self.head(self.pool(h).flatten(1)[:, :8])

    def from_method(self):
        return METHOD


def _change_global(name="SCALE"):
    globals()[name] = 10.0


CHANGES = {
    "tensor attribute via .data": lambda m: setattr(m.t, "data", m.t.data * 10),
    "tensor attribute via .data.copy_": lambda m: m.t.data.copy_(m.t * 10),
    "tensor attribute over 4 MiB via .data": lambda m: m.big.data.__setitem__(-1, 10.0),
    "list item": lambda m: m.items.__setitem__(0, 10.0),
    "dict item": lambda m: m.table.__setitem__("a", 10.0),
    "numpy scalar": lambda m: setattr(m, "np", np.float64(10.0)),
    "class attribute": lambda m: setattr(Stateful, "factor", 10.0),
    "global": lambda m: _change_global(),
    "global three calls deep": lambda m: _change_global("DEEP"),
    "global read by another method": lambda m: _change_global("METHOD"),
    "global read in a nested function": lambda m: _change_global("NESTED"),
    "global read by a function held as an attribute": lambda m: _change_global("HELD"),
    "module attribute": lambda m: setattr(CONFIG, "FACTOR", 10.0),
    "global of a function imported from another module": lambda m: ELSEWHERE.__dict__.__setitem__(
        "FACTOR", 10.0),
    "output_size list item": lambda m: m.pool.output_size.__setitem__(0, 8),
}


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_the_cache_sees_state_outside_parameters(case, monkeypatch):
    monkeypatch.setattr(Stateful, "factor", 1.0)
    for name in ("SCALE", "DEEP", "METHOD", "NESTED", "HELD"):
        monkeypatch.setitem(globals(), name, 1.0)
    monkeypatch.setattr(CONFIG, "FACTOR", 1.0)
    monkeypatch.setitem(ELSEWHERE.__dict__, "FACTOR", 1.0)
    model = Stateful()
    old = pm.path_norm(model, X)
    CHANGES[case](model)
    cached = pm.path_norm(model, X)
    forget(model)
    assert cached == pm.path_norm(model, X) and cached != old


# ---------------------------------------------------------------- items 6, 10

class OneSampleMean(nn.Module):
    """A model written for one sample at a time (``reshape(16)``) ending in a mean over all dims."""

    def __init__(self, no_dims):
        super().__init__()
        self.no_dims = no_dims
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.double()

    def forward(self, x):
        h = F.relu(self.conv(x)).reshape(16)
        return (h.mean(dim=()) if self.no_dims else h.mean())[None, None]


def test_mean_over_no_dims_is_the_mean_over_all_at_any_q():
    a, b = OneSampleMean(False), OneSampleMean(True)
    b.load_state_dict(a.state_dict())
    for q in (1.0, 2.0):
        assert pm.path_norm(b, X[:1], q=q) == pm.path_norm(a, X[:1], q=q)


class Disabled(Net):
    """A branch on parameters computed with torch functions disabled (invisible to capture)."""

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            weight = self.head.weight * 1.0
        return F.linear(F.relu(self.conv(x)).flatten(1), weight, self.head.bias)


def test_a_branch_under_disabled_torch_functions_is_not_a_silent_zero():
    torch.manual_seed(0)
    a, b = Disabled(), Disabled()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.head.weight.mul_(3)
    with pytest.raises(ValueError, match="first difference"):
        pm.path_metric(a, b, X)


def test_float32_precision_on_a_float64_model_is_refused():
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.head.weight.add_(1e-12)
    with pytest.raises(ValueError, match="precision"):
        pm.path_metric(a, b, X, precision="float32")
    assert pm.path_metric(a, b, X) > 0


def test_low_precision_models_are_told_certificates_are_for_exact_arithmetic():
    model = Net(dtype=torch.bfloat16)
    report = pm.check_support(model, X.bfloat16())
    assert report.ok and any("exact arithmetic" in note for note in report.notes)


class ScaledBias(Net):
    """``torch.add(h, b, alpha=0.5)`` with a parameter ``b``."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.rand(2, 1, dtype=torch.float64) + 0.5)

    def forward(self, x):
        return self.head(F.relu(torch.add(self.conv(x), self.b, alpha=0.5)).flatten(1))


def test_a_parameter_added_with_alpha_has_a_weight_score():
    model = ScaledBias()
    before = model_state(model)
    scores = pm.weight_scores(model, X)
    assert "b" in scores and scores["b"].shape == model.b.shape and (scores["b"] > 0).all()
    without_b = copy.deepcopy(model)
    with torch.no_grad():
        without_b.b.zero_()
    assert float(scores["b"].sum()) == pytest.approx(
        pm.path_norm(model, X) - pm.path_norm(without_b, X), rel=1e-9)
    assert same_state(before, model_state(model))


# ---------------------------------------------------------------- item 9: clear errors

class WithState(Net):
    def __init__(self, step, scripted=False):
        super().__init__(step)
        self.register_buffer("zero", torch.zeros(2, 1, dtype=torch.float64))
        self.register_buffer("negative_var", -torch.ones(2, dtype=torch.float64))
        self.register_buffer("slope", torch.tensor(0.1, dtype=torch.float64))
        self.sub = torch.jit.script(nn.ReLU()) if scripted else nn.ReLU()


CRASHES = {
    "hstack with a constant": (lambda m, h: torch.hstack(
        [h, torch.ones(h.shape[0], 1, 8, dtype=h.dtype)])[:, :2], "hstack"),
    "ones(...).expand_as(h)": (lambda m, h: h + torch.ones(1, 2, 1, dtype=h.dtype).expand_as(h),
                               "cannot evaluate"),
    "division by a zero buffer": (lambda m, h: h / m.zero, "div.*not finite"),
    "a negative running_var": (lambda m, h: F.batch_norm(
        h, torch.zeros(2, dtype=h.dtype), m.negative_var, training=False), "batch_norm.*not finite"),
    "x * 1j": (lambda m, h: (h * 1j).real, "complex"),
    "a buffer as leaky-relu slope": (lambda m, h: F.leaky_relu(h, m.slope), "F.leaky_relu"),
    "a buffer as pad value": (lambda m, h: F.pad(h, (1, 1), value=m.slope)[:, :, 1:-1], "F.pad"),
    "a scripted submodule": (lambda m, h: m.sub(h), "TorchScript"),
}


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_engine_failures_are_clear_refusals_naming_the_op(case):
    step, match = CRASHES[case]
    model = WithState(step, scripted=case == "a scripted submodule")
    before = model_state(model)
    with pytest.raises(pm.UnsupportedModelError, match=match):
        pm.path_norm(model, X)
    assert same_state(before, model_state(model))


def test_output_head_is_read_off_the_cached_graph():
    from pathmetric.core.support import cached_graph

    class LogSoftmax(Net):
        def forward(self, x):
            return F.log_softmax(super().forward(x), dim=1)
    model = LogSoftmax()
    before = model_state(model)
    assert pm.output_head(model, X) == "log_softmax"
    graph = cached_graph(model)
    assert pm.output_head(model, X) == "log_softmax" and cached_graph(model) is graph
    assert pm.output_head(Net(), X) is None
    assert same_state(before, model_state(model))


# ---------------------------------------------------------------- item 6: the sign test

def _flipped(magnitude):
    """A float32 ``Net`` with ``conv.weight[0, 0, 0] = magnitude``, the same model with that
    weight negated, and the model with it zeroed (theta'' of the sign rule)."""
    torch.manual_seed(0)
    model = Net(dtype=torch.float32)
    with torch.no_grad():
        model.conv.weight[0, 0, 0] = magnitude
    flipped, mid = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        flipped.conv.weight[0, 0, 0] = -magnitude
        mid.conv.weight[0, 0, 0] = 0.0
    return model, flipped, mid


def test_a_sign_flip_of_a_tiny_float32_weight_is_a_sign_conflict():
    x = X.float()
    tiny, flipped, mid = _flipped(1e-30)          # 1e-30 * -1e-30 underflows to -0.0 in float32
    before = model_state(tiny)
    metric = pm.path_metric(tiny, flipped, x[:1])
    # the sign rule: d(theta, theta'') + d(theta'', theta'), each pair in one orthant
    assert metric == pytest.approx(pm.path_metric(tiny, mid, x[:1])
                                   + pm.path_metric(mid, flipped, x[:1]), rel=1e-9, abs=0)
    assert metric > 0
    # the same certificate per unit of the weight as a flip of a 1e-3 weight
    large, large_flipped, _ = _flipped(1e-3)
    assert metric / 1e-30 == pytest.approx(pm.path_metric(large, large_flipped, x[:1]) / 1e-3,
                                           rel=1e-5, abs=0)
    bound = pm.output_bound(tiny, flipped, x).double()
    exact = [copy.deepcopy(m).double()(X) for m in (tiny, flipped)]     # the gap in float64
    assert ((exact[0] - exact[1]).abs().sum(1) <= bound).all()
    assert (bound > 0).all()     # the outputs do move (by ~1e-30, below float64's resolution)
    assert same_state(before, model_state(tiny))


# ---------------------------------------------------------------- item 2: cast round trips

ROUND_TRIPS = {
    ".double().float()": lambda m, h: h.double().float(),
    ".double().to(float64).type(float32)": lambda m, h: h.double().to(torch.float64).type(
        torch.float32),
    ".double().to(h.dtype)": lambda m, h: h.double().to(h.dtype),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_a_cast_back_after_widening_casts_only_passes(case):
    plain = Net(dtype=torch.float32)
    model = Net(ROUND_TRIPS[case], dtype=torch.float32)
    model.load_state_dict(plain.state_dict())
    before = model_state(model)
    assert pm.path_norm(model, X.float()) == pm.path_norm(plain, X.float())
    assert same_state(before, model_state(model))


def test_a_cast_back_after_arithmetic_in_the_wider_dtype_is_refused():
    # h * 1.5 in float64 needs one more bit than float32 holds: the cast back rounds
    model = Net(lambda m, h: (h.double() * 1.5).float(), dtype=torch.float32)
    refused(model, X.float(), "cast from torch.float64 to torch.float32")


# ---------------------------------------------------------------- item 9: a root-module batch_norm

class RootBatchNorm(nn.Module):
    """conv -> ``F.batch_norm`` with the root module's own parameters and buffers (a BatchNorm
    whose module path is '') -> relu -> 1x1 conv; ``submodule=True``: the same with an
    ``nn.BatchNorm1d`` child."""

    def __init__(self, submodule=False):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.conv = nn.Conv1d(2, 4, 3, padding=1).double()
        self.head = nn.Conv1d(4, 2, 1).double()
        state = {"weight": torch.rand(4, generator=generator, dtype=torch.float64) + 0.5,
                 "bias": torch.randn(4, generator=generator, dtype=torch.float64),
                 "running_mean": torch.randn(4, generator=generator, dtype=torch.float64),
                 "running_var": torch.rand(4, generator=generator, dtype=torch.float64) + 0.5}
        self.bn = nn.BatchNorm1d(4).double().eval() if submodule else None
        owner = self.bn or self
        for name in ("weight", "bias"):
            setattr(owner, name, nn.Parameter(state[name]))
        for name in ("running_mean", "running_var"):
            if submodule:
                getattr(owner, name).copy_(state[name])
            else:
                self.register_buffer(name, state[name])

    def forward(self, x):
        h = self.conv(x)
        h = self.bn(h) if self.bn is not None else F.batch_norm(
            h, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5)
        return self.head(F.relu(h))


@pytest.mark.parametrize("relative", [False, True])
def test_channel_scores_with_a_batch_norm_in_the_root_module(relative):
    root, child = RootBatchNorm().eval(), RootBatchNorm(submodule=True).eval()
    for name in ("conv", "head"):
        getattr(child, name).load_state_dict(getattr(root, name).state_dict())
    assert torch.equal(root(X), child(X))
    before = model_state(root)
    scores = pm.channel_scores(root, X, relative=relative)
    expected = pm.channel_scores(child, X, relative=relative)
    assert scores.keys() == expected.keys() == {"conv", "head"}
    for name in scores:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-12, atol=0)
    assert same_state(before, model_state(root))
