"""The command line reports a softmax head and its log-probability certificate
in every subcommand."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = """import sys
sys.path[:0] = [{tests!r}]  # tests/models.py
from models import QuickstartNet


def make():
    return QuickstartNet()
"""


@pytest.fixture
def quickstart(tmp_path):
    path = tmp_path / "quickstart.py"
    here = Path(__file__).parent
    path.write_text(QUICKSTART.format(here=str(here), tests=str(here.parent)))
    return f"{path}:make"


@pytest.mark.slow
def test_cli_json_gives_the_head_and_the_log_probability_certificate(quickstart, tmp_path, capsys):
    from pathmetric.app.cli import main
    done = subprocess.run([str(Path(sys.executable).parent / "pathmetric"), "prune", quickstart,
                           "--input-shape", "1,1,28,28", "--sparsity", "0.5", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["head"] == "log_softmax" and "logits" in out["notes"][0]
    assert out["head_factor"] == 11
    assert out["log_probabilities_certified_bound"] == 11 * out["certified_bound"] > 0

    def run_json(*argv):
        assert main([str(a) for a in argv] + ["--json"]) == 0
        return json.loads(capsys.readouterr().out)

    plan = run_json("quant-plan", quickstart, "--input-shape", "1,1,28,28", "--avg-bits", 6)
    assert plan["head"] == "log_softmax" and plan["notes"]
    assert plan["log_probabilities_certified_bound"] == 11 * plan["certified_bound"]
    report = run_json("report", quickstart, "--input-shape", "1,1,28,28")
    assert report["head"] == "log_softmax" and report["notes"]
    config = tmp_path / "prune.yaml"
    config.write_text("pruner: path_metric\nconfig_list:\n  - op_types: [Conv2d]\n"
                      "    sparse_ratio: 0.5\n")
    nni = run_json("nni", "prune", "--config", config, "--model", quickstart,
                   "--input-shape", "1,1,28,28")
    assert nni["head"] == "log_softmax" and nni["notes"]
    plain = run_json("prune", "digits", "--sparsity", 0.3)
    assert plain["head"] is None and plain["notes"] == [] and "head_factor" not in plain
