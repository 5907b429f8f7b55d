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
