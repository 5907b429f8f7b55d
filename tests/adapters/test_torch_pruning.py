"""torch-pruning adapter: PathMetricImportance and certified_step on the real torch-pruning 1.6.1."""
import copy
import math

import pytest
import torch
import torchvision
from conftest import model_state, same_state
from torch import nn

import pathmetric as pm

tp = pytest.importorskip("torch_pruning", reason="the tp extra (torch-pruning) is not installed")
smp = pytest.importorskip("segmentation_models_pytorch", reason="the zoo extra is not installed")
from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step, group_members  # noqa: E402,E501

X32 = torch.randn(1, 3, 32, 32)


def _zoo(name):
    torch.manual_seed(0)
    if name == "resnet18":
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        return model, [model.fc]
    if name == "vgg11_bn":
        model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
        return model, [model.classifier[-1]]
    if name == "densenet121":
        model = torchvision.models.densenet121(weights=None, num_classes=10)
        return model, [model.classifier]
    if name == "googlenet":
        model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True,
                                             num_classes=10)
        return model, [model.fc]
    model = smp.Unet("resnet18", encoder_weights=None, classes=2)
    return model, [model.segmentation_head]


# One BasePruner configuration per model, so that every option is met on a real network.
ZOO = {
    "resnet18": dict(global_pruning=True, iterative_steps=2),
    "vgg11_bn": dict(round_to=8),
    "densenet121": dict(global_pruning=True, isomorphic=True),
    "googlenet": dict(pruning_ratio_dict="inception3a"),
    "unet": dict(global_pruning=True, pruning_ratio_dict="decoder"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_prune_run_and_shrink(name):
    model, ignored = _zoo(name)
    model.eval()
    options = dict(ZOO[name])
    if "pruning_ratio_dict" in options:
        options["pruning_ratio_dict"] = {getattr(model, options["pruning_ratio_dict"]): 0.3}
    shape = model(X32).shape
    macs0, params0 = tp.utils.count_ops_and_params(model, X32)
    before = {m: m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
    pruner = tp.pruner.BasePruner(model, X32, importance=PathMetricImportance(X32),
                                  pruning_ratio=0.4, ignored_layers=ignored, **options)
    for _ in range(pruner.iterative_steps):
        pruner.step()
    assert model(X32).shape == shape
    macs, params = tp.utils.count_ops_and_params(model, X32)
    assert params < 0.85 * params0 and macs < 0.9 * macs0
    # no layer was emptied beyond the default cap (keep >= 10 % of its channels)
    assert all(m.out_channels >= math.ceil(0.1 * c) for m, c in before.items())
    if "round_to" in options:
        assert all(m.out_channels % 8 == 0 for m, c in before.items()
                   if m.out_channels != c and m not in ignored)


def _small_net():
    """Conv/BN/ReLU, a residual sum, a concatenation, pooling, flatten and a linear head."""

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
            self.branch = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                                        nn.Conv2d(5, 6, 3, padding=1), nn.BatchNorm2d(6))
            self.side = nn.Sequential(nn.Conv2d(6, 4, 1), nn.ReLU())
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Linear(10 * 4 * 4, 3)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.branch(x))
            x = torch.cat([x, self.side(x)], dim=1)
            return self.head(torch.flatten(self.pool(x), 1))

    torch.manual_seed(1)
    model = Small()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _zero_root_channel(model, group, names, root):
    """A deep copy of ``model`` with root channel ``root`` zeroed in every layer of ``group``."""
    zeroed = copy.deepcopy(model)
    modules = dict(zeroed.named_modules())
    root_channel = group[0].idxs[root]
    with torch.no_grad():
        for item in group:
            layer = item.dep.target.module
            if not isinstance(layer, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                continue
            idxs = [i for i, r in zip(item.idxs, item.root_idxs) if r == root_channel]
            target = modules[names[layer]]
            if isinstance(layer, nn.BatchNorm2d) or group._DG.is_out_channel_pruning_fn(
                    item.dep.handler):
                target.weight[idxs] = 0
                target.bias[idxs] = 0
            else:
                target.weight[:, idxs] = 0
    return zeroed


def test_exact_scores_are_path_norm_drops_and_sum_bounds_them():
    model, x = _small_net(), torch.randn(1, 3, 8, 8)
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    exact = PathMetricImportance(x, exact=True, max_layer_ratio=None)
    summed = PathMetricImportance(x, max_layer_ratio=None)
    total = pm.path_norm(model, x)
    groups = list(graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]))
    coupled = [g for g in groups if len(group_members(g, names)[0]) >= 4]
    assert coupled, "the residual group couples >= 4 layers"
    for group in groups:
        scores, bounds = exact(group), summed(group)
        assert scores.shape == bounds.shape == (len(group[0].idxs),)
        for root in range(len(scores)):
            drop = (total - pm.path_norm(_zero_root_channel(model, group, names, root), x)) / total
            assert scores[root].item() == pytest.approx(drop, rel=1e-9, abs=1e-12)
            assert bounds[root].item() >= drop * (1 - 1e-9)
    # the sum counts a path through several layers of a coupled group several times
    assert any((summed(g) > exact(g) * 1.01).any() for g in coupled)


