"""The ``pathmetric`` command: every subcommand on a zoo model, numbers checked against the library."""
import importlib.util
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import pathmetric as pm
from pathmetric import reports
from pathmetric.app import models
from pathmetric.app.cli import main
from pathmetric.metric import quantized_weights

ROOT = Path(__file__).resolve().parents[2]
SHAPE = "1,3,32,32"
X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A randomly initialised resnet18 and its checkpoint (the CLI loads the same weights)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_json(capsys, *argv):
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_report_json_matches_library(resnet, capsys):
    model, ckpt = resnet
    out = run_json(capsys, "report", "torchvision:resnet18", "--checkpoint", ckpt,
                   "--input-shape", SHAPE, "--bits", "2,8", "--n", 50000, "--input-bound", 2.5)
    assert out["supported"] and out["input_shape"] == [1, 3, 32, 32]
    assert out["ops"] == pm.check_support(model, X).ops
    for q in (1, 2, 4):
        assert out["path_norms"][str(q)]["value"] == pytest.approx(pm.path_norm(model, X, q=q), rel=1e-12)
        assert out["path_norms"][str(q)]["log"] == pytest.approx(pm.log_path_norm(model, X, q=q), rel=1e-12)
    sens = pm.layer_sensitivity(model, X, bits=(2, 8))
    assert {(r["layer"], r["bits"]): r["path_metric"] for r in out["sensitivity"]} == pytest.approx(dict(sens))
    assert len(out["sensitivity"]) == 21 * 2
    gen = reports.generalization_bound(model, X, n=50000, input_bound=2.5)
    assert out["generalization"] == pytest.approx(gen)
    assert (gen["D"], gen["P"], gen["K"], gen["M"], gen["d_in"], gen["d_out"]) == (45, 1, 9, 1, 3072, 1000)
    both = reports.classical_vs_path(model, quantized_weights(model, X, 8), X, input_bound=2.5)
    compared = {k: v for k, v in out["classical_vs_path"].items() if k != "change"}
    assert compared == pytest.approx(both)
    assert both["log_ratio"] > 0      # path-metric bound sharper than the classical one
    assert out["symmetries"] == pytest.approx(reports.symmetries(model, X))
    assert out["symmetries"]["permutation_groups"] == 12


@pytest.mark.slow
def test_prune_json_matches_library_and_checkpoint_round_trip(resnet, capsys, tmp_path):
    model, ckpt = resnet
    target = tmp_path / "pruned.pt"
    out = run_json(capsys, "prune", "torchvision:resnet18", "--checkpoint", ckpt,
                   "--input-shape", SHAPE, "--sparsity", 0.9, "--out", target)
    lib = pm.prune(model, 0.9, X)
    assert out["certified_bound"] == lib.certified_bound > 0
    assert out["sparsity"] == pytest.approx(lib.sparsity) and out["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert {r["parameter"]: r["sparsity"] for r in out["layers"]} == pytest.approx(
        {n: 1 - float(m.double().mean()) for n, m in lib.masks.items()})
    assert out["log_path_norm_after"] == pytest.approx(pm.log_path_norm(lib.model, X))
    assert out["log_ratio_classical_vs_path"] == pytest.approx(
        reports.classical_vs_path(model, lib.model, X)["log_ratio"])
    reloaded = models.load_model("torchvision:resnet18", target)
    for (name, a), b in zip(reloaded.state_dict().items(), lib.model.state_dict().values()):
        assert torch.equal(a, b), name
    # the certificate is an actual bound on the output change
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        change = (model(x) - reloaded(x)).abs().sum(1).max()
    assert change <= out["certified_bound"]


def test_structured_prune_and_readable_output(capsys):
    model = models.load_model("digits")
    x = torch.zeros(1, 1, 8, 8)
    out = run_json(capsys, "prune", "digits", "--sparsity", 0.25, "--structured")
    lib = pm.prune(model, 0.25, x, structured=True)
    assert out["structured"] and out["certified_bound"] == lib.certified_bound > 0
    assert out["sparsity"] == pytest.approx(lib.sparsity)
    rc, text, _ = run(capsys, "prune", "digits", "--sparsity", 0.25, "--structured")
    assert rc == 0 and f"{lib.certified_bound:.6e}" in text and "conv2 " in text


@pytest.mark.slow
def test_quant_plan_json_matches_library(resnet, capsys):
    model, ckpt = resnet
    out = run_json(capsys, "quant-plan", "torchvision:resnet18", "--checkpoint", ckpt,
                   "--input-shape", SHAPE, "--avg-bits", 4, "--bits", "2,4,8")
    plan = pm.mixed_precision_plan(model, X, bits=(2, 4, 8), avg_bits=4.0)
    assert out["bits"] == plan.bits and out["avg_bits"] == pytest.approx(plan.avg_bits)
    assert plan.avg_bits <= 4.0 and set(plan.bits.values()) <= {2, 4, 8}
    assert out["certified_bound"] == plan.certified_bound
    assert out["additive_bound"] == pytest.approx(plan.additive_bound)


