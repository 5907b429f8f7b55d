"""Scores, sensitivity, mixed precision, pruning and rescaling invariance (issue 4)."""
import copy
import math

import pytest
import torch
import torchvision
from models import Depthwise, MatmulNet, _at_w_pair, _with
from torch import nn

import pathmetric as pm
from pathmetric.prune import _kth_smallest

X = torch.zeros(1, 3, 32, 32)


def zoo(name):
    return getattr(torchvision.models, name)(weights=None).eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return zoo("resnet18")


def _zeroed(model, name, index):
    other = copy.deepcopy(model)
    with torch.no_grad():
        dict(other.named_parameters())[name].view(-1)[index] = 0.0
    return other


def test_weight_scores_are_the_mass_removed_on_resnet18(resnet):
    """Sampled entries: score_i == N(theta) - N(theta_i = 0), measured without cancellation
    by the exact two-pass path-metric (pruning one coordinate)."""
    scores = pm.weight_scores(resnet, X)
    n = pm.path_norm(resnet, X)
    g = torch.Generator().manual_seed(0)
    for name in ["conv1.weight", "layer2.0.downsample.0.weight", "layer3.1.conv2.weight", "fc.weight",
                 "fc.bias"]:
        flat = scores[name].reshape(-1)
        for index in torch.randint(0, flat.numel(), (3,), generator=g).tolist():
            removed = pm.path_metric(resnet, _zeroed(resnet, name, index), X)
            assert abs(float(flat[index]) - removed) <= 1e-9 * n
    relative = pm.weight_scores(resnet, X, relative=True)
    assert float(relative["fc.weight"].sum()) == pytest.approx(1.0 - float(relative["fc.bias"].sum()),
                                                               rel=1e-9)


def test_channel_scores_equal_mass_removed_with_the_batchnorm_channel(resnet):
    scores = pm.channel_scores(resnet, X)
    for layer, bn, channel in [("layer1.0.conv1", "layer1.0.bn1", 3), ("conv1", "bn1", 7),
                               ("layer4.1.conv2", "layer4.1.bn2", 100)]:
        other = copy.deepcopy(resnet)
        with torch.no_grad():
            other.get_submodule(layer).weight[channel] = 0
            other.get_submodule(bn).weight[channel] = 0
            other.get_submodule(bn).bias[channel] = 0
        removed = pm.path_metric(resnet, other, X)
        assert float(scores[layer][channel]) == pytest.approx(removed, rel=1e-9)


def test_group_mass_exact_and_sum_bound(resnet):
    """A residual-coupled group: stem conv/bn and both blocks of layer1 write channel c of the
    residual stream; the exact mass is the path-norm drop, the sum never below it."""
    channels, roots = [0, 5, 9], [0, 1, 2]
    members = [(module, kind, channels, roots) for module, kind in [
        ("conv1", "out"), ("bn1", "out"), ("layer1.0.bn2", "out"), ("layer1.1.bn2", "out"),
        ("layer1.0.conv1", "in"), ("layer1.1.conv1", "in")]]
    exact = pm.group_mass(resnet, X, members, 3, exact=True, relative=False)
    bound = pm.group_mass(resnet, X, members, 3, relative=False)
    n = pm.path_norm(resnet, X)
    for root in range(3):
        zeroed = pm.zeroed_members(resnet, X, members, roots={root})
        drop = pm.path_metric(resnet, zeroed, X)
        assert float(exact[root]) == pytest.approx(drop, rel=1e-9)
        assert float(bound[root]) >= float(exact[root]) * (1 - 1e-12)
        assert drop <= n


def test_layer_sensitivity_equals_two_pass_path_metric(resnet):
    sens = pm.layer_sensitivity(resnet, X, bits=(2, 4, 8))
    assert set(sens.bits()) == {2, 4, 8}
    for layer in ["conv1", "layer1.0.conv2", "layer3.0.downsample.0", "fc"]:
        for bits in (2, 4, 8):
            expected = pm.quantization_bound(resnet, X, bits=bits, layers=[layer])
            assert sens[layer, bits] == pytest.approx(expected, rel=1e-9)
            assert sens[layer, bits] >= expected * (1 - 1e-12)
    assert "layer1.0.conv2" in str(sens)