def _chosen(model, importance):
    pruner = tp.pruner.BasePruner(model, X32, importance=importance, pruning_ratio=0.4,
                                  global_pruning=True, ignored_layers=[model.fc])
    names = {m: n for n, m in model.named_modules()}
    return {(names[g[0].dep.target.module], tuple(sorted(g[0].idxs)))
            for g in pruner.step(interactive=True)}


def test_choice_is_rescaling_invariant_unlike_magnitude():
    model, _ = _zoo("resnet18")
    model.eval()
    rescaled = pm.random_rescale(model, X32, seed=3)
    changed = [n for n, p in rescaled.named_parameters()
               if not torch.equal(p, model.get_parameter(n))]
    assert any(n.endswith("bn1.weight") for n in changed), "BatchNorm'd channels were rescaled"
    assert torch.allclose(model(X32), rescaled(X32), rtol=1e-4, atol=1e-5)
    chosen = _chosen(model, PathMetricImportance(X32))
    assert chosen and chosen == _chosen(rescaled, PathMetricImportance(X32))
    magnitude = tp.importance.GroupMagnitudeImportance()
    assert _chosen(model, magnitude) != _chosen(rescaled, magnitude)


def test_certified_step_removes_what_step_removes_and_certifies_the_drop():
    model, ignored = _zoo("googlenet")
    model.eval()
    twin = copy.deepcopy(model)
    kwargs = dict(pruning_ratio=0.3, global_pruning=True)
    pruner = tp.pruner.BasePruner(model, X32, importance=tp.importance.GroupMagnitudeImportance(),
                                  ignored_layers=ignored, **kwargs)
    twin_pruner = tp.pruner.BasePruner(twin, X32,
                                       importance=tp.importance.GroupMagnitudeImportance(),
                                       ignored_layers=[twin.fc], **kwargs)
    norm = pm.path_norm(model, X32)
    bound = certified_step(pruner, X32)
    twin_pruner.step()
    ours, theirs = model.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # pruning shrinks |theta|, so the path-metric is exactly the path mass removed
    drop = norm - pm.path_norm(model, X32)
    assert 0 < drop and bound == pytest.approx(drop, rel=1e-6)
    assert bound >= drop * (1 - 1e-12)


def test_cap_keeps_layers_from_being_emptied_and_engine_runs_once_per_step(monkeypatch):
    built = []

    class CountingMasses(pm.PathMasses):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pm, "PathMasses", CountingMasses)
    model, ignored = _zoo("resnet18")
    model.eval()
    convs = {m: m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
    imp = PathMetricImportance(X32, max_layer_ratio=0.5)
    pruner = tp.pruner.BasePruner(model, X32, importance=imp, pruning_ratio=0.45,
                                  global_pruning=True, ignored_layers=ignored, iterative_steps=3)
    for _ in range(3):
        pruner.step()
    assert len(built) == 3  # one lifted forward/backward per step, shared by the 12 groups
    kept = [m.out_channels / c for m, c in convs.items()]
    # without the cap one conv keeps 1 % of its channels here
    assert min(kept) >= 0.5 and sum(kept) / len(kept) < 0.8


def test_uncovered_layer_in_a_group_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X32)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(8)))
    with pytest.raises(pm.UnsupportedModelError,
                       match=r"'1' \(GroupNorm\) in the torch-pruning group of '0'") as error:
        group_members(group, {m: n for n, m in model.named_modules()})
    assert "ignored_layers" not in str(error.value)
    # the importance checks the whole model first: the real cause comes first
    with pytest.raises(pm.UnsupportedModelError, match=r"group_norm in '1'"):
        PathMetricImportance(X32)(group)


# ------------------------------------------------------------------ issue 16: torch-pruning gaps

def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_high_global_ratio_prunes_as_asked_and_says_where_the_cap_gave_way():
    model, ignored = _zoo("resnet18")
    model.eval()
    before = _count(model)
    pruner = tp.pruner.BasePruner(model, X32, importance=PathMetricImportance(X32),
                                  pruning_ratio=0.9, global_pruning=True, ignored_layers=ignored)
    with pytest.warns(UserWarning, match="pruned past the cap"):
        certified_step(pruner, X32)
    assert _count(model) < 0.03 * before       # magnitude: 0.9 % of the parameters left
    assert min(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) >= 1


def test_iterative_high_ratio_keeps_pruning_at_every_step():
    model, ignored = _zoo("resnet18")
    model.eval()
    pruner = tp.pruner.BasePruner(model, X32, importance=PathMetricImportance(X32),
                                  pruning_ratio=0.9, global_pruning=True, ignored_layers=ignored,
                                  iterative_steps=3)
    counts = [_count(model)]
    for _ in range(3):
        pruner.step()
        counts.append(_count(model))
    assert counts[0] > counts[1] > counts[2] > counts[3]   # the third step was a no-op


