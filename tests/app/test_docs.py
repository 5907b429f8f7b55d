"""Every code block of README.md and docs/ works as written: each ```python block runs alone
(slow: real models), and each `pathmetric ...` command line of the other blocks is accepted by
the command's parser (subcommand, options and their values)."""
import re
import shlex
from pathlib import Path

import pytest
import torch

from pathmetric.app.cli import parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(language):
    """``(doc, index, code)`` of every fenced block in ``language`` ("python"; "" for the others)."""
    out = []
    for doc in DOCS:
        fences = re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(), re.DOTALL | re.MULTILINE)
        out += [(doc.relative_to(ROOT).as_posix(), i, code)
                for i, (lang, code) in enumerate(fences) if (lang == "python") == (language == "python")]
    return out


PYTHON = blocks("python")
COMMANDS = [(doc, line.split("#")[0].strip()) for doc, _, code in blocks("")
            for line in code.splitlines() if line.startswith("pathmetric ")]


def test_the_docs_have_samples():
    assert {doc for doc, _, _ in PYTHON} >= {"README.md", "docs/torch_pruning.md", "docs/nni.md",
                                             "docs/neural_compressor.md", "docs/heads.md"}
    assert {doc for doc, _ in COMMANDS} >= {"docs/cli.md"}


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_doc_command_lines_parse(doc, command):
    try:
        parser().parse_args(shlex.split(command)[1:])
    except SystemExit as error:
        pytest.fail(f"{doc}: `{command}` is refused by the parser (exit {error.code})")


@pytest.mark.slow
@pytest.mark.parametrize("doc, index, code", PYTHON, ids=[f"{d}-{i}" for d, i, _ in PYTHON])
def test_doc_sample_runs(doc, index, code, monkeypatch):
    monkeypatch.chdir(ROOT)                      # samples name files as examples/...
    torch.set_num_threads(1)
    exec(compile(code, f"{doc}[{index}]", "exec"), {"__name__": "__doc_sample__"})
