"""NNI 3.0's own workflows with PathMetricPruner: the pd_fuse.py config (BatchNorm outputs aligned
to conv weights), the fusion API (``from_compressor``, as test_fusion_compress.py), and
``pathmetric nni prune`` on a model from the user's file, with speedup."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

pytest.importorskip("nni", reason="the nni extra is not installed")
from nni.compression.quantization import QATQuantizer  # noqa: E402
from nni.compression.speedup import ModelSpeedup  # noqa: E402
from nni.compression.utils import auto_set_denpendency_group_ids  # noqa: E402

from pathmetric.adapters import nni as pnni  # noqa: E402
from pathmetric.app import digits, models  # noqa: E402

logging.getLogger("nni").setLevel(logging.WARNING)
COMMAND = str(Path(sys.executable).parent / "pathmetric")
X32 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def zero_channels(mask):
    return int((mask.reshape(mask.shape[0], -1).sum(dim=1) == 0).sum())


def test_pd_fuse_config_aligns_batch_norm_outputs_to_conv_weights():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    batch_norms = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}, *[{
        "op_names": [name], "target_names": ["_output_"],
        "target_settings": {"_output_": {
            "align": {"module_name": name.replace("bn", "conv") if "bn" in name
                      else name.replace("downsample.1", "downsample.0"),
                      "target_name": "weight", "dims": [0]},
            "granularity": "per_channel"}}} for name in batch_norms]]
    config_list = auto_set_denpendency_group_ids(model, config_list, X32)
    running = model.bn1.running_mean.clone()
    pruner = pnni.PathMetricPruner(model, config_list, X32)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert torch.equal(model.bn1.running_mean, running)     # the shape-tracking forward is eval
    assert zero_channels(masks["conv1"]["weight"]) == 32
    output = masks["bn1"]["_output_0"].reshape(64, -1)
    assert torch.equal(output.amax(1) == 0, masks["conv1"]["weight"].reshape(64, -1).amax(1) == 0)
    ModelSpeedup(model, X32, masks).speedup_model()
    assert model.conv1.out_channels == 32 and model.bn1.num_features == 32


def test_from_compressor_fuses_with_a_quantizer(tmp_path):
    from test_nni import _digits_evaluator  # tests/adapters/test_nni.py: digits training steps

    model = digits.pretrained()
    quantizer = QATQuantizer(model, [{"op_types": ["Linear"], "quant_dtype": "int8",
                                      "target_names": ["weight"]}], _digits_evaluator(model))
    pruner = pnni.PathMetricPruner.from_compressor(
        quantizer, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], torch.zeros(1, 1, 8, 8))
    assert pruner.bound_model is model and pruner.fused_compressors[-1] is quantizer
    _, masks = pruner.compress(max_steps=4, max_epochs=None)
    assert {name: zero_channels(m["weight"]) for name, m in masks.items()} == \
        {"conv1": 8, "conv2": 16}


def test_speedup_failure_says_what_failed_and_what_to_do():
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the zoo extra")
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
    config = {"config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], "speedup": True}
    with pytest.raises(pnni.SpeedupError, match=r"ModelSpeedup failed on Unet \(IndexError.*"
                                                r"speedup: false"):
        pnni.prune_from_config(model, config, X32)


FACTORY = """\
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def make():
    torch.manual_seed(0)
    return Small().eval()
"""


def test_cli_out_on_a_user_file_model_with_speedup_and_no_framework_logs(tmp_path):
    (tmp_path / "small.py").write_text(FACTORY)
    (tmp_path / "prune.yaml").write_text("config_list:\n  - op_names: [conv1, conv2]\n"
                                         "    sparse_ratio: 0.5\nspeedup: true\n")
    spec, out = f"{tmp_path / 'small.py'}:make", tmp_path / "pruned.pt"
    run = subprocess.run([COMMAND, "nni", "prune", "--config", str(tmp_path / "prune.yaml"),
                          "--model", spec, "--input-shape", "1,3,16,16", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "\x1b[" not in run.stdout and "Filter" not in run.stdout   # NNI's log lines, prints
    assert run.stdout.splitlines()[0].split() == ["module", "weight", "sparsity"]
    params = int(run.stdout.split("parameters ")[1].split(" -> ")[1].split()[0])
    pruned = models.load_model(spec, str(out))
    assert (pruned.conv1.out_channels, pruned.bn1.num_features, pruned.conv2.in_channels,
            pruned.fc.in_features) == (8, 8, 8, 8)
    assert sum(p.numel() for p in pruned.parameters()) == params
    assert pruned(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    verbose = subprocess.run([COMMAND, "nni", "prune", "--config", str(tmp_path / "prune.yaml"),
                              "--model", spec, "--input-shape", "1,3,16,16", "--verbose",
                              "--json"], capture_output=True, text=True, timeout=600)
    assert verbose.returncode == 0 and json.loads(verbose.stdout)["speedup"]
    assert "speedup the model" in verbose.stderr    # --json keeps stdout for the result