@pytest.mark.parametrize("option", [dict(normalizer="mean"), dict(normalizer="max")])
def test_normalizer_spreads_global_pruning_over_layers(option):
    def changed(**kwargs):
        model, ignored = _zoo("vgg11_bn")
        model.eval()
        convs = {m: m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
        pruner = tp.pruner.BasePruner(model, X32, importance=PathMetricImportance(X32, **kwargs),
                                      pruning_ratio=0.5, global_pruning=True,
                                      ignored_layers=ignored)
        pruner.step()
        return sum(m.out_channels < c for m, c in convs.items())

    assert changed(**option) > changed() and changed(**option) >= 6
    with pytest.raises(ValueError, match="normalizer"):
        PathMetricImportance(X32, normalizer="gaussian")


def test_cost_divides_shares_by_parameters_removed():
    model = _PReLUNet().eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X32)
    group = graph.get_pruning_group(model.b[0], tp.prune_conv_out_channels, list(range(16)))
    plain = PathMetricImportance(X32, max_layer_ratio=None)(group)
    per_parameter = PathMetricImportance(X32, max_layer_ratio=None, cost="params")(group)
    # conv 3*3*3 + bias, BatchNorm 2, PReLU 1, grouped conv input 4*3*3
    assert torch.allclose(per_parameter, plain / (28 + 2 + 1 + 36))


class _PReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.PReLU(16),
                               nn.Conv2d(16, 16, 3, groups=4), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, groups=16), nn.PReLU(), nn.Conv2d(16, 8, 1))
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.b[2].weight.uniform_(0, 1)

    def forward(self, image, scale=None):
        return self.fc(self.b(image).mean((2, 3)))


def test_prelu_grouped_convs_and_dict_inputs_are_certified():
    torch.manual_seed(0)
    model = _PReLUNet().eval()
    reference = copy.deepcopy(model)
    x = {"image": torch.randn(1, 3, 16, 16)}
    pruner = tp.pruner.BasePruner(model, x, importance=PathMetricImportance(x),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    bound = certified_step(pruner, x)
    assert (model.b[2].num_parameters, model.b[3].out_channels, model.b[5].groups) == (8, 8, 8)
    batch = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        change = (reference(batch) - model(batch)).abs().sum(1)
    assert 0 < bound and (change <= bound * batch.abs().flatten(1).amax(1).clamp(min=1)).all()


def test_grouped_conv_zeroing_is_the_removal():
    torch.manual_seed(0)
    model = _PReLUNet().eval()
    x = torch.randn(1, 3, 16, 16)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    names = {m: n for n, m in model.named_modules()}
    group = graph.get_pruning_group(model.b[3], tp.prune_conv_out_channels, [0, 5, 10, 15])
    members, _ = group_members(group, names)
    zeroed = pm.zeroed_members(model, x, members)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in zeroed.items():
            masked.get_parameter(name).copy_(tensor)
    group.prune()
    batch = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(masked(batch), model(batch), atol=1e-5)


def test_importance_for_other_input_shapes_is_refused():
    model = _PReLUNet().eval()
    x = {"image": torch.randn(1, 3, 16, 16)}
    imp = PathMetricImportance({"image": torch.randn(1, 3, 32, 32)})
    pruner = tp.pruner.BasePruner(model, x, importance=imp, pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    with pytest.raises(ValueError, match="built for example inputs of shape"):
        certified_step(pruner, x)
    with pytest.raises(TypeError, match="not parameters of"):
        PathMetricImportance({"images": x["image"]})(
            tp.DependencyGraph().build_dependency(model, example_inputs=x).get_pruning_group(
                model.b[0], tp.prune_conv_out_channels, [0]))


def test_convnext_refusal_names_the_real_cause_first():
    model = torchvision.models.convnext_tiny(weights=None).eval()
    pruner = tp.pruner.BasePruner(model, X32, importance=PathMetricImportance(X32),
                                  pruning_ratio=0.5, ignored_layers=[model.classifier[-1]])
    with pytest.raises(pm.UnsupportedModelError, match="layer_norm") as error:
        pruner.step()
    assert "ignored_layers" not in str(error.value) and "gelu" in str(error.value)


@pytest.mark.parametrize("pruner_size, refused", [(64, True), (32, False)])
def test_plain_step_refuses_a_pruner_traced_with_other_shapes(pruner_size, refused):
    """torch-pruning hands an importance no inputs: the traced convolution inputs kept in the
    pruner's dependency graph tell a plain ``pruner.step()`` that the shapes differ."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    importance = PathMetricImportance(torch.randn(1, 3, 32, 32))
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, pruner_size, pruner_size),
                                  importance=importance, pruning_ratio=0.3,
                                  ignored_layers=[model.fc])
    before = model_state(model)
    if refused:
        with pytest.raises(ValueError, match=r"traced with other inputs: 'layer4.0.downsample.0' reads \(1, 256, 4, 4\)"):
            pruner.step()
        assert same_state(model_state(model), before)
    else:
        pruner.step()
        assert sum(p.numel() for p in model.parameters()) < 11_181_642
