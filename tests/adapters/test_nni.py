"""NNI 3.0 adapter: patches, config loader, PathMetricPruner + ModelSpeedup, quantization bound."""
import copy
import json
import logging

import pytest
import torch
import torchvision
from torch import nn

import pathmetric as pm

pytest.importorskip("nni", reason="the nni extra (NNI 3.0) is not installed")
from nni.common.concrete_trace_utils import concrete_tracer  # noqa: E402
from nni.compression.pruning import L1NormPruner  # noqa: E402
from nni.compression.speedup import ModelSpeedup  # noqa: E402

from pathmetric.adapters import nni as pnni  # noqa: E402
from pathmetric.app import digits, models
from pathmetric.app.digits import DigitsCNN

logging.getLogger("nni").setLevel(logging.WARNING)

X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X32 = X64[..., :32, :32].clone()

YAML = """\
pruner: path_metric
config_list:
  - op_types: [Conv2d]
    sparse_ratio: 0.5
speedup: true
"""


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def zero_channels(mask):
    return int((mask.reshape(mask.shape[0], -1).sum(dim=1) == 0).sum())


# ------------------------------------------------------------------ compatibility patches

def test_compat_patches_are_needed_applied_and_reverted():
    assert not pnni.apply_compat_patches()   # applied when the adapter was imported
    pnni.revert_compat_patches()
    table = concrete_tracer.ConcreteTracer.default_autowrap_leaf_function
    before = list(table.items())
    originals = (concrete_tracer.node_is_impure_wrapper,
                 concrete_tracer._create_wrapped_leaf_iterable_class)

    def restored():
        return list(table.items()) == before and originals == (
            concrete_tracer.node_is_impure_wrapper,
            concrete_tracer._create_wrapped_leaf_iterable_class)

    assert any(getattr(f, "__module__", "") is None for f in table)  # what breaks on this torch
    masks = {"0": {"weight": torch.ones(8, 3, 3, 3)}}
    masks["0"]["weight"][:3] = 0
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(AttributeError):
        ModelSpeedup(tiny(), x, masks).speedup_model()
    digits_masks = {"conv1": {"weight": torch.ones(16, 1, 3, 3)}}
    digits_masks["conv1"]["weight"][:6] = 0
    with pnni.compat_patches():
        assert not any(getattr(f, "__module__", "") is None for f in table)
        assert not pnni.apply_compat_patches()  # idempotent: already applied
        model = tiny()
        ModelSpeedup(model, x, masks).speedup_model()   # patches 1 and 2
        assert model[0].out_channels == 5 and model(x).shape == (1, 4)
        model = DigitsCNN().eval()                       # patch 3: F.max_pool2d
        ModelSpeedup(model, torch.randn(1, 1, 8, 8), digits_masks).speedup_model()
        assert model.conv1.out_channels == 10 and model.conv2.in_channels == 10
    assert restored()
    placeholder = next(iter(torch.fx.symbolic_trace(nn.ReLU()).graph.nodes))
    with pytest.raises(TypeError):
        concrete_tracer.node_is_impure_wrapper(placeholder, True)  # torch's new call
    assert pnni.apply_compat_patches()
    assert concrete_tracer.node_is_impure_wrapper(placeholder, True) is True
    pnni.revert_compat_patches()
    assert restored()
    assert pnni.apply_compat_patches()   # as the import left them


# ------------------------------------------------------------------ config loading

