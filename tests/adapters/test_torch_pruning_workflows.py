"""torch-pruning 1.6.1's own workflows with PathMetricImportance: the regularizing pruners
(tests/test_regularization.py), list example inputs (the tracer's ``model(inputs)`` fallback) and
``unwrapped_parameters`` (tests/test_unwrapped_parameters.py), on small real models."""
import copy

import pytest
import torch
import torchvision
from torch import nn

tp = pytest.importorskip("torch_pruning", reason="the tp extra (torch-pruning) is not installed")
from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step  # noqa: E402

X32 = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("pruner_class", [tp.pruner.GroupNormPruner, tp.pruner.GrowingRegPruner])
def test_regularizing_pruners_write_finite_gradients(pruner_class):
    # torch-pruning normalises importances (max - imp) / (max - min): an infinite score is NaN
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    pruner = pruner_class(model, X32, importance=PathMetricImportance(X32), pruning_ratio=0.5,
                          ignored_layers=[model.fc])
    for _ in range(2):
        model.zero_grad()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        if pruner_class is tp.pruner.GrowingRegPruner:
            pruner.update_reg()
        pruner.regularize(model)
        bad = [name for name, p in model.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert bad == []
    pruner.step()
    assert torch.isfinite(model(X32)).all()


class ListInput(nn.Module):
    """A ReLU CNN whose forward takes one list of images (as torchvision's detection models)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 3)

    def forward(self, images):
        return self.head(torch.relu(self.bn(self.conv(torch.cat(images, 1)))))


def test_list_example_inputs_are_one_argument():
    torch.manual_seed(0)
    model = ListInput().eval()
    images = [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)]
    before = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(model, images, importance=PathMetricImportance(images),
                                  pruning_ratio=0.5, ignored_layers=[model.head])
    bound = certified_step(pruner, images)
    assert model.conv.out_channels == 8 and model.bn.num_features == 8
    probe = [torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1]
    change = (before(probe) - model(probe)).abs().sum()
    assert 0 < change <= bound * (1 + 1e-6)


class LayerScaleNet(nn.Module):
    """conv -> ReLU -> learnt per-channel scale (a bare Parameter, as LayerScale) -> conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)) * self.gamma.view(1, -1, 1, 1))


def test_unwrapped_layer_scale_parameter_is_scored_and_certified():
    torch.manual_seed(0)
    model = LayerScaleNet()
    x = torch.randn(1, 3, 16, 16)
    before = copy.deepcopy(model)
    importance = PathMetricImportance(x, max_layer_ratio=None)
    pruner = tp.pruner.BasePruner(model, x, importance=importance, pruning_ratio=0.5,
                                  ignored_layers=[model.head],
                                  unwrapped_parameters=[(model.gamma, 0)])
    group = pruner.DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, list(range(8)))
    with_gamma = importance(group)
    # doubling gamma and halving the conv's channel leaves the function and the scores unchanged
    rescaled = copy.deepcopy(before)
    with torch.no_grad():
        rescaled.gamma.mul_(2.0)
        rescaled.conv.weight.div_(2.0)
        rescaled.conv.bias.div_(2.0)
    other = tp.pruner.BasePruner(rescaled, x, importance=PathMetricImportance(x, max_layer_ratio=None),
                                 pruning_ratio=0.5, ignored_layers=[rescaled.head],
                                 unwrapped_parameters=[(rescaled.gamma, 0)])
    group = other.DG.get_pruning_group(rescaled.conv, tp.prune_conv_out_channels, list(range(8)))
    assert torch.allclose(other.importance(group), with_gamma, rtol=1e-9)
    bound = certified_step(pruner, x)
    assert model.gamma.shape == (4,) and model.conv.out_channels == 4
    probe = torch.rand(4, 3, 16, 16) * 2 - 1
    change = (before(probe) - model(probe)).abs().sum(dim=(1, 2, 3))
    assert (change > 0).all() and (change <= bound * (1 + 1e-6)).all()
