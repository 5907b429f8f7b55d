"""The installed ``pathmetric`` command: one line and exit status 2 for every user error, only the
result on stdout with ``--json``, reproducible random weights, ``--no-certify``."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from pathmetric.app import models

ROOT = Path(__file__).resolve().parents[2]
COMMAND = str(Path(sys.executable).parent / "pathmetric")
SMALL = ["--input-shape", "1,3,32,32"]


def pathmetric(*argv, cwd=None):
    return subprocess.run([COMMAND, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def one_line_error(run, *fragments):
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "factory.py").write_text("def make():\n    return 3\n")
    (root / "bad.yaml").write_text("pruner: path_metric\nconfig_list:\n  - op_types: [Conv2d\n")
    (root / "ratio.yaml").write_text("config_list:\n  - op_types: [Conv2d]\n    sparse_ratio: 1.5\n")
    (root / "l1.yaml").write_text("pruner: l1\nconfig_list:\n  - op_types: [Conv2d]\n"
                                  "    sparse_ratio: 0.5\nspeedup: true\n")
    torch.save(torchvision.models.vgg11(weights=None).state_dict(), root / "vgg11.pt")
    torch.save(torchvision.models.resnet18(weights=None), root / "resnet18_whole.pt")
    return root


@pytest.mark.parametrize("argv, fragments", [
    (["report", "timm:no_such_model"], ["timm has no model 'no_such_model'"]),
    (["report", "{root}/factory.py:make"], ["returned int, not an nn.Module"]),
    (["report", "torchvision:resnet18", "--checkpoint", "{root}/vgg11.pt", *SMALL],
     ["does not match model ResNet", "missing keys"]),
    (["report", "torchvision:vgg11", "--checkpoint", "{root}/resnet18_whole.pt", *SMALL],
     ["not a state_dict", "VGG"]),
    (["nni", "prune", "--config", "{root}/bad.yaml", "--model", "digits"], ["not valid YAML"]),
    (["nni", "prune", "--config", "{root}/ratio.yaml", "--model", "digits"],
     ["sparse_ratio must be in [0, 1)", "1.5"]),
    (["prune", "digits", "--sparsity", "0.5", "--rounds", "0"], ["--rounds", "positive"]),
    (["prune", "digits", "--sparsity", "1.5"], ["--sparsity", "[0, 1)"]),
    (["report", "torchvision:resnet18", "--input-shape", "3,32,32"],
     ["batch dimension N is missing", "1,3,32,32"]),
])
def test_user_errors_exit_2_with_one_line(files, argv, fragments):
    one_line_error(pathmetric(*[a.format(root=files) for a in argv], "--json"), *fragments)


def test_nni_speedup_json_is_alone_on_stdout_and_its_output_reloads(files, tmp_path):
    out = tmp_path / "pruned.pt"
    run = pathmetric("nni", "prune", "--config", ROOT / "examples" / "nni_prune.yaml",
                     "--model", "torchvision:resnet18", *SMALL, "--out", out, "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["params_after"] < result["params_before"] and result["certified_bound"] > 0
    assert list(result["sparsity"])[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    reloaded = pathmetric("report", "torchvision:resnet18", "--checkpoint", out, *SMALL,
                          "--bits", "8", "--json")
    assert reloaded.returncode == 0, reloaded.stderr[-2000:]
    pruned = models.load_model("torchvision:resnet18", out)   # a state_dict, smaller layers
    assert json.loads(reloaded.stdout)["symmetries"]["parameters"] == \
        sum(p.numel() for p in pruned.parameters()) == result["params_after"]


def test_no_certify_lets_nni_pruners_prune_models_outside_the_class(files):
    run = pathmetric("nni", "prune", "--config", files / "l1.yaml", "--model",
                     "torchvision:mobilenet_v2", *SMALL, "--no-certify", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["certified_bound"] is None and result["params_after"] < result["params_before"]


def test_seed_makes_random_weights_reproducible():
    runs = [json.loads(pathmetric("quant-plan", "torchvision:resnet18", *SMALL, "--avg-bits", 4,
                                  "--seed", seed, "--json").stdout)["certified_bound"]
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_every_option_has_help():
    from pathmetric.app.cli import parser

    def walk(p):
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.dest != "help":
                yield p.prog, action
    missing = [f"{prog} {action.dest}" for prog, action in walk(parser()) if not action.help]
    assert not missing