def test_config_errors_list_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="accepted: .*'fpgm'.*'l1'.*'path_metric'"):
        pnni.load_config({"pruner": "magnitude", "config_list": [{"op_types": ["Conv2d"]}]})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['sped_up'\].*speedup"):
        pnni.load_config({"config_list": [{"op_types": ["Conv2d"]}], "sped_up": True})
    with pytest.raises(ValueError, match=r"config_list\[1\].*sparsity_ratio.*sparse_ratio"):
        pnni.load_config({"config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5},
                                          {"op_types": ["Linear"], "sparsity_ratio": 0.5}]})
    with pytest.raises(ValueError, match="config_list"):
        pnni.load_config({"pruner": "l1"})
    with pytest.raises(ValueError, match="evaluator"):
        pnni.pruner_from_config(tiny(), {"pruner": "taylor", "config_list": [
            {"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}, X32)
    path = tmp_path / "prune.json"
    path.write_text(json.dumps({"pruner": "l2", "config_list": [{"op_types": ["Conv2d"],
                                                                  "sparse_ratio": 0.25}]}))
    config = pnni.load_config(path)
    assert config["pruner"] == "l2" and config["speedup"] is False
    yaml_path = tmp_path / "prune.yaml"
    yaml_path.write_text(YAML)
    assert pnni.load_config(yaml_path) == {
        "pruner": "path_metric", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
        "speedup": True, "auto_dependency": False, "pruner_args": {}}


# ------------------------------------------------------------------ pruning + speedup

@pytest.mark.slow
def test_yaml_resnet18_masks_speedup_and_certificate(tmp_path):
    path = tmp_path / "prune.yaml"
    path.write_text(YAML)
    model = resnet18()
    reference = resnet18()
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    result = pnni.prune_from_config(model, path, X64, out=tmp_path / "pruned.pt")
    assert set(result.masks) == set(convs)
    for name, channels in convs.items():
        assert zero_channels(result.masks[name]["weight"]) == channels // 2
        assert result.sparsity[name] == pytest.approx(0.5)
    assert result.speedup and result.params_after < 0.6 * result.params_before
    assert result.params_before == sum(p.numel() for p in reference.parameters())
    assert model.eval()(X64).shape == reference(X64).shape == (1, 1000)
    reloaded = models.load_checkpoint(resnet18(), tmp_path / "pruned.pt")   # a state_dict
    assert torch.equal(reloaded(X64), model(X64))
    assert result.certified_bound > 0
    # the path-metric masks remove less path mass than L1-norm masks of the same sparsity
    l1 = pnni.prune_from_config(resnet18(), {"pruner": "l1", "config_list": [
        {"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}, X64)
    assert all(zero_channels(l1.masks[n]["weight"]) == c // 2 for n, c in convs.items())
    assert result.certified_bound < l1.certified_bound


@pytest.mark.slow
def test_yaml_vgg11_bn_masks_and_speedup(tmp_path):
    path = tmp_path / "prune.yaml"
    path.write_text(YAML)
    torch.manual_seed(0)
    model = torchvision.models.vgg11_bn(weights=None).eval()
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    result = pnni.prune_from_config(model, path, X64, certify=False)
    assert result.certified_bound is None
    assert {n: zero_channels(result.masks[n]["weight"]) for n in convs} == {
        n: c // 2 for n, c in convs.items()}
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [
        c - c // 2 for c in convs.values()]
    assert result.params_after < result.params_before
    assert model.eval()(X64).shape == (1, 1000)


@pytest.mark.slow
def test_dependency_and_global_groups_resnet18():
    """Residual convs in dependency groups, block-internal convs in one global group."""
    residual = [["conv1", "layer1.0.conv2", "layer1.1.conv2"],
                ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"],
                ["layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"],
                ["layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"]]
    inner = [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    config = {"pruner": "path_metric", "speedup": True, "config_list": [
        {"op_names": names, "sparse_ratio": 0.25, "dependency_group_id": k}
        for k, names in enumerate(residual)] + [
        {"op_names": inner, "sparse_ratio": 0.5, "max_sparse_ratio": 0.7,
         "global_group_id": "inner"}]}
    model = resnet18()
    result = pnni.prune_from_config(model, config, X64, certify=False)
    for names in residual:
        first = result.masks[names[0]]["weight"]
        first = first.reshape(first.shape[0], -1).amax(dim=1)
        assert zero_channels(result.masks[names[0]]["weight"]) == len(first) // 4
        for name in names[1:]:
            assert torch.equal(result.masks[name]["weight"].reshape(len(first), -1).amax(dim=1),
                               first)
    sizes = {n: result.masks[n]["weight"].numel() for n in inner}
    pruned = {n: 1 - float(result.masks[n]["weight"].mean()) for n in inner}
    total = sum(pruned[n] * sizes[n] for n in inner) / sum(sizes.values())
    grain = max(sizes[n] // result.masks[n]["weight"].shape[0] for n in inner)
    assert 0.5 - grain / sum(sizes.values()) <= total <= 0.5  # whole channels are ranked
    assert max(pruned.values()) <= 0.7 + 1e-6 and len({round(v, 3) for v in pruned.values()}) > 2
    assert result.params_after < result.params_before
    assert model.eval()(X64).shape == (1, 1000)


@pytest.mark.slow
def test_auto_dependency_groups_share_masks():
    config = {"auto_dependency": True, "config_list": [{"op_types": ["Conv2d"],
                                                        "sparse_ratio": 0.5}]}
    pruner = pnni.pruner_from_config(resnet18(), config, X32)
    _, masks = pruner.compress()
    for names in (["conv1", "layer1.0.conv2", "layer1.1.conv2"],
                  ["layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"]):
        rows = [masks[n]["weight"].reshape(masks[n]["weight"].shape[0], -1).amax(dim=1)
                for n in names]
        assert all(torch.equal(rows[0], r) for r in rows[1:]) and float(rows[0].mean()) == 0.5
    assert not torch.equal(masks["layer1.0.conv1"]["weight"], masks["layer1.1.conv1"]["weight"])


def test_exact_groups_show_progress_and_share_masks(capsys):
    """exact_groups=True is one pair pass per root channel: the groups are counted on stderr."""
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            a = torch.relu(self.stem(x))
            return self.head((torch.relu(self.body(a)) + a).mean((2, 3)))

    config = [{"op_names": ["stem", "body"], "sparse_ratio": 0.5, "dependency_group_id": 0}]
    _, masks = pnni.PathMetricPruner(Residual(), config, X32[..., :8, :8],
                                     exact_groups=True).compress()
    rows = [masks[n]["weight"].reshape(4, -1).amax(dim=1) for n in ("stem", "body")]
    assert torch.equal(rows[0], rows[1]) and float(rows[0].mean()) == 0.5
    assert "pathmetric: exact group masses" in capsys.readouterr().err


def test_global_group_never_empties_a_layer():
    """Without max_sparse_ratio, a global group keeps at least one channel of every layer."""
    config = {"pruner": "path_metric", "config_list": [
        {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.9, "global_group_id": 0}]}
    result = pnni.prune_from_config(tiny(), config, X32[..., :16, :16])
    assert all(float(t["weight"].sum()) > 0 for t in result.masks.values())
    capped = {"pruner": "path_metric", "config_list": [
        {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "global_group_id": 0,
         "max_sparse_ratio": 0.6}]}
    result = pnni.prune_from_config(tiny(), capped, X32[..., :16, :16])
    assert max(result.sparsity.values()) <= 0.6


def rescale_blocks(model, seed=3):
    """Function-preserving copy: channel c of every block's bn1 (weight and bias) times
    ``2**k_c``, input channel c of the block's conv2 divided by it (ReLU is 1-homogeneous)."""
    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in (b for layer in (out.layer1, out.layer2, out.layer3, out.layer4)
                      for b in layer):
            factor = 2.0 ** torch.randint(-3, 4, (block.bn1.num_features,), generator=generator)
            block.bn1.weight.mul_(factor)
            block.bn1.bias.mul_(factor)
            block.conv2.weight.div_(factor[None, :, None, None])
    return out


@pytest.mark.slow
def test_masks_are_rescaling_invariant_unlike_l1():
    model = resnet18()
    rescalings = [rescale_blocks(model), pm.random_rescale(model, X32, seed=3)]
    for rescaled in rescalings:
        assert torch.allclose(model(X32), rescaled(X32), rtol=1e-4, atol=1e-5)
    # channels of the convs ranked globally, single weights of fc (fine_grained default)
    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0,
                    "max_sparse_ratio": 0.9, "granularity": "out_channel"},
                   {"op_names": ["fc"], "sparse_ratio": 0.7}]

    def masks(net, make):
        pruner = make(net, config_list)
        _, out = pruner.compress()
        pruner.unwrap_model()
        return {(m, t): v for m, ts in out.items() for t, v in ts.items() if v is not None}

    nets = [model] + rescalings
    ours = [masks(net, lambda n, c: pnni.PathMetricPruner(n, c, X32, fine_grained=True))
            for net in nets]
    assert ("fc", "weight") in ours[0] and ours[0]["fc", "weight"].dim() == 2
    assert 0 < float(ours[0]["fc", "weight"].mean()) < 1
    for other in ours[1:]:
        assert other.keys() == ours[0].keys()
        assert all(torch.equal(ours[0][k], other[k]) for k in ours[0])
    l1 = [masks(net, L1NormPruner) for net in nets]
    for other in l1[1:]:
        assert any(not torch.equal(l1[0][k], other[k]) for k in l1[0])


@pytest.mark.parametrize("pruner", ["path_metric", "l1"])
def test_speedup_certificate_matches_the_sped_up_model(pruner):
    """ModelSpeedup also deletes the BatchNorm channels (shift included) after pruned convs:
    the certified parameters must compute what the sped-up model computes."""
    _, _, x_test, _ = digits.load_digits_tensors(0)
    x = torch.zeros(1, 1, 8, 8)
    config = {"pruner": pruner, "speedup": True,
              "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}
    reference = digits.pretrained()
    model = digits.pretrained()
    pruner_ = pnni.pruner_from_config(model, config, x)
    _, masks = pruner_.compress()
    pruner_.unwrap_model()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for module, targets in masks.items():
            for target, mask in targets.items():
                named[f"{module}.{target}"].mul_(mask)
    replaced = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pnni.compat_patches():
        speedup = ModelSpeedup(model, x, copy.deepcopy(masks))
        speedup.speedup_model()
    removed = pnni.removed_channels(speedup)
    assert set(removed) == {"conv1", "bn1", "conv2", "bn2"}
    for module, idx in removed.items():
        for target in ("weight", "bias"):
            replaced[f"{module}.{target}"][idx] = 0
    expected = copy.deepcopy(reference)
    expected.load_state_dict({**reference.state_dict(), **replaced})
    with torch.no_grad():
        assert torch.allclose(model.eval()(x_test), expected(x_test), atol=1e-5)
        masked_only = copy.deepcopy(reference)
        for module, targets in masks.items():
            masked_only.get_parameter(f"{module}.weight").mul_(targets["weight"])
            masked_only.get_parameter(f"{module}.bias").mul_(targets["bias"])
        assert not torch.allclose(model(x_test), masked_only(x_test), atol=1e-3)
    result = pnni.prune_from_config(digits.pretrained(), config, x)
    assert result.certified_bound == pm.path_metric(reference, replaced, x)


def test_taylor_from_config_with_an_evaluator():
    model = digits.pretrained()
    evaluator = _digits_evaluator(model)
    config = {"pruner": "taylor", "pruner_args": {"training_steps": 3}, "speedup": True,
              "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}
    result = pnni.prune_from_config(model, config, torch.zeros(1, 1, 8, 8), evaluator=evaluator)
    assert result.sparsity == {"conv1": 0.5, "conv2": 0.5} and result.certified_bound > 0
    assert (model.conv1.out_channels, model.conv2.out_channels) == (8, 16)


# ------------------------------------------------------------------ quantization

@pytest.mark.slow
def test_quantization_bound_equals_engine():
    model = resnet18()
    state = list(model.state_dict())
    per_channel = [{"op_types": ["Conv2d", "Linear"], "target_names": ["weight"],
                    "quant_dtype": "int8", "quant_scheme": "symmetric",
                    "granularity": "out_channel"}]
    per_tensor = [{"op_types": ["Conv2d", "Linear"], "target_names": ["_input_", "weight"],
                   "quant_dtype": "int4"}]
    affine = [{"op_types": ["Conv2d", "Linear"], "target_names": ["weight"],
               "quant_dtype": "uint8", "quant_scheme": "affine", "granularity": "out_channel"}]
    named = dict(model.named_parameters())
    for config_list, engine in [(per_channel, dict(bits=8, granularity="per_channel")),
                                (per_tensor, dict(bits=4, granularity="per_tensor"))]:
        weights = pnni.quantized_parameters(model, config_list)
        assert set(weights) == {f"{n}.weight" for n, m in model.named_modules()
                                if isinstance(m, (nn.Conv2d, nn.Linear))}
        assert all(torch.equal(w, pm.quantize_weights(named[n], **engine))
                   for n, w in weights.items())
    bound = pnni.quantization_bound_from_config(model, per_tensor, X32)
    assert bound == pm.quantization_bound(model, X32, bits=4, granularity="per_tensor") > 0
    # NNI's affine grid rounds zero_point + w / scale: a few ties differ from the engine's
    weights = pnni.quantized_parameters(model, affine)
    engine = {n: pm.quantize_weights(named[n], 8, "asymmetric", "per_channel") for n in weights}
    differ = sum(int((w != engine[n]).sum()) for n, w in weights.items())
    assert differ < 1e-5 * sum(w.numel() for w in weights.values())
    assert list(model.state_dict()) == state  # the model is not wrapped or modified
    with pytest.raises(ValueError, match="no parameter"):
        pnni.quantization_bound_from_config(model, [{"op_types": ["ReLU"],
                                                     "quant_dtype": "int8"}], X32)


# ------------------------------------------------------------------ issue 16: NNI workflows

def _digits_evaluator(model):
    import nni
    from nni.compression import TorchEvaluator

    x_train, y_train, _, _ = digits.load_digits_tensors(0)

    def training(model, optimizer, criterion, lr_scheduler=None, max_steps=None, max_epochs=None):
        model.train()
        for step in range(max_steps):
            batch = torch.randint(0, len(x_train), (32,),
                                  generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            criterion(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=1e-3)
    return TorchEvaluator(training, optimizer, nn.functional.cross_entropy)


@pytest.mark.parametrize("schedule", ["AGPPruner", "LinearPruner"])
def test_scheduled_pruners_drive_path_metric_pruner(schedule):
    from nni.compression import pruning
    model = digits.pretrained()
    pruner = pnni.PathMetricPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                                   torch.zeros(1, 1, 8, 8))
    seen = []
    generate = pruner.generate_masks

    def recording():
        masks = generate()
        seen.append(sorted(zero_channels(m["weight"]) for m in masks.values()))
        return masks

    pruner.generate_masks = recording
    scheduled = getattr(pruning, schedule)(pruner, interval_steps=2, total_times=3,
                                           evaluator=_digits_evaluator(model))
    _, masks = scheduled.compress(max_steps=6, max_epochs=None)
    scheduled.unwrap_model()
    assert len(seen) == 3 and seen[0] < seen[1] < seen[2] == [8, 16]    # growing sparsity, then the goal
    ModelSpeedup(model, torch.zeros(1, 1, 8, 8), masks).speedup_model()
    assert (model.conv1.out_channels, model.conv2.out_channels) == (8, 16)


def test_compress_with_steps_alone_says_what_to_do():
    pruner = pnni.PathMetricPruner(tiny(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                                   torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="AGPPruner or LinearPruner"):
        pruner.compress(max_steps=10, max_epochs=None)


def test_sparse_threshold_keeps_a_block_per_target():
    model = resnet18()
    pruner = pnni.PathMetricPruner(model, [{"op_types": ["Conv2d"], "sparse_threshold": 1e-4}], X32)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    kept = {name: m["weight"].shape[0] - zero_channels(m["weight"]) for name, m in masks.items()}
    assert min(kept.values()) >= 1 and min(kept.values()) == 1   # the threshold empties some


def test_docs_quantization_snippet_with_activation_targets(capsys):
    import runpy
    from pathlib import Path
    runpy.run_path(str(Path(__file__).parents[2] / "examples" / "nni_quantization_bound.py"),
                   run_name="__main__")
    assert "certified" in capsys.readouterr().out


def test_norm_pruning_example_agp_then_speedup_without_compat_call():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parents[2] / "examples" / "nni_agp_speedup.py"
    assert "compat" not in script.read_text()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "\x1b[" not in run.stdout and "Speedup done" not in run.stdout   # NNI's log lines
    lines = dict(line.split(":", 1) for line in run.stdout.splitlines() if ":" in line)
    before = int(lines["Original model parameter number"])
    after = int(lines["Pruned model parameter number"])
    assert after < 0.5 * before and lines["Output shape after speedup"].strip() == "(8, 10)"
