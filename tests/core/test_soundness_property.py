"""Property test of capture soundness (issue 13): hypothesis builds small models from a vocabulary
that includes in-place ops on views, buffer arithmetic, Python reads of tensors and module swaps
between two calls. For each model, either ``check_support`` refuses it and every computation
refuses it the same way, or ``path_norm`` equals the value of a fresh capture and
``output_bound`` holds on random and gradient-ascent inputs. No silent mismatch is allowed.

``SOUNDNESS_EXAMPLES`` (environment) raises the example count for a measurement run.
"""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import pathmetric as pm
from conftest import model_state, same_state

C, L = 2, 6
EXAMPLES = int(os.environ.get("SOUNDNESS_EXAMPLES", 200))

# step -> must the engine refuse a model containing it?
VOCABULARY = {
    "conv": False, "relu": False, "relu_": False, "residual_iadd": False, "maxpool": False,
    "avgpool": False, "leaky": False, "act_module": False, "buffer_mul": False,
    "buffer_div": False, "buffer_cat": False, "frozen_batch_norm": False, "buffer_kernel": False,
    "view_mul_": True, "narrow_add_": True, "data_write": True, "param_read": True,
    "buffer_read": True, "train_batch_norm": True, "buffer_update": True,
}
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
        return self.head(h.flatten(1))


@st.composite
def scenarios(draw):
    steps = draw(st.lists(st.sampled_from(sorted(VOCABULARY)), min_size=1, max_size=5))
    swap = draw(st.none() | st.tuples(st.integers(0, len(steps) - 1), st.sampled_from(sorted(SWAPS))))
    return steps, swap, draw(st.integers(0, 2**31 - 1))


def _changed(model, generator):
    """A perturbed copy: every parameter and buffer times (1 + 0.5 N(0, 1)) (signs may flip)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(other.parameters()) + list(other.buffers()):
            t.mul_(1 + 0.5 * torch.randn(t.shape, generator=generator, dtype=t.dtype))
            if t.dim() == 1 and t.numel() == C:  # running variances and divisors stay positive
                t.abs_().add_(0.1)
    return other


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
    must_refuse = any(VOCABULARY[s] for s in steps)
    outcome = _check_once(model, x, must_refuse, generator)
    if swap is not None:  # a module swap and new buffer values between two calls
        index, kind = swap
        model.acts[index] = SWAPS[kind][0]()
        with torch.no_grad():
            getattr(model, f"s{index}").mul_(2.0)
        uses_act = steps[index] == "act_module"
        outcome = _check_once(model, x, must_refuse or (uses_act and SWAPS[kind][1]), generator)
    return outcome


def _check_once(model, x, must_refuse, generator):
    before = model_state(model)
    report = pm.check_support(model, x)
    assert report.ok != must_refuse, (report.unsupported, must_refuse)
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
    assert _bound_holds(model, other, generator)
    assert same_state(before, model_state(model))
    return "computed"


@settings(max_examples=EXAMPLES, deadline=None)
@given(scenarios())
def test_no_silent_mismatch(scenario):
    event(check_scenario(*scenario))
