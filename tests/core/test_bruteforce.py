"""The engine against brute-force path enumeration on hypothesis-generated tiny networks."""
import copy
import math

import torch
from bruteforce import build, l1_distance, lq_norm_q, paths, to_dag
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import pathmetric as pm

CHANNELS, MAX_PATHS = 2, 60_000
NORMS = (nn.BatchNorm1d, nn.InstanceNorm1d)


def conv_spec(draw, c, same=False):
    out = c if same else draw(st.integers(1, 2))
    if same:
        k = draw(st.sampled_from([1, 3]))
        return ("conv", out, k, 1, k // 2, 1, 1, draw(st.booleans()))
    k = draw(st.integers(1, 3))
    groups = c if (c == out == 2 and draw(st.booleans())) else 1
    return ("conv", out, k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)),
            draw(st.integers(1, 2)), groups, draw(st.booleans()))


BOUNDS = [-1.5, -0.5, 0.0, 0.5, 1.0]
# the ops of issue 15 (clipped activations, max/min neurons, constants, more linear maps)
WIDER = ["relu6", "hardtanh", "clamp", "clamp_min", "hardsigmoid", "abs", "maximum", "minimum",
         "channel_max", "amax_len", "same_maxpool", "const", "pad", "bicubic", "antialias",
         "rrelu", "threshold", "instancenorm", "matmul", "bias"]


def wider_spec(draw, kind):
    if kind == "hardtanh":
        low = draw(st.sampled_from(BOUNDS[:-1]))
        return ("hardtanh", low, draw(st.sampled_from([b for b in BOUNDS if b > low])))
    if kind == "clamp":
        low = draw(st.sampled_from(BOUNDS + [None]))
        high = draw(st.sampled_from([b for b in BOUNDS if low is None or b >= low] +
                                    ([None] if low is not None else [])))
        return ("clamp", low, high)
    if kind in ("clamp_min", "const", "pad"):
        return (kind, draw(st.sampled_from(BOUNDS)))
    if kind == "bicubic":
        return ("bicubic", draw(st.sampled_from([2.0, 1.5, 0.5])), draw(st.booleans()))
    if kind == "antialias":
        return ("antialias", draw(st.sampled_from([0.5, 0.75])),
                draw(st.sampled_from(["bilinear", "bicubic"])))
    if kind == "rrelu":
        return ("rrelu", 0.1, 0.3)
    return (kind,)


def layer_spec(draw, c, wider=False):
    kind = draw(st.sampled_from(["conv", "bn", "relu", "leaky", "maxpool", "avgpool", "amax",
                                 "aavg", "upsample", "res", "cat"] + (WIDER * 2 if wider else [])))
    if kind in WIDER:
        return wider_spec(draw, kind)
    if kind == "conv":
        return conv_spec(draw, c)
    if kind in ("bn", "relu"):
        return (kind,)
    if kind == "leaky":
        return ("leaky", draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])))
    if kind == "maxpool":
        k = draw(st.integers(1, 3))
        return ("maxpool", k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)),
                draw(st.integers(1, 2)), draw(st.booleans()))
    if kind == "avgpool":
        k = draw(st.integers(1, 3))
        return ("avgpool", k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)),
                draw(st.booleans()), draw(st.booleans()))
    if kind in ("amax", "aavg"):
        return (kind, draw(st.integers(1, 3)))
    if kind == "upsample":
        return ("upsample", draw(st.sampled_from([2, 1.5])), draw(st.sampled_from(["nearest", "linear"])),
                draw(st.booleans()))
    body = [conv_spec(draw, c, same=True), ("bn",), ("relu",)][:draw(st.integers(1, 3))]
    if kind == "cat":
        body[0] = ("conv", draw(st.integers(1, 2)), 3, 1, 1, 1, 1, draw(st.booleans()))
    return (kind, body)


