"""``pathmetric demo``: the paper's qualitative result on scikit-learn digits (arXiv 2405.15006)."""
import contextlib
import io
import json

import pytest
import torch

from pathmetric.app import digits
from pathmetric.app.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    plot = tmp_path_factory.mktemp("demo") / "demo.png"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        result = digits.run_demo(sparsities=(0.5, 0.8, 0.9), epochs=2, plot=plot)
    return plot, result, text.getvalue()


def rows(result, method, network):
    return {r["sparsity"]: r for r in result["rows"]
            if r["method"] == method and r["network"] == network}


def test_rescaling_leaves_the_function_unchanged(demo):
    _, result, _ = demo
    assert result["rescale_max_output_change"] == 0.0     # factors are powers of two
    assert result["base_accuracy"] > 0.97


def test_path_magnitude_is_identical_with_and_without_rescaling(demo):
    _, result, _ = demo
    original, rescaled = rows(result, "path-magnitude", "original"), rows(result, "path-magnitude", "rescaled")
    for s in (0.5, 0.8, 0.9):
        assert rescaled[s]["masks_equal_original"] and original[s]["masks_equal_original"]
        assert rescaled[s]["pruned_accuracy"] == original[s]["pruned_accuracy"]
        assert rescaled[s]["accuracy"] == original[s]["accuracy"]
        assert rescaled[s]["certified_bound"] == pytest.approx(original[s]["certified_bound"], rel=1e-9)
    # magnitude pruning is not invariant: its masks change under rescaling
    assert not any(r["masks_equal_original"] for r in rows(result, "magnitude", "rescaled").values())


def test_magnitude_pruning_of_the_rescaled_net_collapses(demo):
    _, result, _ = demo
    path = rows(result, "path-magnitude", "rescaled")
    magnitude = rows(result, "magnitude", "rescaled")
    plain = rows(result, "magnitude", "original")
    for s in (0.8, 0.9):
        assert path[s]["accuracy"] > 0.9
        assert magnitude[s]["accuracy"] < path[s]["accuracy"] - 0.5
        assert plain[s]["accuracy"] > 0.9          # magnitude works on the network as trained
    assert magnitude[0.9]["accuracy"] < 0.2        # chance is 0.1


def test_certificates_bound_the_measured_change(demo):
    plot, result, _ = demo
    for r in result["rows"]:
        if r["method"] == "path-magnitude":
            assert 0 < r["measured_change"] <= r["certified_bound"]
    quant = result["quantization"]
    assert 0 < quant["measured_change"] <= quant["certified_bound"]
    assert quant["avg_bits"] <= 4.0 and quant["accuracy"] > 0.95
    assert plot.stat().st_size > 10_000


def test_demo_prints_the_table(demo):
    _, result, text = demo
    assert "magnitude (rescaled)" in text and "path-magnitude (rescaled)" in text
    for r in result["rows"]:
        assert f"{r['pruned_accuracy']:.3f} -> {r['accuracy']:.3f}" in text
    assert "path-magnitude masks identical with and without rescaling: True" in text
    assert "mixed-precision plan" in text


def test_demo_command_forwards_its_options(capsys, tmp_path, monkeypatch):
    calls = []

    def fake(**kwargs):                 # the command only forwards its options
        calls.append(kwargs)
        return {"rows": []}
    monkeypatch.setattr(digits, "run_demo", fake)
    assert main(["demo", "--sparsities", "0.6,0.9", "--epochs", "1", "--plot", str(tmp_path / "p.png"),
                 "--json"]) == 0
    assert calls == [{"sparsities": (0.6, 0.9), "epochs": 1, "seed": 0,
                      "plot": str(tmp_path / "p.png"), "quiet": True}]
    assert json.loads(capsys.readouterr().out) == {"rows": []}


def test_finetune_keeps_pruned_weights_at_zero():
    data = digits.load_digits_tensors(0)
    assert data[0].shape[1:] == (1, 8, 8) and 0 <= float(data[0].min()) and float(data[0].max()) <= 1
    assert len(data[1]) + len(data[3]) == 1797
    model = digits.pretrained(data)
    masks = digits.magnitude_masks(model, 0.7, ["conv2.weight", "fc1.weight"])
    tuned = digits.finetune(model, data, masks, epochs=1)
    for name, mask in masks.items():
        assert torch.all(dict(tuned.named_parameters())[name][~mask] == 0)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.3 * sum(m.numel() for m in masks.values()))
