"""Property test of capture soundness (issues 13 and 21): hypothesis builds small models from a
vocabulary that includes in-place ops on views, buffer arithmetic, Python reads of tensors, module
swaps between two calls, constants held as attributes (which the second model of a pair may hold
with other values), value-changing casts, ops across the batch dimension, random ops, forward
side effects and state outside parameters changed between two calls. For each model, either
``check_support`` refuses it and every computation refuses it the same way, or ``path_norm``
equals the value of a fresh capture, a pair whose constants differ is refused, and
``output_bound`` holds on random and gradient-ascent inputs. No silent mismatch is allowed, and
the model is left bit for bit as it was.

``SOUNDNESS_EXAMPLES`` (environment) raises the example count for a measurement run.
"""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import model_state, same_state
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import pathmetric as pm

C, L = 2, 6
EXAMPLES = int(os.environ.get("SOUNDNESS_EXAMPLES", 200))

# step -> must the engine refuse a model containing it? (None: when it changes the function, which
# a step across the batch dimension need not do, e.g. after a ReLU that is zero on every input)
VOCABULARY = {
    "conv": False, "relu": False, "relu_": False, "residual_iadd": False, "maxpool": False,
    "avgpool": False, "leaky": False, "act_module": False, "buffer_mul": False,
    "buffer_div": False, "buffer_cat": False, "frozen_batch_norm": False, "buffer_kernel": False,
    "view_mul_": True, "narrow_add_": True, "data_write": True, "param_read": True,
    "buffer_read": True, "train_batch_norm": True, "buffer_update": True,
    # issue 21: constants, casts, the batch dimension, randomness, side effects
    "scale_attr": False, "leaky_attr": False, "tensor_attr": False, "cast_same": False,
    "cast_int": True, "cast_half": True, "cast_bool": True, "batch_roll": None,
    "batch_center": None, "batch_flip": None, "batch_branch": None, "dropout_train": True,
    "rand_noise": True, "dropout_eval": False, "counter": False, "buffer_rebind": True,
    "global_scale": False,
}
SCALE = {"value": 1.0}   # a global the forward reads (changed between two calls)
SWAPS = {"relu": (nn.ReLU, False), "leaky": (lambda: nn.LeakyReLU(0.3), False),
         "identity": (nn.Identity, False), "maxpool": (lambda: nn.MaxPool1d(3, 1, 1), False),
         "gelu": (nn.GELU, True)}