@st.composite
def tiny_networks(draw, wider=False):
    """Tiny networks of the original ops, or (``wider``) with the ops of issue 15 as well."""
    channels = draw(st.integers(1, CHANNELS))
    length = draw(st.integers(3, 5))
    specs, c = [], channels
    for _ in range(draw(st.integers(1, 3 + wider))):
        spec = layer_spec(draw, c, wider)
        specs.append(spec)
        if spec[0] == "conv":
            c = spec[1]
        elif spec[0] == "cat":
            c = c + spec[1][0][1]
        elif spec[0] == "channel_max":
            c = 1
    seed = draw(st.integers(0, 2**31 - 1))
    try:
        model = build(specs, channels, length, draw(st.integers(1, 2)),
                      torch.Generator().manual_seed(seed))
        out = model(torch.randn(1, channels, length, dtype=torch.float64))
    except (RuntimeError, ValueError, AssertionError):
        assume(False)
    assume(bool(torch.isfinite(out).all()))  # e.g. an average over a window of padding only
    dag = to_dag(model, channels, length)
    phi = paths(dag)
    assume(0 < len(phi) <= MAX_PATHS)
    return model, (channels, length), phi, seed


def example(shape):
    return torch.zeros((1,) + shape, dtype=torch.float64)


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


@given(tiny_networks(), st.sampled_from([0.5, 1.0, 2.0, 4.0]))
def test_path_norm_equals_enumeration(net, q):
    _path_norm_equals_enumeration(net, q)


def _path_norm_equals_enumeration(net, q):
    model, shape, phi, _ = net
    expected = lq_norm_q(phi, q) ** (1 / q)
    assert relative(pm.path_norm(model, example(shape), q=q), expected) <= 1e-12
    assert relative(pm.log_path_norm(model, example(shape), q=q), math.log(expected)) <= 1e-12 or \
        abs(pm.log_path_norm(model, example(shape), q=q) - math.log(expected)) <= 1e-12


def _shrunk(model, seed, keep_prob=0.6):
    """Same signs, smaller magnitudes on conv/linear parameters (pruning and shrinking)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if ".fc." in name or isinstance(_owner(other, name), nn.Conv1d):
                keep = (torch.rand(p.shape, generator=g) < keep_prob).double()
                p.mul_(keep * torch.rand(p.shape, generator=g, dtype=torch.float64))
    return other


def _owner(model, name):
    return model.get_submodule(name.rsplit(".", 1)[0])


@given(tiny_networks())
def test_path_metric_is_exact_for_pruning_and_shrinking(net):
    _path_metric_is_exact_for_pruning_and_shrinking(net)


def _path_metric_is_exact_for_pruning_and_shrinking(net):
    model, shape, phi, seed = net
    other = _shrunk(model, seed)
    expected = l1_distance(phi, paths(to_dag(other, *shape)))
    got = pm.path_metric(model, other, example(shape))
    assert got >= expected
    assert relative(got, expected) <= 1e-12


def _changed(model, seed, mode):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.named_parameters():
            noise = torch.rand(p.shape, generator=g, dtype=torch.float64)
            if mode == "grow":
                p.mul_(1 + noise)
            elif mode == "mix":
                p.mul_(0.2 + 1.6 * noise)
            elif mode == "flip":
                p.mul_(torch.where(noise < 0.3, -noise, 1 + noise))
            elif mode == "quantize":
                p.copy_(pm.quantize_weights(p, 2 + int(seed % 3), "asymmetric", "per_tensor"))
        for m in other.modules():
            if isinstance(m, NORMS) and mode in ("flip", "mix"):
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g, dtype=torch.float64))
    return other


def _lifted_model(model, tensors):
    """A copy whose parameters are the given non-negative lifted values (BatchNorm: s, t)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in out.named_modules():
            if isinstance(module, NORMS):
                module.weight.copy_(tensors[f"{name}.s"])
                module.bias.copy_(tensors[f"{name}.t"])
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.eps = 0.0
            else:
                for pname, p in module.named_parameters(recurse=False):
                    p.copy_(tensors[f"{name}.{pname}"])
    return out


def _lifted_params(model):
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, NORMS):
            s = module.weight / torch.sqrt(module.running_var + module.eps)
            out[f"{name}.s"], out[f"{name}.t"] = s, module.bias - module.running_mean * s
        else:
            for pname, p in module.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p.detach()
    return out


