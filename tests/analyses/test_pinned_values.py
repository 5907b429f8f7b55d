"""Every certificate and score equal, to 1e-12 relative (float32 results: to float32's rounding,
``F32_RELATIVE``), to the values of the engine before the memory work of issue 23 (commit
5934995), on three small models with random weights.

``PINNED`` was printed by ``python tests/analyses/test_pinned_values.py`` on that commit; a
change of the engine's memory layout (scratch memory, layer-by-layer passes, chunked products)
may reorder float64 sums, never move a result by more than their rounding.

The 35 float32 certificates (``*_f32`` keys of path_metric and layer_sensitivity) were re-pinned
when the rounding accounting began to count the final sum of the output entries
(docs/design.md, "Rounding"): each rose by ``2 u`` (``4 u`` for the sensitivity's doubled
error) per output entry, 1.19e-6 (10 logits) to 4.9e-4 (the U-Net's 2 x 32 x 32 outputs); the
float64 values did not move by 1e-12.
"""
import math
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pathmetric as pm
from pathmetric import sensitivity
from pathmetric.core.algebras import PairLifting
from pathmetric.core.rules import linear
from pathmetric.prune import _kth_smallest

torch.set_num_threads(1)
RELATIVE = 1e-12
#: float32 results (``*_f32`` keys) move within float32's rounding between machines (oneDNN
#: picks a convolution's kernel, and its order of summation, by the CPU's instruction set:
#: measured 1.3e-6 on resnet18 between two machines of this project) and between blocked and
#: whole passes; the certificate's a priori error bound covers any order
F32_RELATIVE = 1e-5


class SmallVGG(nn.Module):
    """conv-BN-ReLU blocks, max-pooling, a grouped conv and a two-layer classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class SmallUNet(nn.Module):
    """Encoder, max-pooling, a transposed convolution and nearest upsampling, concatenation."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.fuse = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.side = nn.Conv2d(16, 4, 1)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        a = self.down1(x)
        b = self.down2(F.max_pool2d(a, 2))
        u = self.fuse(torch.cat([a, self.up(b)], 1))
        s = F.interpolate(self.side(b), scale_factor=2, mode="nearest")
        return self.head(torch.cat([u, s], 1))


def _randomized(model, seed):
    """``model`` with every parameter and BatchNorm statistic drawn at random (signs mixed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def models():
    return {"resnet18": (_randomized(torchvision.models.resnet18(weights=None, num_classes=10), 0),
                         (1, 3, 32, 32)),
            "vgg": (_randomized(SmallVGG(), 1), (1, 3, 32, 32)),
            "unet": (_randomized(SmallUNet(), 2), (1, 3, 32, 32))}


def _digest(prefix, tensor, out):
    """Sum, position-weighted sum and largest entry of ``tensor``: any change of one entry by
    more than rounding moves one of them."""
    flat = tensor.detach().double().reshape(-1)
    weights = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)
    out[prefix + ".sum"] = float(flat.sum())
    out[prefix + ".weighted"] = float((flat * weights).sum())
    out[prefix + ".max"] = float(flat.max())


def _perturbed(model, seed):
    """A copy with 10 % noise on every parameter and every 7th weight's sign flipped."""
    import copy
    generator = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            p.view(-1)[::7] *= -1
    return other


def _pruned(model):
    """Replacements zeroing the 30 % smallest entries of every conv/linear weight."""
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() > 1:
            w = p.detach().clone()
            w[w.abs() <= w.abs().flatten().kthvalue(max(1, int(0.3 * w.numel()))).values] = 0
            out[name] = w
    return out


def values(blocked_only=False, names=("resnet18", "vgg", "unet")) -> dict:
    """Every public analysis on the models ``names``, flattened to ``{key: float}`` (only those
    that work by blocks of rows with ``blocked_only``: the pair pass, layer sensitivity)."""
    out = {}
    for key, (model, shape) in models().items():
        if key not in names:
            continue
        x = torch.zeros(shape)
        batch = torch.randn((2,) + shape[1:], generator=torch.Generator().manual_seed(3)) * 2
        out[f"{key}.metric_pruned"] = pm.path_metric(model, _pruned(model), x)
        out[f"{key}.metric_perturbed"] = pm.path_metric(model, _perturbed(model, 4), x)
        out[f"{key}.metric_perturbed_f32"] = pm.path_metric(model, _perturbed(model, 4), x,
                                                            precision="float32")
        out[f"{key}.log_metric_perturbed"] = pm.log_path_metric(model, _perturbed(model, 4), x)
        for k, v in enumerate(pm.output_bound(model, _perturbed(model, 5), batch).tolist()):
            out[f"{key}.output_bound.{k}"] = v
        out[f"{key}.quant4"] = pm.quantization_bound(model, x, bits=4)
        out[f"{key}.quant3_asym_tensor"] = pm.quantization_bound(
            model, x, bits=3, scheme="asymmetric", granularity="per_tensor")
        out[f"{key}.quant4_group"] = pm.quantization_bound(model, x, bits=4,
                                                           granularity="per_group", group_size=8)
        out[f"{key}.log_quant2"] = pm.log_quantization_bound(model, x, bits=2)
        plan = pm.mixed_precision_plan(model, x, bits=(2, 4, 8), avg_bits=4)
        out[f"{key}.plan.certified"] = plan.certified_bound
        out[f"{key}.plan.additive"] = plan.additive_bound
        out[f"{key}.plan.avg_bits"] = plan.avg_bits
        for layer, b in plan.bits.items():
            out[f"{key}.plan.bits.{layer}"] = float(b)
        result = pm.prune(model, 0.5, x)
        out[f"{key}.prune.certified"] = result.certified_bound
        out[f"{key}.prune.log"] = result.log_certified_bound
        out[f"{key}.prune.sparsity"] = result.sparsity
        result = pm.prune(model, 0.3, x, structured=True, rounds=2)
        out[f"{key}.prune_structured.certified"] = result.certified_bound
        out[f"{key}.prune_structured.sparsity"] = result.sparsity
        first = next(iter(pm.prunable_layers(model, x)))
        members = [(first, "out", [0, 1, 2, 3], [0, 1, 2, 3])]
        for k, v in enumerate(pm.group_mass(model, x, members, 4, exact=True).tolist()):
            out[f"{key}.group_mass_exact.{k}"] = v
        for (layer, b), v in pm.layer_sensitivity(model, x, bits=(2, 4, 8)).items():
            out[f"{key}.sensitivity.{layer}.{b}"] = v
        for (layer, b), v in pm.layer_sensitivity(model, x, bits=(3,), scheme="asymmetric",
                                                  precision="float32").items():
            out[f"{key}.sensitivity_asym_f32.{layer}.{b}"] = v
        if blocked_only:
            continue
        out[f"{key}.path_norm"] = pm.path_norm(model, x)
        out[f"{key}.path_norm_q2"] = pm.path_norm(model, x, q=2)
        out[f"{key}.path_norm_f32"] = pm.path_norm(model, x, precision="float32")
        out[f"{key}.log_path_norm_q3"] = pm.log_path_norm(model, x, q=3)
        for name, score in pm.weight_scores(model, x).items():
            _digest(f"{key}.weight_scores.{name}", score, out)
        for name, score in pm.weight_scores(model, x, relative=True, precision="float32").items():
            _digest(f"{key}.weight_shares_f32.{name}", score, out)
        for name, score in pm.channel_scores(model, x).items():
            _digest(f"{key}.channel_scores.{name}", score, out)
        for k, v in enumerate(pm.group_mass(model, x, members, 4, relative=False).tolist()):
            out[f"{key}.group_mass.{k}"] = v
    return out


def close(a: float, b: float, relative: float = RELATIVE) -> bool:
    if math.isinf(a) or math.isinf(b) or a == b:
        return a == b
    return abs(a - b) <= relative * max(abs(a), abs(b))