@pytest.mark.slow
def test_nni_prune_from_config(resnet, capsys, tmp_path):
    model, ckpt = resnet
    config = tmp_path / "prune.yaml"
    config.write_text("pruner: path_metric\nconfig_list:\n  - op_types: [Conv2d]\n"
                      "    sparse_ratio: 0.5\n")
    target = tmp_path / "nni.pt"
    out = run_json(capsys, "nni", "prune", "--config", config, "--model", "torchvision:resnet18",
                   "--checkpoint", ckpt, "--input-shape", SHAPE, "--out", target)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(out["sparsity"]) == sorted(convs)
    assert all(v == pytest.approx(0.5) for v in out["sparsity"].values())
    assert out["params_before"] == out["params_after"] == sum(p.numel() for p in model.parameters())
    pruned = torch.load(target, weights_only=False)
    assert out["certified_bound"] == pm.path_metric(model, pruned, X) > 0


def test_report_digits_text_plot_and_unsupported(capsys, tmp_path):
    plot = tmp_path / "sens.png"
    rc, text, _ = run(capsys, "report", "digits", "--n", 1347, "--plot", plot)
    model, x = models.load_model("digits"), torch.zeros(1, 1, 8, 8)
    gen = reports.generalization_bound(model, x, n=1347)
    assert rc == 0 and plot.stat().st_size > 1000
    assert f"{pm.path_norm(model, x):.3e}" in text
    assert f"{gen['C']:.4g}" in text and f"{gen['C_sharp']:.4g}" in text
    assert "fc1" in text and "Symmetries" in text
    factory = tmp_path / "net.py"
    factory.write_text("from torch import nn\n"
                       "def make():\n    return nn.Sequential(nn.Linear(3, 3), nn.GELU())\n")
    rc, out, _ = run(capsys, "report", f"{factory}:make", "--input-shape", "1,3", "--json")
    report = json.loads(out)
    assert rc == 2 and not report["supported"] and "gelu" in json.dumps(report["unsupported"])
    rc, _, err = run(capsys, "report", "nope:x")
    assert rc == 2 and "cannot read model spec" in err


def test_model_specs(tmp_path):
    factory = tmp_path / "mine.py"
    factory.write_text("from torch import nn\n"
                       "def build():\n    return nn.Sequential(nn.Linear(4, 2), nn.ReLU())\n")
    model = models.load_model(f"{factory}:build")
    assert isinstance(model, nn.Sequential) and not model.training
    with pytest.raises(ValueError, match="no callable 'missing'"):
        models.load_model(f"{factory}:missing")
    assert type(models.load_model("timm:resnet10t")).__name__ == "ResNet"
    unet = models.load_model("smp:Unet:resnet18")
    assert type(unet).__name__ == "Unet" and unet.encoder.__class__.__name__ == "ResNetEncoder"
    assert models.example_inputs("digits").shape == (1, 1, 8, 8)
    assert models.example_inputs("torchvision:resnet18", "2x3x64x48").shape == (2, 3, 64, 48)
    with pytest.raises(ValueError, match="batch first"):
        models.parse_shape("64,a")
    with pytest.raises(ValueError, match="batch dimension N is missing; use 1,4"):
        models.check_input_shape(model, models.parse_shape("4"))
    # a checkpoint saved under "state_dict" loads too
    torch.manual_seed(1)
    source = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ck.pt")
    loaded = models.load_model(f"{factory}:build", tmp_path / "ck.pt")
    assert torch.equal(loaded[0].weight, source[0].weight)


def test_console_script_declared():
    (script,) = entry_points(group="console_scripts", name="pathmetric")
    assert script.value == "pathmetric.app.cli:main"
    done = subprocess.run([sys.executable, "-m", "pathmetric.app.cli", "--help"], capture_output=True,
                          text=True, check=True)
    for command in ("report", "prune", "quant-plan", "nni", "demo"):
        assert command in done.stdout


@pytest.mark.slow
def test_example_report_resnet_small(capsys):
    spec = importlib.util.spec_from_file_location("report_resnet", ROOT / "examples" / "report_resnet.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--size", "32"])
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    assert result["generalization"] == pytest.approx(reports.generalization_bound(model, X, n=1_281_167))
    assert result["symmetries"]["rescaling_dims"] == 7680
    assert result["classical_vs_path"]["log_ratio"] > 0
    assert "ratio 10^" in capsys.readouterr().out


def test_benchmark_classical_vs_path_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("classical_vs_path",
                                                  ROOT / "benchmarks" / "classical_vs_path.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--tiny", "--out", str(tmp_path)])
    rows = [line.split(" | ") for line in (tmp_path / "classical_vs_path.md").read_text().splitlines()
            if line.startswith("| digits") or line.startswith("| resnet18")]
    assert len(rows) == 4 and all(float(r[-2]) > 0 for r in rows)   # log10 ratio > 0