def _two_pass_brute(model, other, shape):
    """Brute-force ``N(U) - N(L)`` through theta'' (docs/design.md), from enumerated paths."""
    a, b = _lifted_params(model), _lifted_params(other)
    mid = {k: torch.where(a[k] * b[k] < 0, torch.zeros_like(a[k]), a[k]) for k in a}

    def n_of(tensors):
        return lq_norm_q(paths(to_dag(_lifted_model(model, tensors), *shape)), 1.0)

    total = 0.0
    for x, y in ((a, mid), (mid, b)):
        upper = {k: torch.maximum(x[k].abs(), y[k].abs()) for k in x}
        lower = {k: torch.minimum(x[k].abs(), y[k].abs()) for k in x}
        total += n_of(upper) - n_of(lower)
    return total


@settings(max_examples=25)
@given(tiny_networks(), st.sampled_from(["grow", "mix", "flip", "quantize"]))
def test_path_metric_bounds_general_changes(net, mode):
    _path_metric_bounds_general_changes(net, mode)


def _path_metric_bounds_general_changes(net, mode):
    model, shape, phi, seed = net
    other = _changed(model, seed, mode)
    true_distance = l1_distance(phi, paths(to_dag(other, *shape)))
    got = pm.path_metric(model, other, example(shape))
    two_pass = _two_pass_brute(model, other, shape)
    assert got >= true_distance * (1 - 1e-12)
    assert got <= two_pass * (1 + 1e-9) + 1e-12


@settings(max_examples=12)
@given(tiny_networks())
def test_weight_scores_equal_mass_removed(net):
    model, shape, phi, _ = net
    assume(all(c == 1 for c in [1]))
    scores = pm.weight_scores(model, example(shape))
    n = lq_norm_q(phi, 1.0)
    for name, score in scores.items():
        flat = score.reshape(-1)
        for i in range(min(flat.numel(), 6)):
            pruned = copy.deepcopy(model)
            with torch.no_grad():
                dict(pruned.named_parameters())[name].view(-1)[i] = 0.0
            removed = n - lq_norm_q(paths(to_dag(pruned, *shape)), 1.0)
            assert abs(float(flat[i]) - removed) <= 1e-9 * n


@settings(max_examples=20)
@given(tiny_networks())
def test_output_gap_never_exceeds_output_bound(net):
    """Soundness on 500 random inputs per (network, change): with 20 networks x 4 changes this
    is 40 000 trials per run."""
    _output_gap_never_exceeds_output_bound(net, 4)


def _output_gap_never_exceeds_output_bound(net, scale):
    model, shape, _, seed = net
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((500,) + shape, generator=g, dtype=torch.float64) * \
        torch.rand((500, 1, 1), generator=g, dtype=torch.float64) * scale
    for mode in ("grow", "mix", "flip", "quantize"):
        other = _changed(model, seed, mode)
        with torch.no_grad():
            out, out2 = model(x), other(x)
        gap = (out - out2).abs().sum(dim=1)
        # the gap itself is measured in float64: allow its own rounding (a few ulps of the outputs)
        slack = 8 * torch.finfo(torch.float64).eps * (out.abs() + out2.abs()).sum(dim=1)
        assert (gap <= pm.output_bound(model, other, x) + slack).all()


# ------------------------------------------------------------------ the ops of issue 15
# Clipped activations, max/min neurons and constants as the explicit neurons of
# docs/design.md, "The model class" (built by tests/bruteforce.py, not by the engine's rules).

@settings(max_examples=60, deadline=None)
@given(tiny_networks(wider=True), st.sampled_from([1.0, 2.0, 4.0]))
def test_wider_ops_path_norm_equals_enumeration(net, q):
    _path_norm_equals_enumeration(net, q)


@settings(max_examples=40, deadline=None)
@given(tiny_networks(wider=True))
def test_wider_ops_path_metric_is_exact_for_pruning_and_shrinking(net):
    _path_metric_is_exact_for_pruning_and_shrinking(net)


@settings(max_examples=30, deadline=None)
@given(tiny_networks(wider=True), st.sampled_from(["grow", "quantize", "mix", "flip"]))
def test_wider_ops_path_metric_bounds_general_changes(net, mode):
    _path_metric_bounds_general_changes(net, mode)


@settings(max_examples=10, deadline=None)
@given(tiny_networks(wider=True))
def test_wider_ops_output_gap_never_exceeds_output_bound(net):
    """Inputs scaled up to 40 so activations reach the clipped region; 10 networks x 4 changes
    x 500 inputs = 20 000 trials per run."""
    _output_gap_never_exceeds_output_bound(net, 40)
