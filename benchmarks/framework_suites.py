"""The frameworks' own test and example workflows, run with pathmetric's adapters swapped in.

Each case follows one workflow of torch-pruning 1.6.1 (tests/ and examples/), NNI 3.0
(test/algo/compression and examples/compression) with ``PathMetricImportance`` /
``PathMetricPruner`` in place of the framework's own importance or pruner, on a small real model
(32x32 inputs), and records its outcome:

- **passed**: the workflow ran and its check held (the pruned model runs, channels went, a
  certificate bounds the measured output change where one is given);
- **refused (op)**: pathmetric refused the model with ``UnsupportedModelError``, naming the op;
- **framework failure**: the framework's own code failed (NNI's tracer in ModelSpeedup, ...).

    python benchmarks/framework_suites.py [--threads 1] [--out FILE]

vgg11_bn is left out: its certified step (the 25088x4096 classifier in float64) was killed at
7.8 GB resident, more than a shared 2-core machine gives one process;
tests/adapters/test_torch_pruning.py and test_nni.py prune it. Intel Neural Compressor's
autotune / PT2E workflows are not run here (adapters/neural_compressor.py is another branch's;
benchmarks/inc_sampler.py covers its sampler).
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from nni.runtime.log import silence_stdout
from torch import nn

import pathmetric as pm
from pathmetric.adapters import nni as pnni
from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step

silence_stdout()          # NNI's INFO log lines off stdout
X = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CASES = []


def case(framework: str, workflow: str):
    def register(fn):
        CASES.append((framework, workflow, fn))
        return fn
    return register


def _zoo(name):
    torch.manual_seed(0)
    extra = {"image_size": 32} if name.startswith("vit") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **extra).eval()


def _last(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _tp_prune(name, **options):
    """tests/test_pruner.py, examples/torchvision_models: BasePruner with our importance; the
    step is certified and the bound checked against the measured change on random inputs."""
    model = _zoo(name)
    before = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(model, X, importance=PathMetricImportance(X), pruning_ratio=0.3,
                                  ignored_layers=[_last(model)], **options)
    bound = certified_step(pruner, X)
    probe = torch.rand(4, 3, 32, 32) * 2 - 1
    change = (before(probe) - model(probe)).abs().sum(1).max()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in before.parameters())
    assert change <= bound * (1 + 1e-6), (float(change), float(bound))
    return f"certified {float(bound):.3e} >= measured {float(change):.3e}"


for _name in ("resnet18", "densenet121", "googlenet", "mobilenet_v2", "vit_b_16", "regnet_x_400mf"):
    case("torch-pruning", f"BasePruner + certified_step, {_name}")(
        lambda name=_name: _tp_prune(name))

case("torch-pruning", "global_pruning=True, resnet18 (tests/test_global_pruning.py)")(
    lambda: _tp_prune("resnet18", global_pruning=True))
case("torch-pruning", "isomorphic=True, densenet121 (tests/test_isomorphic_pruning.py)")(
    lambda: _tp_prune("densenet121", global_pruning=True, isomorphic=True))


@case("torch-pruning", "GroupNormPruner.regularize, resnet18 (tests/test_regularization.py)")
def _group_norm():
    return _regularize(tp.pruner.GroupNormPruner)


@case("torch-pruning", "GrowingRegPruner.update_reg + regularize, resnet18")
def _growing_reg():
    return _regularize(tp.pruner.GrowingRegPruner)


def _regularize(cls):
    model = _zoo("resnet18")
    pruner = cls(model, X, importance=PathMetricImportance(X), pruning_ratio=0.5,
                 ignored_layers=[model.fc])
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    if hasattr(pruner, "update_reg"):
        pruner.update_reg()
    pruner.regularize(model)
    bad = [n for n, p in model.named_parameters() if p.grad is not None
           and not torch.isfinite(p.grad).all()]
    assert not bad, f"{len(bad)} parameters with non-finite gradients"
    pruner.step()
    return "finite gradients, step pruned"


class _LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head((torch.relu(self.conv(x)) * self.gamma.view(1, -1, 1, 1)).mean((2, 3)))


@case("torch-pruning", "unwrapped_parameters=[(gamma, 0)], LayerScale CNN "
      "(tests/test_unwrapped_parameters.py)")
def _unwrapped():
    torch.manual_seed(0)
    model = _LayerScale()
    pruner = tp.pruner.BasePruner(model, X, importance=PathMetricImportance(X), pruning_ratio=0.5,
                                  ignored_layers=[model.head],
                                  unwrapped_parameters=[(model.gamma, 0)])
    bound = certified_step(pruner, X)
    assert model.gamma.shape == (8,)
    return f"gamma 16 -> 8, certified {float(bound):.3e}"


class _ListInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 3)

    def forward(self, images):
        return self.head(torch.relu(self.conv(torch.cat(images, 1))))


@case("torch-pruning", "example_inputs a list taken as one argument (detection-style forward)")
def _list_input():
    torch.manual_seed(0)
    model, images = _ListInput(), [X, X.flip(2)]
    pruner = tp.pruner.BasePruner(model, images, importance=PathMetricImportance(images),
                                  pruning_ratio=0.5, ignored_layers=[model.head])
    certified_step(pruner, images)
    assert model.conv.out_channels == 8
    return "conv 16 -> 8"


def _nni_prune(model, config, inputs=X):
    result = pnni.prune_from_config(model, config, inputs)
    assert result.params_after <= result.params_before
    return (f"params {result.params_before} -> {result.params_after}, certified "
            f"{result.certified_bound:.3e}")


for _name in ("resnet18", "densenet121", "mobilenet_v2"):
    case("NNI", f"PathMetricPruner + ModelSpeedup, {_name} (pruning/test_speedup_torchvision.py)")(
        lambda name=_name: _nni_prune(_zoo(name), {
            "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], "speedup": True}))


@case("NNI", "auto_dependency groups + speedup, resnet18 (test_channel_dependency.py)")
def _nni_dependency():
    return _nni_prune(_zoo("resnet18"), {"config_list": [{"op_types": ["Conv2d"],
                                                          "sparse_ratio": 0.5}],
                                         "auto_dependency": True, "speedup": True})


@case("NNI", "pd_fuse.py config: BatchNorm _output_ aligned to conv weights, resnet18")
def _nni_pd_fuse():
    from nni.compression.utils import auto_set_denpendency_group_ids

    model = _zoo("resnet18")
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}, *[{
        "op_names": [n], "target_names": ["_output_"],
        "target_settings": {"_output_": {"align": {
            "module_name": n.replace("bn", "conv") if "bn" in n else n.replace("downsample.1",
                                                                               "downsample.0"),
            "target_name": "weight", "dims": [0]}, "granularity": "per_channel"}}} for n in norms]]
    config = auto_set_denpendency_group_ids(model, config, X)
    pruner = pnni.PathMetricPruner(model, config, X)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    from nni.compression.speedup import ModelSpeedup
    ModelSpeedup(model, X, masks).speedup_model()
    return f"conv1 64 -> {model.conv1.out_channels}"


@case("NNI", "from_compressor fused with QATQuantizer, digits CNN (test_fusion_compress.py)")
def _nni_fusion():
    import nni
    from nni.compression import TorchEvaluator
    from nni.compression.quantization import QATQuantizer

    from pathmetric.app import digits

    model = digits.pretrained()
    x_train, y_train, _, _ = digits.load_digits_tensors(0)

    def training(model, optimizer, criterion, lr_scheduler=None, max_steps=None, max_epochs=None):
        for step in range(max_steps):
            batch = torch.arange(32) + 32 * step
            optimizer.zero_grad()
            criterion(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()

    evaluator = TorchEvaluator(training, nni.trace(torch.optim.SGD)(model.parameters(), lr=1e-3),
                               nn.functional.cross_entropy)
    quantizer = QATQuantizer(model, [{"op_types": ["Linear"], "quant_dtype": "int8",
                                      "target_names": ["weight"]}], evaluator)
    pruner = pnni.PathMetricPruner.from_compressor(
        quantizer, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], torch.zeros(1, 1, 8, 8))
    _, masks = pruner.compress(max_steps=4, max_epochs=None)
    assert all(float(m["weight"].mean()) == 0.5 for m in masks.values())
    return "masks at 0.5 after the first step, QAT continued"


@case("NNI", "PathMetricPruner + ModelSpeedup, smp Unet resnet18")
def _nni_unet():
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
    return _nni_prune(model, {"config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                              "speedup": True})


def run(fn) -> tuple:
    start = time.perf_counter()
    try:
        outcome, detail = "passed", fn()
    except pm.UnsupportedModelError as error:
        ops = sorted({u[0] for u in error.unsupported})
        outcome, detail = f"refused ({', '.join(ops[:4])})", " ".join(str(error).split())[:160]
    except pnni.SpeedupError as error:
        outcome, detail = "framework failure (NNI ModelSpeedup)", str(error).split(";")[0]
    except Exception as error:  # noqa: BLE001 - recorded: whose code failed, and how
        frame = traceback.extract_tb(error.__traceback__)[-1]
        ours = "pathmetric" in frame.filename or "/adapters/" in frame.filename
        outcome = "FAILED (pathmetric)" if ours else "framework failure"
        detail = f"{type(error).__name__}: {' '.join(str(error).split())[:120]} " \
                 f"({Path(frame.filename).name}:{frame.lineno})"
    return outcome, detail, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "framework_suites.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for framework, workflow, fn in CASES:
        outcome, detail, seconds = run(fn)
        rows.append((framework, workflow, outcome, detail, seconds))
        print(f"{framework:14} {outcome:40} {seconds:6.1f}s  {workflow}", flush=True)
    lines = ["# The frameworks' workflows with pathmetric's adapters", "",
             f"`python benchmarks/framework_suites.py --threads {args.threads}`; torch "
             f"{torch.__version__}, torch-pruning {version('torch-pruning')}, nni "
             f"{version('nni')}, {platform.machine()}, 32x32 inputs, random weights.", "",
             "| framework | workflow (the framework's test or example) | outcome | detail | s |",
             "|---|---|---|---|---|"]
    lines += [f"| {f} | {w} | {o} | {d.replace('|', '/')} | {s:.1f} |" for f, w, o, d, s in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