def _moved(found):
    return {k: (found[k], PINNED[k]) for k in found if not close(
        found[k], PINNED[k], F32_RELATIVE if "_f32" in k else RELATIVE)}


def test_every_certificate_and_score_equals_the_pinned_value():
    found = values()
    assert found.keys() == PINNED.keys()
    moved = _moved(found)
    assert not moved, f"{len(moved)} values moved, e.g. {list(moved.items())[:5]}"


def test_analyses_by_blocks_of_output_channels_equal_the_pinned_value(monkeypatch):
    """Blocks of at most 1000 entries: every conv and linear layer of the VGG and the U-Net but
    the first is applied by blocks of output channels in the pair pass, and its moved masses
    summed by blocks of rows (as a 25088 x 4096 classifier is by blocks of 2**22). Float64 results are the pinned ones to 1e-12; float32 ones move
    within float32's rounding (a convolution by blocks of channels sums in another order),
    which the certificate's a priori error bound covers for any order."""
    monkeypatch.setattr(PairLifting, "BLOCK_ENTRIES", 1000)
    monkeypatch.setattr(sensitivity, "BLOCK_ENTRIES", 1000)
    found = values(blocked_only=True, names=("vgg", "unet"))
    moved = _moved(found)
    assert not moved, f"{len(moved)} values moved, e.g. {list(moved.items())[:5]}"


def test_convolutions_by_blocks_of_output_rows_equal_the_pinned_value(monkeypatch):
    """Unfolded inputs of at most 1000 entries: every float64 convolution of the three models
    runs by blocks of output rows (as the U-Net's at 512 x 512 does, by blocks of 2**24). The
    forward sums are the same, in the same order; the gradients of the scores sum the blocks'
    contributions to a weight in another order: every value the pinned one to 1e-12."""
    monkeypatch.setattr(linear, "COLUMN_ENTRIES", 1000)
    found = values()
    moved = {k: v for k, v in _moved(found).items()
             if "f32" not in k or abs(v[0] - v[1]) > 1e-5 * abs(v[1])}
    assert not moved, f"{len(moved)} values moved, e.g. {list(moved.items())[:5]}"