def test_layer_sensitivity_plot(resnet, tmp_path):
    path = pm.layer_sensitivity(resnet, X, bits=(2, 8)).plot(tmp_path / "sens.png")
    assert path.exists() and path.stat().st_size > 1000


def test_mixed_precision_plan_is_no_worse_than_uniform(resnet):
    plan = pm.mixed_precision_plan(resnet, X, bits=(2, 4, 8), avg_bits=4.0)
    uniform = pm.quantization_bound(resnet, X, bits=4)
    assert plan.avg_bits <= 4.0 + 1e-12
    assert plan.certified_bound <= uniform * (1 + 1e-12)
    assert plan.certified_bound <= plan.additive_bound * (1 + 1e-9)
    replaced = {f"{layer}.weight": pm.quantize_weights(resnet.get_submodule(layer).weight, b)
                for layer, b in plan.bits.items()}
    assert pm.path_metric(resnet, replaced, X) == pytest.approx(plan.certified_bound, rel=1e-12)
    tight = pm.mixed_precision_plan(resnet, X, bits=(2, 4, 8), avg_bits=3.0)
    assert tight.avg_bits <= 3.0 and tight.certified_bound >= plan.certified_bound
    with pytest.raises(ValueError, match="budget"):
        pm.mixed_precision_plan(resnet, X, bits=(4, 8), avg_bits=3.0)


def _magnitude_masks(model, sparsity):
    """Global magnitude masks; the threshold is torch.kthvalue's (pinned equal by
    test_pinned_values), found without kthvalue's copy of the values and their int64 indices."""
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    threshold = _kth_smallest(flat, int(sparsity * flat.numel()))
    del flat
    return {n: w.abs() > threshold for n, w in weights.items()}


def _all_close(a, b, rtol):
    """``torch.allclose(a, b, rtol, atol=0)``, evaluated by blocks of rows (its temporaries are
    each as large as the tensors: four float64 copies of vgg's 25088 x 4096 classifier)."""
    return all(torch.allclose(x, y, rtol=rtol, atol=0) for x, y in zip(a.split(64), b.split(64)))