class Net(nn.Module):
    """``h = x``; each step maps ``h`` (shape (n, C, L)); a linear head reads the result."""

    def __init__(self, steps, generator):
        super().__init__()
        self.steps = list(steps)
        self.convs = nn.ModuleList(nn.Conv1d(C + (s == "buffer_cat"), C, 3, padding=1)
                                   for s in self.steps)
        self.acts = nn.ModuleList(nn.ReLU() for _ in self.steps)
        for i, _ in enumerate(self.steps):
            self.register_buffer(f"s{i}", torch.rand(C, generator=generator, dtype=torch.float64)
                                 + 0.5)
            self.register_buffer(f"v{i}", torch.rand(C, generator=generator, dtype=torch.float64)
                                 + 0.5)
            self.register_buffer(f"k{i}", torch.rand(C, 1, 3, generator=generator,
                                                     dtype=torch.float64))
            self.register_parameter(f"g{i}", nn.Parameter(torch.tensor([1.5], dtype=torch.float64)))
            setattr(self, f"t{i}", torch.rand(C, 1, generator=generator, dtype=torch.float64) + 0.5)
        self.scales = [0.5 + float(torch.rand((), generator=generator)) for _ in self.steps]
        self.slopes = [float(torch.rand((), generator=generator)) for _ in self.steps]
        self.calls = 0
        self.register_buffer("n", torch.zeros((), dtype=torch.float64))
        self.head = nn.Linear(C * L, 2)
        self.double()

    def forward(self, x):
        h = x
        for i, step in enumerate(self.steps):
            conv, s, v = self.convs[i], getattr(self, f"s{i}"), getattr(self, f"v{i}")
            if step == "conv":
                h = conv(h)
            elif step == "relu":
                h = F.relu(h)
            elif step == "relu_":
                h = conv(h)
                h.relu_()
            elif step == "residual_iadd":
                y = conv(h)
                y += h
                h = y
            elif step == "maxpool":
                h = F.max_pool1d(h, 3, 1, 1)
            elif step == "avgpool":
                h = F.avg_pool1d(h, 3, 1, 1)
            elif step == "leaky":
                h = F.leaky_relu(h, 0.2)
            elif step == "act_module":
                h = self.acts[i](conv(h))
            elif step == "buffer_mul":
                h = conv(h) * s.view(1, -1, 1)
            elif step == "buffer_div":
                h = conv(h) / (s * v).view(1, -1, 1)
            elif step == "buffer_cat":
                h = conv(torch.cat([h, v[:1].view(1, 1, 1).expand(h.shape[0], 1, L)], 1))
            elif step == "frozen_batch_norm":
                h = F.batch_norm(conv(h), v - 1.0, s, training=False)
            elif step == "buffer_kernel":
                h = F.conv1d(conv(h), getattr(self, f"k{i}"), padding=1, groups=C)
            elif step == "view_mul_":
                h = conv(h)
                h[:, :1].mul_(3.0)
            elif step == "narrow_add_":
                h = conv(h)
                h.narrow(1, 0, 1).add_(conv(h)[:, 1:])
            elif step == "data_write":
                h = conv(h)
                h.data[:, 1:] *= -2.0
            elif step == "param_read":
                h = conv(h) * float(getattr(self, f"g{i}"))
            elif step == "buffer_read":
                h = conv(h) * s[0].item()
            elif step == "train_batch_norm":
                h = F.batch_norm(conv(h), v.clone(), s.clone(), training=True)
            elif step == "buffer_update":
                s.mul_(1.0)
                h = conv(h)
            elif step == "scale_attr":
                h = conv(h) * self.scales[i]
            elif step == "leaky_attr":
                h = F.leaky_relu(conv(h), self.slopes[i])
            elif step == "tensor_attr":
                h = conv(h) * getattr(self, f"t{i}")
            elif step == "cast_same":
                h = conv(h).to(torch.float64)
            elif step == "cast_int":
                h = conv(h).to(torch.int32).to(torch.float64)
            elif step == "cast_half":
                h = conv(h).half().double()
            elif step == "cast_bool":
                h = conv(h).bool().double()
            elif step == "batch_roll":
                h = torch.roll(conv(h), 1, 0)
            elif step == "batch_center":
                h = conv(h)
                h = h - h.mean(0)
            elif step == "batch_flip":
                h = conv(h).flip(0)
            elif step == "batch_branch":
                h = conv(h) * (2.0 if h.shape[0] == 1 else 1.0)
            elif step == "dropout_train":
                h = F.dropout(conv(h), 0.5)
            elif step == "rand_noise":
                h = conv(h) + 0.1 * torch.rand_like(h)
            elif step == "dropout_eval":
                h = F.dropout(conv(h), 0.5, training=self.training)
            elif step == "counter":
                self.calls += 1
                h = conv(h)
            elif step == "buffer_rebind":
                self.n = self.n + 1
                h = conv(h)
            elif step == "global_scale":
                h = conv(h) * SCALE["value"]
        return self.head(h.flatten(1))


@st.composite
def scenarios(draw):
    steps = draw(st.lists(st.sampled_from(sorted(VOCABULARY)), min_size=1, max_size=5))
    swap = draw(st.none() | st.tuples(st.integers(0, len(steps) - 1), st.sampled_from(sorted(SWAPS))))
    return steps, swap, draw(st.integers(0, 2**31 - 1))


