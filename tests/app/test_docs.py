"""The code samples of the adapter and CLI docs run as written (each ```python block, alone)."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["torch_pruning.md", "nni.md", "neural_compressor.md", "cli.md", "deployed.md"]
BLOCKS = [(doc, i, code) for doc in DOCS
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc)
                                              .read_text(), re.S))]


def test_the_docs_have_samples():
    assert {doc for doc, _, _ in BLOCKS} >= {"torch_pruning.md", "nni.md", "neural_compressor.md"}


@pytest.mark.slow
@pytest.mark.parametrize("doc, index, code", BLOCKS, ids=[f"{d}-{i}" for d, i, _ in BLOCKS])
def test_doc_sample_runs(doc, index, code, monkeypatch):
    monkeypatch.chdir(ROOT)                      # samples name files as examples/...
    torch.set_num_threads(1)
    exec(compile(code, f"docs/{doc}[{index}]", "exec"), {"__name__": "__doc_sample__"})