def _independent_rescale(model):
    """Not pm.random_rescale: every BatchNorm that feeds ReLU -> conv directly, times 2**k."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    pairs = [(f"{b}.bn1", f"{b}.conv2") for b in [n for n in mods if n.count(".") == 1 and
                                                  n.startswith("layer")]]
    with torch.no_grad():
        for bn, conv in pairs:
            k = (torch.arange(mods[bn].num_features) % 7 - 3).float()
            mods[bn].weight.mul_(2 ** k)
            mods[bn].bias.mul_(2 ** k)
            mods[conv].weight.div_((2 ** k)[None, :, None, None])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "densenet121"])
def test_scores_and_masks_are_rescaling_invariant_while_magnitude_is_not(name):
    model = zoo(name)
    rescaled = [pm.random_rescale(model, X, seed=4)]
    if name == "resnet18":
        rescaled.append(_independent_rescale(model))
    base = pm.prune(model, 0.6, X).masks   # masks only: each result holds a pruned copy
    base_structured = pm.prune(model, 0.3, X, structured=True).masks
    for other in rescaled:
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(model(x), other(x), rtol=1e-4, atol=1e-5)
        pruned = pm.prune(other, 0.6, X).masks
        assert all(torch.equal(base[k], pruned[k]) for k in base)
        structured = pm.prune(other, 0.3, X, structured=True).masks
        assert all(torch.equal(base_structured[k], structured[k]) for k in base_structured)
        magnitude, magnitude_other = _magnitude_masks(model, 0.6), _magnitude_masks(other, 0.6)
        assert any(not torch.equal(magnitude[k], magnitude_other[k]) for k in magnitude)
    del base, base_structured, pruned, structured, magnitude, magnitude_other
    # the float64 scores last, one other model's at a time (vgg11_bn's are 1.06 GB a model)
    scores = pm.weight_scores(model, X, relative=True)
    for other in rescaled:
        other_scores = pm.weight_scores(other, X, relative=True)
        assert all(_all_close(scores[k], other_scores[k], rtol=1e-9) for k in scores)
        del other_scores


def test_prune_options_and_certificate():
    model = zoo("resnet18")
    before = [p.detach().clone() for p in model.parameters()]
    result = pm.prune(model, 0.7, X, rounds=3)
    assert result.model is not model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    weights = [n for n in result.masks if n.endswith("weight")]
    kept = sum(int(result.masks[n].sum()) for n in weights)
    total = sum(result.masks[n].numel() for n in weights)
    assert 1 - kept / total == pytest.approx(0.7, abs=0.01)
    for name, mask in result.masks.items():
        assert mask.float().mean() >= 0.05 - 1e-9  # the per-layer cap: no layer emptied
        assert (dict(result.model.named_parameters())[name][~mask] == 0).all()
    assert result.certified_bound == pytest.approx(pm.path_metric(model, result.model, X), rel=1e-12)
    per_layer = pm.prune(model, 0.5, X, scope="layer")
    assert all(abs(1 - m.float().mean().item() - 0.5) < 0.01 for m in per_layer.masks.values())
    inplace = copy.deepcopy(model)
    again = pm.prune(inplace, 0.8, X, inplace=True)
    assert again.model is inplace and again.certified_bound > 0
    # at 32x32, layer4 sees 1x1 maps: the 8 outer taps of its 3x3 kernels only ever multiply
    # zero padding, carry no path mass, and go first at no cost
    free = pm.prune(model, 0.5, X)
    assert free.certified_bound == 0.0
    structured = pm.prune(model, 0.4, X, structured=True)
    out = structured.model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 1000)
    assert "fc.weight" not in structured.masks  # the output layer is kept


def test_shared_module_refused_by_scores():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    with pytest.raises(pm.UnsupportedModelError, match="called"):
        pm.prune(Twice(), 0.5, torch.zeros(1, 4))


def test_protect_top_raises_the_best_entries_and_leaves_the_input_alone():
    scores = torch.tensor([[0.3, -math.inf], [0.9, 0.1]], dtype=torch.float64)
    before = scores.clone()
    assert pm.protect_top(scores, 2).tolist() == [[math.inf, -math.inf], [math.inf, 0.1]]
    assert pm.protect_top(scores, 1, offset=10.0).tolist() == [[0.3, -math.inf], [10.9, 0.1]]
    assert pm.protect_top(scores, 4).isinf().all() and pm.protect_top(scores, 0).equal(scores)
    assert torch.equal(scores, before)


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


def test_kth_smallest_of_row_structured_scores_never_selects_over_the_whole_vector(monkeypatch):
    """Scores of a 25088-column weight whose columns differ in scale: an evenly strided sample
    (stride 7 here) would see one column class only, miss the bracket and fall back to a
    selection over all entries (a copy of the values and their int64 indices)."""
    generator = torch.Generator().manual_seed(0)
    columns = 1.0 + torch.arange(25088, dtype=torch.float64).remainder(7)
    values = (torch.rand(320, 25088, generator=generator, dtype=torch.float64) * columns).reshape(-1)
    sizes, kthvalue = [], torch.kthvalue
    monkeypatch.setattr(torch, "kthvalue", lambda t, k: sizes.append(t.numel()) or kthvalue(t, k))
    for k in (1, 401_408, 4_014_080, values.numel()):
        assert _kth_smallest(values, k) == kthvalue(values, k).values
    assert max(sizes) < values.numel() // 4