def _changed(model, generator, constants=False):
    """A perturbed copy: every parameter and buffer times (1 + 0.5 N(0, 1)) (signs may flip);
    with ``constants``, the constants held as attributes too (scales, slopes, plain tensors)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(other.parameters()) + list(other.buffers()):
            t.mul_(1 + 0.5 * torch.randn(t.shape, generator=generator, dtype=t.dtype))
            if t.dim() == 1 and t.numel() == C:  # running variances and divisors stay positive
                t.abs_().add_(0.1)
        if constants:
            other.scales = [v * 1.5 for v in other.scales]
            other.slopes = [v * 0.5 for v in other.slopes]
            for i, _ in enumerate(other.steps):
                getattr(other, f"t{i}").mul_(1.5)
    return other


_CONSTANT_STEPS = {"scale_attr", "leaky_attr", "tensor_attr"}


def _bound_holds(model, other, generator):
    x = torch.randn((6, C, L), generator=generator, dtype=torch.float64) * 3
    for _ in range(8):
        x.requires_grad_(True)
        gap = (model(x) - other(x)).abs().sum(1)
        (grad,) = torch.autograd.grad(gap.sum(), x)
        bound = pm.output_bound(model, other, x.detach())
        if not (gap.detach() <= bound * (1 + 1e-9) + 1e-12).all():
            return False
        x = x.detach() + 0.3 * grad.sign()
    return True


def check_scenario(steps, swap, seed):
    """One scenario; returns 'refused' or 'computed', or raises AssertionError on a mismatch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Net(steps, generator).eval()
    x = torch.zeros(1, C, L, dtype=torch.float64)
    must_refuse = True if any(VOCABULARY[s] for s in steps) else \
        None if any(VOCABULARY[s] is None for s in steps) else False
    outcome = _check_once(model, x, must_refuse, generator)
    if swap is not None:  # a module swap, new buffer values and other state between two calls
        index, kind = swap
        model.acts[index] = SWAPS[kind][0]()
        with torch.no_grad():
            getattr(model, f"s{index}").mul_(2.0)
        model.scales[index] *= 2.0
        model.slopes[index] *= 0.5
        getattr(model, f"t{index}").data.mul_(2.0)
        SCALE["value"] = 2.0
        uses_act = steps[index] == "act_module"
        try:
            outcome = _check_once(model, x, True if uses_act and SWAPS[kind][1] else must_refuse,
                                  generator)
        finally:
            SCALE["value"] = 1.0
    return outcome


def _check_once(model, x, must_refuse, generator):
    before = model_state(model)
    report = pm.check_support(model, x)
    assert must_refuse is None or report.ok != must_refuse, (report.unsupported, must_refuse)
    other = _changed(model, generator)
    if not report.ok:
        for call in (lambda: pm.path_norm(model, x), lambda: pm.path_metric(model, other, x),
                     lambda: pm.output_bound(model, other, x)):
            with pytest.raises(pm.UnsupportedModelError) as info:
                call()
            assert info.value.unsupported[0] == report.unsupported[0]
        assert same_state(before, model_state(model))
        return "refused"
    value = pm.path_norm(model, x)
    assert value == pytest.approx(pm.path_norm(copy.deepcopy(model), x), rel=1e-12)
    if not pm.check_support(other, x).ok:  # a batch step the perturbed model makes visible
        assert must_refuse is None
        with pytest.raises(pm.UnsupportedModelError):
            pm.output_bound(model, other, x)
        assert same_state(before, model_state(model))
        return "computed, pair refused"
    pm.output_bound(model, other, x)
    if _CONSTANT_STEPS & set(model.steps):  # the pair's constants differ: refused, naming them
        with pytest.raises(ValueError, match="first difference"):
            pm.path_metric(model, _changed(model, generator, constants=True), x)
    assert same_state(before, model_state(model))
    assert _bound_holds(model, other, generator)  # (runs the model itself: counters move)
    return "computed"


@settings(max_examples=EXAMPLES, deadline=None)
@given(scenarios())
def test_no_silent_mismatch(scenario):
    event(check_scenario(*scenario))
