"""The subcommands as a newcomer meets them: numbers that follow the library's API, messages that
say what to do, one line on stderr for a refused model."""
import json

import pytest
import torch

import pathmetric as pm
from pathmetric.app import models
from pathmetric.app.cli import main

DECODER = """\
import torch
from torch import nn


class Decoder(nn.Module):
    \"\"\"conv -> ReLU -> transposed conv (weight laid out (in, out, k, k)) -> ReLU -> x @ W.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.proj = nn.Parameter(torch.randn(32, 5) * 0.3)

    def forward(self, x):
        return torch.relu(self.up(torch.relu(self.conv(x)))) @ self.proj


def make():
    torch.manual_seed(0)
    return Decoder().eval()
"""


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def decoder(tmp_path):
    (tmp_path / "decoder.py").write_text(DECODER)
    return f"{tmp_path / 'decoder.py'}:make"


def test_report_quantizes_transposed_convs_and_matmul_weights_per_output_channel(decoder, capsys):
    # the quantized change is pm's: per output channel, dimension 1 of a transposed conv's
    # weight and of W in x @ W (a copy that took dimension 0 measured another change)
    rc, out, _ = run(capsys, "report", decoder, "--input-shape", "1,3,16,16", "--bits", "8",
                     "--json")
    assert rc == 0
    x = torch.zeros(1, 3, 16, 16)
    expected = pm.log_quantization_bound(models.load_model(decoder), x, bits=8)
    assert json.loads(out)["classical_vs_path"]["log_path_bound"] == pytest.approx(expected,
                                                                                  rel=1e-12)


FACTORIES = """\
import torch
import torchvision
from torch import nn


def vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1,
                                                num_heads=2, hidden_dim=16, mlp_dim=32).eval()


def broken():
    raise RuntimeError("no weights here")


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def pair():
    return Pair()
"""


@pytest.fixture
def factories(tmp_path):
    (tmp_path / "factories.py").write_text(FACTORIES)
    return tmp_path / "factories.py"


def run_any(capsys, *argv):
    """``run``, with argparse's own exits (status 2) as a return code."""
    try:
        return run(capsys, *argv)
    except SystemExit as done:
        out = capsys.readouterr()
        return done.code, out.out, out.err


def test_report_on_a_refused_model_is_one_line_naming_the_layers(factories, capsys):
    rc, out, err = run(capsys, "report", f"{factories}:vit", "--input-shape", "1,3,32,32")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    for layer in ("MultiheadAttention", "LayerNorm", "GELU", "pathmetric report"):
        assert layer in err
    rc, out, err = run(capsys, "report", f"{factories}:vit", "--input-shape", "1,3,32,32",
                       "--json")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert not json.loads(out)["supported"] and len(json.loads(out)["unsupported"]) > 3


@pytest.mark.parametrize("argv, fragments", [
    (["report", "digits", "--input-bound", "-1"], ["--input-bound", "positive number", "'-1'"]),
    (["report", "digits", "--lipschitz", "0"], ["--lipschitz", "positive number"]),
    (["quant-plan", "digits", "--avg-bits", "-3"], ["--avg-bits", "positive number", "'-3'"]),
    (["quant-plan", "digits", "--avg-bits", "4", "--bits", "1"], ["--bits", "between 2 and 16"]),
    (["quant-plan", "digits", "--avg-bits", "4", "--bits", "0,4"], ["--bits", "between 2 and 16"]),
    (["report", "torchvision:resnet_18"], ["no model 'resnet_18'", "resnet18", "list_models"]),
    (["report", "{factories}:broken"], ["broken() raised RuntimeError: no weights here",
                                        "your model factory"]),
    (["report", "{factories}:pair", "--input-shape", "1,4"], ["needs 2 inputs (x, y)",
                                                              "tuple of inputs"]),
])
def test_bad_input_is_one_line_saying_what_to_do(factories, capsys, argv, fragments):
    rc, out, err = run_any(capsys, *[a.format(factories=factories) for a in argv])
    lines = [line for line in err.splitlines() if "error" in line]
    assert rc == 2 and out == "" and len(lines) == 1 and "internal error" not in lines[0], err
    assert "-3 bits" not in lines[0] and "math domain" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_threads_default_to_the_idle_cpus_and_the_callers_count_is_restored(monkeypatch, capsys):
    from pathmetric.app import common

    monkeypatch.setattr(common.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (2.6, 0.0, 0.0), raising=False)
    assert common.default_threads() == 1
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.2, 0.0, 0.0), raising=False)
    assert common.default_threads() == 4
    calls, set_threads = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), set_threads(n)))
    before = torch.get_num_threads()
    rc, _, _ = run(capsys, "quant-plan", "digits", "--avg-bits", "4", "--threads", "3", "--json")
    assert rc == 0 and calls == [3, before] and torch.get_num_threads() == before
    calls.clear()
    rc, _, _ = run(capsys, "quant-plan", "digits", "--avg-bits", "4", "--json")
    assert rc == 0 and calls == [4, before]


def test_structured_prune_counts_channels_and_says_why_a_layer_is_untouched(capsys):
    rc, out, _ = run(capsys, "prune", "digits", "--sparsity", "0.5", "--structured", "--json")
    channels = json.loads(out)["channels"]
    model, x = models.load_model("digits"), torch.zeros(1, 1, 8, 8)
    result = pm.prune(model, 0.5, x, structured=True)
    for layer, count in channels.items():
        mask = result.masks[f"{layer}.weight"]
        assert count["total"] == mask.shape[0]
        assert count["pruned"] == int((mask.reshape(mask.shape[0], -1).sum(1) == 0).sum())
    pruned = sum(c["pruned"] for c in channels.values())
    assert pruned == round(0.5 * sum(c["total"] for c in channels.values()))
    rc, out, _ = run(capsys, "prune", "digits", "--sparsity", "0.5", "--structured")
    assert rc == 0 and "channels kept" in out and f"{pruned} of 112 output channels pruned" in out
    assert "weights removed: share" in out


def test_quant_plan_out_writes_the_plan_it_certifies(capsys, tmp_path):
    out_file = tmp_path / "quantized.pt"
    rc, out, _ = run(capsys, "quant-plan", "digits", "--avg-bits", "4", "--out", out_file,
                     "--json")
    plan = json.loads(out)
    model, x = models.load_model("digits"), torch.zeros(1, 1, 8, 8)
    state = torch.load(out_file, weights_only=True)
    changed = {k: v for k, v in state.items() if not torch.equal(v, model.state_dict()[k])}
    assert sorted(changed) == sorted(f"{layer}.weight" for layer in plan["bits"])
    assert pm.path_metric(model, changed, x) == pytest.approx(plan["certified_bound"], rel=1e-9)
    rc, text, _ = run(capsys, "quant-plan", "digits", "--avg-bits", "4")
    assert "additive bound is what the plan minimises" in text