def test_kth_smallest_of_a_large_vector_is_torch_kthvalue():
    """Ties, infinities and ranks near both ends (the bracket of the sample and its fallback)."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 50_000, (5_000_000,), generator=generator).double()
    values[::97] = -math.inf
    values[::89] = math.inf
    for k in (1, 2, 51_547, 1_000_003, 2_500_000, 4_999_999, 5_000_000):
        assert _kth_smallest(values, k) == torch.kthvalue(values, k).values


PINNED = {
    'resnet18.path_norm': 4.539345076624136e+30,
    'resnet18.path_norm_q2': 142868826.66200954,
    'resnet18.path_norm_f32': 4.5393441807236375e+30,
    'resnet18.log_path_norm_q3': 5.210737592749529,
    'resnet18.metric_pruned': 3.335191492103346e+30,
    'resnet18.metric_perturbed': 2.0002314453664546e+31,
    'resnet18.metric_perturbed_f32': 2.0078809604580792e+31,
    'resnet18.log_metric_perturbed': 72.07340077936347,
    'resnet18.output_bound.0': 1.4814852020194334e+32,
    'resnet18.output_bound.1': 1.4173746596083467e+32,
    'resnet18.quant4': 1.506620535332371e+31,
    'resnet18.quant3_asym_tensor': 6.911611090277975e+31,
    'resnet18.quant4_group': 5.893715720993135e+30,
    'resnet18.log_quant2': 72.86667990384437,
    'resnet18.weight_scores.conv1.weight.sum': 4.3547672053092427e+30,
    'resnet18.weight_scores.conv1.weight.weighted': 6.521324215860268e+30,
    'resnet18.weight_scores.conv1.weight.max': 6.532638394508738e+27,
    'resnet18.weight_scores.layer1.0.conv1.weight.sum': 4.533811136663874e+30,
    'resnet18.weight_scores.layer1.0.conv1.weight.weighted': 6.637451105641045e+30,
    'resnet18.weight_scores.layer1.0.conv1.weight.max': 5.8763583528527e+27,
    'resnet18.weight_scores.layer1.0.conv2.weight.sum': 4.534542357897094e+30,
    'resnet18.weight_scores.layer1.0.conv2.weight.weighted': 6.833828122823995e+30,
    'resnet18.weight_scores.layer1.0.conv2.weight.max': 6.771034021168177e+27,
    'resnet18.weight_scores.layer1.1.conv1.weight.sum': 4.533962581344702e+30,
    'resnet18.weight_scores.layer1.1.conv1.weight.weighted': 6.726983927605449e+30,
    'resnet18.weight_scores.layer1.1.conv1.weight.max': 3.7839612838708837e+27,
    'resnet18.weight_scores.layer1.1.conv2.weight.sum': 4.533963575153819e+30,
    'resnet18.weight_scores.layer1.1.conv2.weight.weighted': 6.641729438806376e+30,
    'resnet18.weight_scores.layer1.1.conv2.weight.max': 3.204601068302769e+27,
    'resnet18.weight_scores.layer2.0.conv1.weight.sum': 4.5270926586678247e+30,
    'resnet18.weight_scores.layer2.0.conv1.weight.weighted': 6.727727000536834e+30,
    'resnet18.weight_scores.layer2.0.conv1.weight.max': 1.737594382116142e+27,
    'resnet18.weight_scores.layer2.0.conv2.weight.sum': 4.5270926596851164e+30,
    'resnet18.weight_scores.layer2.0.conv2.weight.weighted': 6.914720298095226e+30,
    'resnet18.weight_scores.layer2.0.conv2.weight.max': 1.2939298588538193e+27,
    'resnet18.weight_scores.layer2.0.downsample.0.weight.sum': 1.2252416896767961e+28,
    'resnet18.weight_scores.layer2.0.downsample.0.weight.weighted': 1.832879269628224e+28,
    'resnet18.weight_scores.layer2.0.downsample.0.weight.max': 3.004737486066347e+25,
    'resnet18.weight_scores.layer2.1.conv1.weight.sum': 4.537720298976246e+30,
    'resnet18.weight_scores.layer2.1.conv1.weight.weighted': 6.702248697230038e+30,
    'resnet18.weight_scores.layer2.1.conv1.weight.max': 1.2755252358982846e+27,
    'resnet18.weight_scores.layer2.1.conv2.weight.sum': 4.537720298976683e+30,
    'resnet18.weight_scores.layer2.1.conv2.weight.weighted': 6.663077421958322e+30,
    'resnet18.weight_scores.layer2.1.conv2.weight.max': 1.079771410452111e+27,
    'resnet18.weight_scores.layer3.0.conv1.weight.sum': 4.527196683803794e+30,
    'resnet18.weight_scores.layer3.0.conv1.weight.weighted': 6.79274598969833e+30,
    'resnet18.weight_scores.layer3.0.conv1.weight.max': 8.528008580045842e+26,
    'resnet18.weight_scores.layer3.0.conv2.weight.sum': 4.527196683803795e+30,
    'resnet18.weight_scores.layer3.0.conv2.weight.weighted': 6.75344916452011e+30,
    'resnet18.weight_scores.layer3.0.conv2.weight.max': 7.094836752844746e+26,
    'resnet18.weight_scores.layer3.0.downsample.0.weight.sum': 1.2148392820342856e+28,
    'resnet18.weight_scores.layer3.0.downsample.0.weight.weighted': 1.8364081302019125e+28,
    'resnet18.weight_scores.layer3.0.downsample.0.weight.max': 1.3756107387997862e+25,
    'resnet18.weight_scores.layer3.1.conv1.weight.sum': 4.538131198519645e+30,
    'resnet18.weight_scores.layer3.1.conv1.weight.weighted': 6.869633154164613e+30,
    'resnet18.weight_scores.layer3.1.conv1.weight.max': 8.73995077922813e+26,
    'resnet18.weight_scores.layer3.1.conv2.weight.sum': 4.5381311985196455e+30,
    'resnet18.weight_scores.layer3.1.conv2.weight.weighted': 6.933746093026622e+30,
    'resnet18.weight_scores.layer3.1.conv2.weight.max': 6.124958091476208e+26,
    'resnet18.weight_scores.layer4.0.conv1.weight.sum': 4.507068193498159e+30,
    'resnet18.weight_scores.layer4.0.conv1.weight.weighted': 6.769241396846301e+30,
    'resnet18.weight_scores.layer4.0.conv1.weight.max': 4.4624006063288984e+26,
    'resnet18.weight_scores.layer4.0.conv2.weight.sum': 4.507068193498159e+30,
    'resnet18.weight_scores.layer4.0.conv2.weight.weighted': 6.808644734582418e+30,
    'resnet18.weight_scores.layer4.0.conv2.weight.max': 1.2473569213938003e+27,
    'resnet18.weight_scores.layer4.0.downsample.0.weight.sum': 3.2276883125977665e+28,
    'resnet18.weight_scores.layer4.0.downsample.0.weight.weighted': 4.841147573066535e+28,
    'resnet18.weight_scores.layer4.0.downsample.0.weight.max': 9.798895963196473e+24,
    'resnet18.weight_scores.layer4.1.conv1.weight.sum': 4.534733476187522e+30,
    'resnet18.weight_scores.layer4.1.conv1.weight.weighted': 6.845117460075516e+30,
    'resnet18.weight_scores.layer4.1.conv1.weight.max': 8.663080289797813e+26,
    'resnet18.weight_scores.layer4.1.conv2.weight.sum': 4.5347334761875234e+30,
    'resnet18.weight_scores.layer4.1.conv2.weight.weighted': 6.864408038380005e+30,
    'resnet18.weight_scores.layer4.1.conv2.weight.max': 8.572159096398086e+26,
    'resnet18.weight_scores.fc.weight.sum': 4.539345076624136e+30,
    'resnet18.weight_scores.fc.weight.weighted': 6.791408633625428e+30,
    'resnet18.weight_scores.fc.weight.max': 1.138696722215946e+28,
    'resnet18.weight_scores.fc.bias.sum': 2.0257479548454285,
    'resnet18.weight_scores.fc.bias.weighted': 3.207591142091486,
    'resnet18.weight_scores.fc.bias.max': 0.49261829257011414,
    'resnet18.weight_shares_f32.conv1.weight.sum': 0.9593383624212031,
    'resnet18.weight_shares_f32.conv1.weight.weighted': 1.4366224837231893,
    'resnet18.weight_shares_f32.conv1.weight.max': 0.0014391150325536728,
    'resnet18.weight_shares_f32.layer1.0.conv1.weight.sum': 0.9987810135655688,
    'resnet18.weight_shares_f32.layer1.0.conv1.weight.weighted': 1.4622047387305095,
    'resnet18.weight_shares_f32.layer1.0.conv1.weight.max': 0.001294539077207446,
    'resnet18.weight_shares_f32.layer1.0.conv2.weight.sum': 0.9989420984188003,
    'resnet18.weight_shares_f32.layer1.0.conv2.weight.weighted': 1.5054658320447456,
    'resnet18.weight_shares_f32.layer1.0.conv2.weight.max': 0.0014916323125362396,
    'resnet18.weight_shares_f32.layer1.1.conv1.weight.sum': 0.9988143624173065,
    'resnet18.weight_shares_f32.layer1.1.conv1.weight.weighted': 1.4819284514592388,
    'resnet18.weight_shares_f32.layer1.1.conv1.weight.max': 0.0008335918537341058,
    'resnet18.weight_shares_f32.layer1.1.conv2.weight.sum': 0.9988145800676855,
    'resnet18.weight_shares_f32.layer1.1.conv2.weight.weighted': 1.463147217343056,
    'resnet18.weight_shares_f32.layer1.1.conv2.weight.max': 0.0007059611962176859,
    'resnet18.weight_shares_f32.layer2.0.conv1.weight.sum': 0.9973009458990129,
    'resnet18.weight_shares_f32.layer2.0.conv1.weight.weighted': 1.4820921506691485,
    'resnet18.weight_shares_f32.layer2.0.conv1.weight.max': 0.00038278530701063573,
    'resnet18.weight_shares_f32.layer2.0.conv2.weight.sum': 0.9973009427451958,
    'resnet18.weight_shares_f32.layer2.0.conv2.weight.weighted': 1.5232860470358895,
    'resnet18.weight_shares_f32.layer2.0.conv2.weight.max': 0.00028504771762527525,
    'resnet18.weight_shares_f32.layer2.0.downsample.0.weight.sum': 0.002699159927601626,
    'resnet18.weight_shares_f32.layer2.0.downsample.0.weight.weighted': 0.004037761954836232,
    'resnet18.weight_shares_f32.layer2.0.downsample.0.weight.max': 6.619320174650056e-06,
    'resnet18.weight_shares_f32.layer2.1.conv1.weight.sum': 0.9996421633093742,
    'resnet18.weight_shares_f32.layer2.1.conv1.weight.weighted': 1.4764793641967924,
    'resnet18.weight_shares_f32.layer2.1.conv1.weight.max': 0.00028099329210817814,
    'resnet18.weight_shares_f32.layer2.1.conv2.weight.sum': 0.999642161493608,
    'resnet18.weight_shares_f32.layer2.1.conv2.weight.weighted': 1.4678500819666738,
    'resnet18.weight_shares_f32.layer2.1.conv2.weight.max': 0.00023786943347658962,
    'resnet18.weight_shares_f32.layer3.0.conv1.weight.sum': 0.9973238530969328,
    'resnet18.weight_shares_f32.layer3.0.conv1.weight.weighted': 1.4964155689479215,
    'resnet18.weight_shares_f32.layer3.0.conv1.weight.max': 0.00018786874716170132,
    'resnet18.weight_shares_f32.layer3.0.conv2.weight.sum': 0.9973238598724122,
    'resnet18.weight_shares_f32.layer3.0.conv2.weight.weighted': 1.4877586404618035,
    'resnet18.weight_shares_f32.layer3.0.conv2.weight.max': 0.00015629651898052543,
    'resnet18.weight_shares_f32.layer3.0.downsample.0.weight.sum': 0.0026762437387960517,
    'resnet18.weight_shares_f32.layer3.0.downsample.0.weight.weighted': 0.004045535772382928,
    'resnet18.weight_shares_f32.layer3.0.downsample.0.weight.max': 3.0304167921713088e-06,
    'resnet18.weight_shares_f32.layer3.1.conv1.weight.sum': 0.9997327155764715,
    'resnet18.weight_shares_f32.layer3.1.conv1.weight.weighted': 1.5133535596008674,
    'resnet18.weight_shares_f32.layer3.1.conv1.weight.max': 0.00019253764185123146,
    'resnet18.weight_shares_f32.layer3.1.conv2.weight.sum': 0.9997327437105853,
    'resnet18.weight_shares_f32.layer3.1.conv2.weight.weighted': 1.5274774291640663,
    'resnet18.weight_shares_f32.layer3.1.conv2.weight.max': 0.00013493043661583215,
    'resnet18.weight_shares_f32.layer4.0.conv1.weight.sum': 0.9928896851477733,
    'resnet18.weight_shares_f32.layer4.0.conv1.weight.weighted': 1.4912376861818457,
    'resnet18.weight_shares_f32.layer4.0.conv1.weight.max': 9.830504131969064e-05,
    'resnet18.weight_shares_f32.layer4.0.conv2.weight.sum': 0.9928896599948163,
    'resnet18.weight_shares_f32.layer4.0.conv2.weight.weighted': 1.4999180573261484,
    'resnet18.weight_shares_f32.layer4.0.conv2.weight.max': 0.000274787686066702,
    'resnet18.weight_shares_f32.layer4.0.downsample.0.weight.sum': 0.007110472492733869,
    'resnet18.weight_shares_f32.layer4.0.downsample.0.weight.weighted': 0.010664860876372414,
    'resnet18.weight_shares_f32.layer4.0.downsample.0.weight.max': 2.1586590719380183e-06,
    'resnet18.weight_shares_f32.layer4.1.conv1.weight.sum': 0.9989842024238117,
    'resnet18.weight_shares_f32.layer4.1.conv1.weight.weighted': 1.5079528437317065,
    'resnet18.weight_shares_f32.layer4.1.conv1.weight.max': 0.00019084435189142823,
    'resnet18.weight_shares_f32.layer4.1.conv2.weight.sum': 0.9989841961435701,
    'resnet18.weight_shares_f32.layer4.1.conv2.weight.weighted': 1.5122024652661894,
    'resnet18.weight_shares_f32.layer4.1.conv2.weight.max': 0.00018884133896790445,
    'resnet18.weight_shares_f32.fc.weight.sum': 1.000000112880521,
    'resnet18.weight_shares_f32.fc.weight.weighted': 1.4961209782629623,
    'resnet18.weight_shares_f32.fc.weight.max': 0.0025085043162107468,
    'resnet18.weight_shares_f32.fc.bias.sum': 4.462644512675626e-31,
    'resnet18.weight_shares_f32.fc.bias.weighted': 7.066199426871202e-31,
    'resnet18.weight_shares_f32.fc.bias.max': 1.0852190883161427e-31,
    'resnet18.channel_scores.conv1.sum': 4.5385872825420964e+30,
    'resnet18.channel_scores.conv1.weighted': 6.78511716318493e+30,
    'resnet18.channel_scores.conv1.max': 2.5755535649210385e+29,
    'resnet18.channel_scores.layer1.0.conv1.sum': 4.534542357897095e+30,
    'resnet18.channel_scores.layer1.0.conv1.weighted': 6.636277330643889e+30,
    'resnet18.channel_scores.layer1.0.conv1.max': 3.1491034799519196e+29,
    'resnet18.channel_scores.layer1.0.conv2.sum': 4.534567906507746e+30,
    'resnet18.channel_scores.layer1.0.conv2.weighted': 6.836942683559399e+30,
    'resnet18.channel_scores.layer1.0.conv2.max': 2.824924279529725e+29,
    'resnet18.channel_scores.layer1.1.conv1.sum': 4.533963575153819e+30,
    'resnet18.channel_scores.layer1.1.conv1.weighted': 6.725250951380211e+30,
    'resnet18.channel_scores.layer1.1.conv1.max': 2.0936370389313383e+29,
    'resnet18.channel_scores.layer1.1.conv2.sum': 4.5339636045233257e+30,
    'resnet18.channel_scores.layer1.1.conv2.weighted': 6.640372765230826e+30,
    'resnet18.channel_scores.layer1.1.conv2.max': 1.8045249134317456e+29,
    'resnet18.channel_scores.layer2.0.conv1.sum': 4.5270926596851164e+30,
    'resnet18.channel_scores.layer2.0.conv1.weighted': 6.728460562196702e+30,
    'resnet18.channel_scores.layer2.0.conv1.max': 1.3758877643689158e+29,
    'resnet18.channel_scores.layer2.0.conv2.sum': 4.527092659705645e+30,
    'resnet18.channel_scores.layer2.0.conv2.weighted': 6.916171961032588e+30,
    'resnet18.channel_scores.layer2.0.conv2.max': 1.4832567196557267e+29,
    'resnet18.channel_scores.layer2.0.downsample.0.sum': 1.2252416918048077e+28,
    'resnet18.channel_scores.layer2.0.downsample.0.weighted': 1.8331328434765078e+28,
    'resnet18.channel_scores.layer2.0.downsample.0.max': 3.4413415004789964e+26,
    'resnet18.channel_scores.layer2.1.conv1.sum': 4.537720298976683e+30,
    'resnet18.channel_scores.layer2.1.conv1.weighted': 6.700439882771629e+30,
    'resnet18.channel_scores.layer2.1.conv1.max': 1.2324751867240828e+29,
    'resnet18.channel_scores.layer2.1.conv2.sum': 4.5377202989766896e+30,
    'resnet18.channel_scores.layer2.1.conv2.weighted': 6.662770394147616e+30,
    'resnet18.channel_scores.layer2.1.conv2.max': 1.231929101159947e+29,
    'resnet18.channel_scores.layer3.0.conv1.sum': 4.5271966838037937e+30,
    'resnet18.channel_scores.layer3.0.conv1.weighted': 6.793301602987023e+30,
    'resnet18.channel_scores.layer3.0.conv1.max': 7.144703676208585e+28,
    'resnet18.channel_scores.layer3.0.conv2.sum': 4.5271966838037937e+30,
    'resnet18.channel_scores.layer3.0.conv2.weighted': 6.753288856077612e+30,
    'resnet18.channel_scores.layer3.0.conv2.max': 9.302278783257766e+28,
    'resnet18.channel_scores.layer3.0.downsample.0.sum': 1.214839282034286e+28,
    'resnet18.channel_scores.layer3.0.downsample.0.weighted': 1.8366263894056997e+28,
    'resnet18.channel_scores.layer3.0.downsample.0.max': 2.006705197125908e+26,
    'resnet18.channel_scores.layer3.1.conv1.sum': 4.538131198519645e+30,
    'resnet18.channel_scores.layer3.1.conv1.weighted': 6.870023877018423e+30,
    'resnet18.channel_scores.layer3.1.conv1.max': 7.782682720761751e+28,
    'resnet18.channel_scores.layer3.1.conv2.sum': 4.538131198519645e+30,
    'resnet18.channel_scores.layer3.1.conv2.weighted': 6.933996568850388e+30,
    'resnet18.channel_scores.layer3.1.conv2.max': 7.1792156113659775e+28,
    'resnet18.channel_scores.layer4.0.conv1.sum': 4.507068193498159e+30,
    'resnet18.channel_scores.layer4.0.conv1.weighted': 6.769005338408074e+30,
    'resnet18.channel_scores.layer4.0.conv1.max': 4.318679966352102e+28,
    'resnet18.channel_scores.layer4.0.conv2.sum': 4.507068193498159e+30,
    'resnet18.channel_scores.layer4.0.conv2.weighted': 6.808722318501206e+30,
    'resnet18.channel_scores.layer4.0.conv2.max': 4.728891532206457e+28,
    'resnet18.channel_scores.layer4.0.downsample.0.sum': 3.2276883125977665e+28,
    'resnet18.channel_scores.layer4.0.downsample.0.weighted': 4.840962703991889e+28,
    'resnet18.channel_scores.layer4.0.downsample.0.max': 3.511364139435513e+26,
    'resnet18.channel_scores.layer4.1.conv1.sum': 4.534733476187523e+30,
    'resnet18.channel_scores.layer4.1.conv1.weighted': 6.845107723524923e+30,
    'resnet18.channel_scores.layer4.1.conv1.max': 3.930411693952249e+28,
    'resnet18.channel_scores.layer4.1.conv2.sum': 4.534733476187523e+30,
    'resnet18.channel_scores.layer4.1.conv2.weighted': 6.8644459459969e+30,
    'resnet18.channel_scores.layer4.1.conv2.max': 4.750766346775081e+28,
    'resnet18.channel_scores.fc.sum': 4.539345076624136e+30,
    'resnet18.channel_scores.fc.weighted': 6.782538009072888e+30,
    'resnet18.channel_scores.fc.max': 4.946560171199012e+29,
    'resnet18.sensitivity.conv1.2': 3.647956169314584e+30,
    'resnet18.sensitivity.conv1.4': 5.807286638571836e+29,
    'resnet18.sensitivity.conv1.8': 3.253051952927111e+28,
    'resnet18.sensitivity.layer1.0.conv1.2': 4.0128495663172145e+30,
    'resnet18.sensitivity.layer1.0.conv1.4': 6.579229132746864e+29,
    'resnet18.sensitivity.layer1.0.conv1.8': 3.6357741200517978e+28,
    'resnet18.sensitivity.layer1.0.conv2.2': 4.0873296331603874e+30,
    'resnet18.sensitivity.layer1.0.conv2.4': 6.931820966274881e+29,
    'resnet18.sensitivity.layer1.0.conv2.8': 3.839540044447692e+28,
    'resnet18.sensitivity.layer1.1.conv1.2': 3.9962510073036714e+30,
    'resnet18.sensitivity.layer1.1.conv1.4': 6.535323463876596e+29,
    'resnet18.sensitivity.layer1.1.conv1.8': 3.6184054572348197e+28,
    'resnet18.sensitivity.layer1.1.conv2.2': 4.025693316203292e+30,
    'resnet18.sensitivity.layer1.1.conv2.4': 6.622857092180537e+29,
    'resnet18.sensitivity.layer1.1.conv2.8': 3.6284505578355176e+28,
    'resnet18.sensitivity.layer2.0.conv1.2': 4.046512832610344e+30,
    'resnet18.sensitivity.layer2.0.conv1.4': 6.767363448709585e+29,
    'resnet18.sensitivity.layer2.0.conv1.8': 3.752001934147515e+28,
    'resnet18.sensitivity.layer2.0.conv2.2': 4.121597364363373e+30,
    'resnet18.sensitivity.layer2.0.conv2.4': 7.013702157164045e+29,
    'resnet18.sensitivity.layer2.0.conv2.8': 3.862834099471437e+28,
    'resnet18.sensitivity.layer2.0.downsample.0.2': 9.355849743630003e+27,
    'resnet18.sensitivity.layer2.0.downsample.0.4': 1.357346283495475e+27,
    'resnet18.sensitivity.layer2.0.downsample.0.8': 7.5169780497534715e+25,
    'resnet18.sensitivity.layer2.1.conv1.2': 4.1294206524099443e+30,
    'resnet18.sensitivity.layer2.1.conv1.4': 7.018493594434317e+29,
    'resnet18.sensitivity.layer2.1.conv1.8': 3.895438586187137e+28,
    'resnet18.sensitivity.layer2.1.conv2.2': 4.1339995603282437e+30,
    'resnet18.sensitivity.layer2.1.conv2.4': 6.99517543603315e+29,
    'resnet18.sensitivity.layer2.1.conv2.8': 3.8770432608503928e+28,
    'resnet18.sensitivity.layer3.0.conv1.2': 4.1284573739567335e+30,
    'resnet18.sensitivity.layer3.0.conv1.4': 7.088099255364624e+29,
    'resnet18.sensitivity.layer3.0.conv1.8': 3.9140407931977175e+28,
    'resnet18.sensitivity.layer3.0.conv2.2': 4.2199802012720334e+30,
    'resnet18.sensitivity.layer3.0.conv2.4': 7.487822327378423e+29,
    'resnet18.sensitivity.layer3.0.conv2.8': 4.126245829111738e+28,
    'resnet18.sensitivity.layer3.0.downsample.0.2': 9.835571944214685e+27,
    'resnet18.sensitivity.layer3.0.downsample.0.4': 1.5236845002924214e+27,
    'resnet18.sensitivity.layer3.0.downsample.0.8': 8.35036057897447e+25,
    'resnet18.sensitivity.layer3.1.conv1.2': 4.2116277267378303e+30,
    'resnet18.sensitivity.layer3.1.conv1.4': 7.395332009200668e+29,
    'resnet18.sensitivity.layer3.1.conv1.8': 4.091040629094063e+28,
    'resnet18.sensitivity.layer3.1.conv2.2': 4.2029016532137114e+30,
    'resnet18.sensitivity.layer3.1.conv2.4': 7.348378107893189e+29,
    'resnet18.sensitivity.layer3.1.conv2.8': 4.04332415532264e+28,
    'resnet18.sensitivity.layer4.0.conv1.2': 4.199443446955772e+30,
    'resnet18.sensitivity.layer4.0.conv1.4': 7.424434206171252e+29,
    'resnet18.sensitivity.layer4.0.conv1.8': 4.084639846692789e+28,
    'resnet18.sensitivity.layer4.0.conv2.2': 4.254398135215833e+30,
    'resnet18.sensitivity.layer4.0.conv2.4': 7.758265288308994e+29,
    'resnet18.sensitivity.layer4.0.conv2.8': 4.2708203389236855e+28,
    'resnet18.sensitivity.layer4.0.downsample.0.2': 2.7453828066800958e+28,
    'resnet18.sensitivity.layer4.0.downsample.0.4': 4.4089873047999416e+27,
    'resnet18.sensitivity.layer4.0.downsample.0.8': 2.4222476816951736e+26,
    'resnet18.sensitivity.layer4.1.conv1.2': 4.2718822016480835e+30,
    'resnet18.sensitivity.layer4.1.conv1.4': 7.772833095592711e+29,
    'resnet18.sensitivity.layer4.1.conv1.8': 4.277833411447712e+28,
    'resnet18.sensitivity.layer4.1.conv2.2': 4.270991103311534e+30,
    'resnet18.sensitivity.layer4.1.conv2.4': 7.723332512927253e+29,
    'resnet18.sensitivity.layer4.1.conv2.8': 4.261262397639053e+28,
    'resnet18.sensitivity.fc.2': 4.045894043075319e+30,
    'resnet18.sensitivity.fc.4': 6.804246348970848e+29,
    'resnet18.sensitivity.fc.8': 3.6814998190027555e+28,
    'resnet18.sensitivity_asym_f32.conv1.3': 1.0585151548482653e+30,
    'resnet18.sensitivity_asym_f32.layer1.0.conv1.3': 1.2433914141604331e+30,
    'resnet18.sensitivity_asym_f32.layer1.0.conv2.3': 1.2980434992535996e+30,
    'resnet18.sensitivity_asym_f32.layer1.1.conv1.3': 1.2456121679119248e+30,
    'resnet18.sensitivity_asym_f32.layer1.1.conv2.3': 1.2445202953308949e+30,
    'resnet18.sensitivity_asym_f32.layer2.0.conv1.3': 1.2758924174857665e+30,
    'resnet18.sensitivity_asym_f32.layer2.0.conv2.3': 1.3419798869216462e+30,
    'resnet18.sensitivity_asym_f32.layer2.0.downsample.0.3': 2.562611948591447e+27,
    'resnet18.sensitivity_asym_f32.layer2.1.conv1.3': 1.3432962567538236e+30,
    'resnet18.sensitivity_asym_f32.layer2.1.conv2.3': 1.337095142442686e+30,
    'resnet18.sensitivity_asym_f32.layer3.0.conv1.3': 1.344643373591298e+30,
    'resnet18.sensitivity_asym_f32.layer3.0.conv2.3': 1.43025647626416e+30,
    'resnet18.sensitivity_asym_f32.layer3.0.downsample.0.3': 2.793757030368419e+27,
    'resnet18.sensitivity_asym_f32.layer3.1.conv1.3': 1.422270911152e+30,
    'resnet18.sensitivity_asym_f32.layer3.1.conv2.3': 1.412303644478118e+30,
    'resnet18.sensitivity_asym_f32.layer4.0.conv1.3': 1.4209167572214134e+30,
    'resnet18.sensitivity_asym_f32.layer4.0.conv2.3': 1.4944001258313196e+30,
    'resnet18.sensitivity_asym_f32.layer4.0.downsample.0.3': 8.248759372941653e+27,
    'resnet18.sensitivity_asym_f32.layer4.1.conv1.3': 1.488985309202032e+30,
    'resnet18.sensitivity_asym_f32.layer4.1.conv2.3': 1.4883536579051892e+30,
    'resnet18.sensitivity_asym_f32.fc.3': 1.2802800313859077e+30,
    'resnet18.plan.certified': 7.768793432212047e+30,
    'resnet18.plan.additive': 2.0943377135616343e+32,
    'resnet18.plan.avg_bits': 3.987603329456987,
    'resnet18.plan.bits.conv1': 8.0,
    'resnet18.plan.bits.layer1.0.conv1': 8.0,
    'resnet18.plan.bits.layer1.0.conv2': 8.0,
    'resnet18.plan.bits.layer1.1.conv1': 8.0,
    'resnet18.plan.bits.layer1.1.conv2': 8.0,
    'resnet18.plan.bits.layer2.0.conv1': 8.0,
    'resnet18.plan.bits.layer2.0.conv2': 8.0,
    'resnet18.plan.bits.layer2.0.downsample.0': 8.0,
    'resnet18.plan.bits.layer2.1.conv1': 8.0,
    'resnet18.plan.bits.layer2.1.conv2': 8.0,
    'resnet18.plan.bits.layer3.0.conv1': 8.0,
    'resnet18.plan.bits.layer3.0.conv2': 4.0,
    'resnet18.plan.bits.layer3.0.downsample.0': 8.0,
    'resnet18.plan.bits.layer3.1.conv1': 4.0,
    'resnet18.plan.bits.layer3.1.conv2': 4.0,
    'resnet18.plan.bits.layer4.0.conv1': 4.0,
    'resnet18.plan.bits.layer4.0.conv2': 2.0,
    'resnet18.plan.bits.layer4.0.downsample.0': 8.0,
    'resnet18.plan.bits.layer4.1.conv1': 4.0,
    'resnet18.plan.bits.layer4.1.conv2': 4.0,
    'resnet18.plan.bits.fc': 8.0,
    'resnet18.prune.certified': 0.0,
    'resnet18.prune.log': -math.inf,
    'resnet18.prune.sparsity': 0.5,
    'resnet18.prune_structured.certified': 7.79815370560763e+29,
    'resnet18.prune_structured.sparsity': 0.20065508809904198,
    'resnet18.group_mass_exact.0': 0.041029776595323836,
    'resnet18.group_mass_exact.1': 0.0067509144255231725,
    'resnet18.group_mass_exact.2': 0.005991431088607431,
    'resnet18.group_mass_exact.3': 0.02184353309134835,
    'resnet18.group_mass.0': 1.862483143829713e+29,
    'resnet18.group_mass.1': 3.0644730160209453e+28,
    'resnet18.group_mass.2': 2.719717321400292e+28,
    'resnet18.group_mass.3': 9.91553343942886e+28,
    'vgg.path_norm': 216055039.51950842,
    'vgg.path_norm_q2': 392.0322982400911,
    'vgg.path_norm_f32': 216055040.0,
    'vgg.log_path_norm_q3': 2.200954414313464,
    'vgg.metric_pruned': 66572017.26739457,
    'vgg.metric_perturbed': 348821590.16571283,
    'vgg.metric_perturbed_f32': 348862989.3582269,
    'vgg.log_metric_perturbed': 19.67007114649438,
    'vgg.output_bound.0': 2743029715.442613,
    'vgg.output_bound.1': 2624326455.5875425,
    'vgg.quant4': 127189376.72093798,
    'vgg.quant3_asym_tensor': 328839414.46016455,
    'vgg.quant4_group': 71646511.00932671,
    'vgg.log_quant2': 19.97976672191355,
    'vgg.weight_scores.features.0.weight.sum': 171576030.3015804,
    'vgg.weight_scores.features.0.weight.weighted': 281438025.02065855,
    'vgg.weight_scores.features.0.weight.max': 4618843.959417368,
    'vgg.weight_scores.features.0.bias.sum': 6113798.767550745,
    'vgg.weight_scores.features.0.bias.weighted': 10792073.184326835,
    'vgg.weight_scores.features.0.bias.max': 1859275.3429107938,
    'vgg.weight_scores.features.4.weight.sum': 215219240.12920052,
    'vgg.weight_scores.features.4.weight.weighted': 341938199.92800045,
    'vgg.weight_scores.features.4.weight.max': 1591862.269866329,
    'vgg.weight_scores.features.4.bias.sum': 186768.61711708544,
    'vgg.weight_scores.features.4.bias.weighted': 303364.20034371293,
    'vgg.weight_scores.features.4.bias.max': 18934.53700925173,
    'vgg.weight_scores.features.8.weight.sum': 216046141.60945177,
    'vgg.weight_scores.features.8.weight.weighted': 340768399.2903645,
    'vgg.weight_scores.features.8.weight.max': 976822.1557943615,
    'vgg.weight_scores.features.8.bias.sum': 8820.50592189133,
    'vgg.weight_scores.features.8.bias.weighted': 13428.726861772968,
    'vgg.weight_scores.features.8.bias.max': 882.9879643450241,
    'vgg.weight_scores.classifier.0.weight.sum': 216054962.11537367,
    'vgg.weight_scores.classifier.0.weight.weighted': 323908677.5041787,
    'vgg.weight_scores.classifier.0.weight.max': 36409.307704670144,
    'vgg.weight_scores.classifier.0.bias.sum': 74.77435191625285,
    'vgg.weight_scores.classifier.0.bias.weighted': 112.85566624252314,
    'vgg.weight_scores.classifier.0.bias.max': 2.428865205003966,
    'vgg.weight_scores.classifier.2.weight.sum': 216055036.88972557,
    'vgg.weight_scores.classifier.2.weight.weighted': 323021712.1021457,
    'vgg.weight_scores.classifier.2.weight.max': 767513.9896151766,
    'vgg.weight_scores.classifier.2.bias.sum': 2.6297828406095505,
    'vgg.weight_scores.classifier.2.bias.weighted': 4.171231730116738,
    'vgg.weight_scores.classifier.2.bias.max': 0.5062604546546936,
    'vgg.weight_shares_f32.features.0.weight.sum': 0.7941310964250761,
    'vgg.weight_shares_f32.features.0.weight.weighted': 1.3026218430188856,
    'vgg.weight_shares_f32.features.0.weight.max': 0.021378085017204285,
    'vgg.weight_shares_f32.features.0.bias.sum': 0.02829741186906176,
    'vgg.weight_shares_f32.features.0.bias.weighted': 0.049950570950871534,
    'vgg.weight_shares_f32.features.0.bias.max': 0.008605563081800938,
    'vgg.weight_shares_f32.features.4.weight.sum': 0.996131552250735,
    'vgg.weight_shares_f32.features.4.weight.weighted': 1.582643961744644,
    'vgg.weight_shares_f32.features.4.weight.max': 0.007367856800556183,
    'vgg.weight_shares_f32.features.4.bias.sum': 0.0008644492322815722,
    'vgg.weight_shares_f32.features.4.bias.weighted': 0.0014041060820727212,
    'vgg.weight_shares_f32.features.4.bias.max': 8.763757068663836e-05,
    'vgg.weight_shares_f32.features.8.weight.sum': 0.9999587826721088,
    'vgg.weight_shares_f32.features.8.weight.weighted': 1.5772295310873359,
    'vgg.weight_shares_f32.features.8.weight.max': 0.004521171562373638,
    'vgg.weight_shares_f32.features.8.bias.sum': 4.0825272451527894e-05,
    'vgg.weight_shares_f32.features.8.bias.weighted': 6.21541935647115e-05,
    'vgg.weight_shares_f32.features.8.bias.max': 4.086865828867303e-06,
    'vgg.weight_shares_f32.classifier.0.weight.sum': 0.9999996052502673,
    'vgg.weight_shares_f32.classifier.0.weight.weighted': 1.4991951407945538,
    'vgg.weight_shares_f32.classifier.0.weight.max': 0.00016851867258083075,
    'vgg.weight_shares_f32.classifier.0.bias.sum': 3.4608936826368425e-07,
    'vgg.weight_shares_f32.classifier.0.bias.weighted': 5.223468366657121e-07,
    'vgg.weight_shares_f32.classifier.0.bias.max': 1.1241880315537855e-08,
    'vgg.weight_shares_f32.classifier.2.weight.sum': 0.9999999482301405,
    'vgg.weight_shares_f32.classifier.2.weight.weighted': 1.4950898630707792,
    'vgg.weight_shares_f32.classifier.2.weight.max': 0.003552400041371584,
    'vgg.weight_shares_f32.classifier.2.bias.sum': 1.2171818969397563e-08,
    'vgg.weight_shares_f32.classifier.2.bias.weighted': 1.9306338460022154e-08,
    'vgg.weight_shares_f32.classifier.2.bias.max': 2.3432014106816723e-09,
    'vgg.channel_scores.features.0.sum': 215219240.1292005,
    'vgg.channel_scores.features.0.weighted': 352405861.6603594,
    'vgg.channel_scores.features.0.max': 43691471.42190462,
    'vgg.channel_scores.features.4.sum': 216046141.60945177,
    'vgg.channel_scores.features.4.weighted': 342953836.1887338,
    'vgg.channel_scores.features.4.max': 27482339.426194638,
    'vgg.channel_scores.features.8.sum': 216054962.11537367,
    'vgg.channel_scores.features.8.weighted': 341153716.81913006,
    'vgg.channel_scores.features.8.max': 10861673.797071364,
    'vgg.channel_scores.classifier.0.sum': 216055036.88972557,
    'vgg.channel_scores.classifier.0.weighted': 323777209.69904214,
    'vgg.channel_scores.classifier.0.max': 2945440.8304447965,
    'vgg.channel_scores.classifier.2.sum': 216055039.51950842,
    'vgg.channel_scores.classifier.2.weighted': 322938427.9098307,
    'vgg.channel_scores.classifier.2.max': 23412435.307443283,
    'vgg.sensitivity.features.0.2': 122508351.03866048,
    'vgg.sensitivity.features.0.4': 18113130.126939636,
    'vgg.sensitivity.features.0.8': 923804.2311118611,
    'vgg.sensitivity.features.4.2': 175782699.19640905,
    'vgg.sensitivity.features.4.4': 27070176.779132046,
    'vgg.sensitivity.features.4.8': 1510798.2831033897,
    'vgg.sensitivity.features.8.2': 165936669.82318407,
    'vgg.sensitivity.features.8.4': 24291001.26099986,
    'vgg.sensitivity.features.8.8': 1353057.889576173,
    'vgg.sensitivity.classifier.0.2': 190969110.0058954,
    'vgg.sensitivity.classifier.0.4': 31430734.975680985,
    'vgg.sensitivity.classifier.0.8': 1733538.3812495684,
    'vgg.sensitivity.classifier.2.2': 175730825.56379935,
    'vgg.sensitivity.classifier.2.4': 27227406.069391508,
    'vgg.sensitivity.classifier.2.8': 1509952.2456706613,
    'vgg.sensitivity_asym_f32.features.0.3': 31429851.403058834,
    'vgg.sensitivity_asym_f32.features.4.3': 51572337.84785271,
    'vgg.sensitivity_asym_f32.features.8.3': 45192987.61193029,
    'vgg.sensitivity_asym_f32.classifier.0.3': 59380984.51757689,
    'vgg.sensitivity_asym_f32.classifier.2.3': 52691397.717083886,
    'vgg.plan.certified': 127189376.72093798,
    'vgg.plan.additive': 281430446.02125984,
    'vgg.plan.avg_bits': 4.0,
    'vgg.plan.bits.features.0': 4.0,
    'vgg.plan.bits.features.4': 4.0,
    'vgg.plan.bits.features.8': 4.0,
    'vgg.plan.bits.classifier.0': 4.0,
    'vgg.plan.bits.classifier.2': 4.0,
    'vgg.prune.certified': 40826363.12238091,
    'vgg.prune.log': 17.524838585666508,
    'vgg.prune.sparsity': 0.5,
    'vgg.prune_structured.certified': 74052613.27887292,
    'vgg.prune_structured.sparsity': 0.3869834936598163,
    'vgg.group_mass_exact.0': 0.0005008521551007508,
    'vgg.group_mass_exact.1': 0.01167077708416891,
    'vgg.group_mass_exact.2': 0.012977586142535025,
    'vgg.group_mass_exact.3': 0.010064222889961236,
    'vgg.group_mass.0': 108211.63216372363,
    'vgg.group_mass.1': 2521530.2041434855,
    'vgg.group_mass.2': 2803872.8868932305,
    'vgg.group_mass.3': 2174426.074223715,
    'unet.path_norm': 7493786.090786815,
    'unet.path_norm_q2': 132.68642343918378,
    'unet.path_norm_f32': 7493786.5,
    'unet.log_path_norm_q3': 2.1270290732686647,
    'unet.metric_pruned': 2259808.907566819,
    'unet.metric_perturbed': 12254840.654429944,
    'unet.metric_perturbed_f32': 12258480.659976434,
    'unet.log_metric_perturbed': 16.321431572365352,
    'unet.output_bound.0': 94439281.9282745,
    'unet.output_bound.1': 90352468.5189457,
    'unet.quant4': 3799240.7846126496,
    'unet.quant3_asym_tensor': 8547546.965038782,
    'unet.quant4_group': 2369188.9367448497,
    'unet.log_quant2': 16.61947416096365,
    'unet.weight_scores.down1.0.weight.sum': 6055508.973820129,
    'unet.weight_scores.down1.0.weight.weighted': 8626665.404059058,
    'unet.weight_scores.down1.0.weight.max': 276409.12875535386,
    'unet.weight_scores.down1.0.bias.sum': 192063.16073509384,
    'unet.weight_scores.down1.0.bias.weighted': 256187.27054350535,
    'unet.weight_scores.down1.0.bias.max': 78961.22976908182,
    'unet.weight_scores.down2.0.weight.sum': 7313552.338598493,
    'unet.weight_scores.down2.0.weight.weighted': 10724191.984915473,
    'unet.weight_scores.down2.0.weight.max': 156192.16928820938,
    'unet.weight_scores.down2.0.bias.sum': 13156.45723887133,
    'unet.weight_scores.down2.0.bias.weighted': 19323.827889837983,
    'unet.weight_scores.down2.0.bias.max': 5383.131290805949,
    'unet.weight_scores.up.weight.sum': 7082881.695902947,
    'unet.weight_scores.up.weight.weighted': 10402184.865897557,
    'unet.weight_scores.up.weight.max': 130222.77206010743,
    'unet.weight_scores.up.bias.sum': 15727.876629324912,
    'unet.weight_scores.up.bias.weighted': 24481.03140813176,
    'unet.weight_scores.up.bias.max': 3957.3035509054007,
    'unet.weight_scores.fuse.0.weight.sum': 7188505.216865254,
    'unet.weight_scores.fuse.0.weight.weighted': 10665351.005544618,
    'unet.weight_scores.fuse.0.weight.max': 71411.56173138147,
    'unet.weight_scores.fuse.0.bias.sum': 730.5701002374349,
    'unet.weight_scores.fuse.0.bias.weighted': 1055.2816257581162,
    'unet.weight_scores.fuse.0.bias.max': 304.68181263944734,
    'unet.weight_scores.side.weight.sum': 303531.8127327212,
    'unet.weight_scores.side.weight.weighted': 432563.0860753287,
    'unet.weight_scores.side.weight.max': 88138.212132639,
    'unet.weight_scores.side.bias.sum': 722.3772217931382,
    'unet.weight_scores.side.bias.weighted': 1233.5200712852711,
    'unet.weight_scores.side.bias.max': 343.4282914606156,
    'unet.weight_scores.head.weight.sum': 7493489.976920012,
    'unet.weight_scores.head.weight.weighted': 9951826.49810264,
    'unet.weight_scores.head.weight.max': 1292605.9454125108,
    'unet.weight_scores.head.bias.sum': 296.1138668060303,
    'unet.weight_scores.head.bias.weighted': 568.905309677124,
    'unet.weight_scores.head.bias.max': 272.79144287109375,
    'unet.weight_shares_f32.down1.0.weight.sum': 0.8080704260532912,
    'unet.weight_shares_f32.down1.0.weight.weighted': 1.1511753901143238,
    'unet.weight_shares_f32.down1.0.weight.max': 0.03688511252403259,
    'unet.weight_shares_f32.down1.0.bias.sum': 0.025629655159718823,
    'unet.weight_shares_f32.down1.0.bias.weighted': 0.034186625310602334,
    'unet.weight_shares_f32.down1.0.bias.max': 0.01053689420223236,
    'unet.weight_shares_f32.down2.0.weight.sum': 0.9759487209178559,
    'unet.weight_shares_f32.down2.0.weight.weighted': 1.431077672259628,
    'unet.weight_shares_f32.down2.0.weight.max': 0.02084287628531456,
    'unet.weight_shares_f32.down2.0.bias.sum': 0.0017556487898673367,
    'unet.weight_shares_f32.down2.0.bias.weighted': 0.0025786467306412905,
    'unet.weight_shares_f32.down2.0.bias.max': 0.0007183459238149226,
    'unet.weight_shares_f32.up.weight.sum': 0.9451672120661456,
    'unet.weight_shares_f32.up.weight.weighted': 1.388107902909092,
    'unet.weight_shares_f32.up.weight.max': 0.017377428710460663,
    'unet.weight_shares_f32.up.bias.sum': 0.002098789162118919,
    'unet.weight_shares_f32.up.bias.weighted': 0.0032668442914395458,
    'unet.weight_shares_f32.up.bias.max': 0.0005280780605971813,
    'unet.weight_shares_f32.fuse.0.weight.sum': 0.9592621737840732,
    'unet.weight_shares_f32.fuse.0.weight.weighted': 1.4232260154200347,
    'unet.weight_shares_f32.fuse.0.weight.max': 0.009529435075819492,
    'unet.weight_shares_f32.fuse.0.bias.sum': 9.74901114432214e-05,
    'unet.weight_shares_f32.fuse.0.bias.weighted': 0.0001408208757993634,
    'unet.weight_shares_f32.fuse.0.bias.max': 4.065792745677754e-05,
    'unet.weight_shares_f32.side.weight.sum': 0.0405044623056483,
    'unet.weight_shares_f32.side.weight.weighted': 0.05772289607586341,
    'unet.weight_shares_f32.side.weight.max': 0.011761504225432873,
    'unet.weight_shares_f32.side.bias.sum': 9.639682104989333e-05,
    'unet.weight_shares_f32.side.bias.weighted': 0.00016460570638325106,
    'unet.weight_shares_f32.side.bias.max': 4.582840483635664e-05,
    'unet.weight_shares_f32.head.weight.sum': 0.9999605678603984,
    'unet.weight_shares_f32.head.weight.weighted': 1.3280105909772988,
    'unet.weight_shares_f32.head.weight.max': 0.17249037325382233,
    'unet.weight_shares_f32.head.bias.sum': 3.9514585751021514e-05,
    'unet.weight_shares_f32.head.bias.weighted': 7.591693656650023e-05,
    'unet.weight_shares_f32.head.bias.max': 3.640235081547871e-05,
    'unet.channel_scores.down1.0.sum': 7403447.982931476,
    'unet.channel_scores.down1.0.weighted': 10459777.222766824,
    'unet.channel_scores.down1.0.max': 3048830.8671650044,
    'unet.channel_scores.down2.0.sum': 7386413.508635669,
    'unet.channel_scores.down2.0.weighted': 10850478.390968254,
    'unet.channel_scores.down2.0.max': 1243823.8333536098,
    'unet.channel_scores.up.sum': 7098609.572532273,
    'unet.channel_scores.up.weighted': 10496384.290177505,
    'unet.channel_scores.up.max': 1118741.1304371294,
    'unet.channel_scores.fuse.0.sum': 7189235.786965493,
    'unet.channel_scores.fuse.0.weighted': 10409179.800392557,
    'unet.channel_scores.fuse.0.max': 1533093.0261078265,
    'unet.channel_scores.side.sum': 304254.1899545144,
    'unet.channel_scores.side.weighted': 426825.3589027681,
    'unet.channel_scores.side.max': 145462.6658387134,
    'unet.channel_scores.head.sum': 7493786.090786815,
    'unet.channel_scores.head.weighted': 10094090.954457197,
    'unet.channel_scores.head.max': 4893481.227116431,
    'unet.sensitivity.down1.0.2': 3913096.261926701,
    'unet.sensitivity.down1.0.4': 546380.8536964224,
    'unet.sensitivity.down1.0.8': 27882.657409453182,
    'unet.sensitivity.down2.0.2': 5547401.317888161,
    'unet.sensitivity.down2.0.4': 810976.0039003366,
    'unet.sensitivity.down2.0.8': 47729.83912055573,
    'unet.sensitivity.up.2': 5360183.912513024,
    'unet.sensitivity.up.4': 856360.2909802581,
    'unet.sensitivity.up.8': 47385.63001132906,
    'unet.sensitivity.fuse.0.2': 5968715.891679121,
    'unet.sensitivity.fuse.0.4': 840733.5743868843,
    'unet.sensitivity.fuse.0.8': 48470.494122242504,
    'unet.sensitivity.side.2': 154663.78466143506,
    'unet.sensitivity.side.4': 26030.269044352186,
    'unet.sensitivity.side.8': 1553.3799897182248,
    'unet.sensitivity.head.2': 4560579.480806232,
    'unet.sensitivity.head.4': 744831.0589789742,
    'unet.sensitivity.head.8': 39864.87062539223,
    'unet.sensitivity_asym_f32.down1.0.3': 1096095.557271155,
    'unet.sensitivity_asym_f32.down2.0.3': 1624778.061645155,
    'unet.sensitivity_asym_f32.up.3': 1586605.380312121,
    'unet.sensitivity_asym_f32.fuse.0.3': 1619047.7337039814,
    'unet.sensitivity_asym_f32.side.3': 51000.60175719905,
    'unet.sensitivity_asym_f32.head.3': 1111278.4244571142,
    'unet.plan.certified': 3240653.1904361034,
    'unet.plan.additive': 6985477.370953662,
    'unet.plan.avg_bits': 3.98974358974359,
    'unet.plan.bits.down1.0': 4.0,
    'unet.plan.bits.down2.0': 4.0,
    'unet.plan.bits.up': 4.0,
    'unet.plan.bits.fuse.0': 4.0,
    'unet.plan.bits.side': 2.0,
    'unet.plan.bits.head': 8.0,
    'unet.prune.certified': 1281602.9077130486,
    'unet.prune.log': 14.063622124108473,
    'unet.prune.sparsity': 0.5,
    'unet.prune_structured.certified': 2134092.03461893,
    'unet.prune_structured.sparsity': 0.2230238393977415,
    'unet.group_mass_exact.0': 0.10578649764047565,
    'unet.group_mass_exact.1': 0.02134576656298492,
    'unet.group_mass_exact.2': 0.3895847477453058,
    'unet.group_mass_exact.3': 0.011227346246952007,
    'unet.group_mass.0': 792741.3846112478,
    'unet.group_mass.1': 159960.6085668763,
    'unet.group_mass.2': 2919464.7638364765,
    'unet.group_mass.3': 84135.33114185606,
}

if __name__ == "__main__":
    print("PINNED = {")
    for k, v in values().items():
        print(f"    {k!r}: {'math.inf' if v == math.inf else repr(v)},")
    print("}")
    sys.exit(0)
