"""The evidence benchmarks (benchmarks/pruning_curves.py, quant_ranking.py,
certificate_tightness.py) at tiny size, and the baselines they compare against."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathmetric as pm

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import evidence_common as ec  # noqa: E402


def _mlp(seed=0, bias=False):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.ReLU(), nn.Linear(7, 6, bias=bias), nn.ReLU(),
                         nn.Linear(6, 3, bias=bias)).eval()


# ----------------------------------------------------------------------------- baselines

def test_synflow_equals_path_mass_on_bias_free_relu_mlp():
    """Without biases, BN or max-pooling, SynFlow's |w * dR_|theta|(1)/dw| is exactly the path mass
    through w (pm.weight_scores): an independent check of both."""
    model, x = _mlp(), torch.zeros(1, 5)
    syn = ec.synflow_scores(model, x, {})
    mass = pm.weight_scores(model, x)
    for name in ("0.weight", "2.weight", "4.weight"):
        torch.testing.assert_close(syn[name], mass[name].double(), rtol=1e-9, atol=0)


def test_synflow_masks_follow_the_exponential_schedule_and_keep_pruned_weights_pruned():
    model, x = _mlp(1, bias=True), torch.zeros(1, 5)
    masks = ec.synflow_masks(model, x, 0.6, rounds=5)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    first = ec.synflow_masks(model, x, 1 - 0.4 ** 0.2, rounds=1)  # the first round of the 5
    assert all(bool((masks[n] <= first[n]).all()) for n in masks)


def test_select_is_global_and_respects_the_cap():
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0) + 100}
    keep = ec.select(scores, 0.5, cap=1.0)
    assert int(keep["a"].sum()) == 0 and int(keep["b"].sum()) == 10
    keep = ec.select(scores, 0.5, cap=0.8)
    assert int(keep["a"].sum()) == 2 and int(keep["b"].sum()) == 8
    assert keep["a"][-2:].all() and not keep["b"][:2].any()


def test_magnitude_is_not_rescaling_invariant_and_path_magnitude_is():
    model, data, x = ec.setup()
    rescaled = pm.random_rescale(model, x, seed=3)
    for structured in (False, True):
        a, b = ec.path_masks(model, x, 0.7, structured), ec.path_masks(rescaled, x, 0.7, structured)
        assert all(torch.equal(a[n], b[n]) for n in a)
        a, b = ec.magnitude_masks(model, x, 0.7, structured), ec.magnitude_masks(rescaled, x, 0.7, structured)
        assert not all(torch.equal(a[n], b[n]) for n in a)


def test_channel_masks_cover_the_batchnorm_of_the_channel():
    model, _, x = ec.setup()
    masks = ec.magnitude_masks(model, x, 0.5, structured=True)
    assert {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "fc1.weight"} <= set(masks)
    assert "fc2.weight" not in masks
    assert torch.equal(masks["conv1.weight"][:, 0, 0, 0], masks["bn1.bias"])


def test_hutchinson_trace_matches_the_exact_hessian_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    w = model[0].weight.detach().clone()

    def loss(weight):
        return F.cross_entropy(F.linear(x, weight, model[0].bias.detach()), y)

    exact = float(torch.autograd.functional.hessian(loss, w).reshape(12, 12).trace())
    est = ec.hessian_traces(model, ["0"], x, y, samples=3000)["0"]
    assert est == pytest.approx(exact, rel=0.05)


def test_fisher_diagonal_matches_per_sample_loop():
    model = _mlp(2, bias=True)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    fisher = ec.fisher_diagonals(model, ["0", "4"], x, y)
    grads = []
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(model[0].weight.grad.clone())
    torch.testing.assert_close(fisher["0"], torch.stack(grads).pow(2).mean(0))


def test_adversarial_search_beats_the_data_and_stays_under_the_certificate():
    model, data, x = ec.setup()
    other = ec.quantized(model, ec.prunable(model, x), 3)
    on_data = float(ec.output_gap(model, other, data[2]).max())
    found, where = ec.adversarial_gap(model, other, data[2], starts=8, steps=20)
    assert found > on_data
    assert float(where.abs().max()) <= 1.0
    assert found <= pm.path_metric(model, other, x)


def test_calibrated_estimate_is_labelled_and_scaled():
    model, data, x = ec.setup()
    others = [ec.quantized(model, ec.prunable(model, x), b) for b in (4, 6)]
    fitted = pm.calibrate(model, others, data[0][:8], "data")
    est = pm.estimate(model, ec.quantized(model, ec.prunable(model, x), 5), x, fitted)
    assert fitted.ratio > 1 and fitted.fitted_on == 8 and fitted.settings == 2
    assert est.estimated * fitted.ratio == pytest.approx(est.certified)
    assert est.certified == pm.path_metric(model, ec.quantized(model, ec.prunable(model, x), 5), x)
    assert "not a bound" in est.label and "8 inputs" in est.label
    worst = pm.calibrate(model, others, data[0][:8], "worst-case", steps=10)
    assert 1 < worst.ratio < fitted.ratio  # the search finds larger gaps than the 8 inputs
    with pytest.raises(ValueError, match="target"):
        pm.calibrate(model, others, data[0][:8], "typical")


# ----------------------------------------------------------------------------- tiny experiments

def test_pruning_curves_tiny(tmp_path):
    import pruning_curves
    rows = pruning_curves.run(tiny=True, out=tmp_path)
    assert (tmp_path / "pruning_curves.md").stat().st_size > 0
    assert (tmp_path / "pruning_curves.png").stat().st_size > 0
    assert len(rows) == 2 * len(pruning_curves.CRITERIA) * len(pruning_curves.TINY["sparsities"]) * 2
    for r in rows:
        assert 0 <= r["one_shot"] <= 1 and 0 <= r["finetuned"] <= 1
        if r["criterion"].startswith("path-magnitude"):
            assert r["agreement"] == 1.0
    for structure in ("unstructured", "channel"):
        pair = [r for r in rows if r["criterion"] == "path-magnitude" and r["structure"] == structure
                and r["sparsity"] == 0.8]
        assert pair[0]["one_shot"] == pair[1]["one_shot"]
    assert any(r["agreement"] < 1 for r in rows if r["criterion"] == "magnitude")
    assert "Other rescalings" in (tmp_path / "pruning_curves.md").read_text()


def test_quant_ranking_tiny(tmp_path):
    import quant_ranking
    results = quant_ranking.run(tiny=True, out=tmp_path)
    assert (tmp_path / "quant_ranking.md").stat().st_size > 0
    assert (tmp_path / "quant_ranking.png").stat().st_size > 0
    assert set(results) == set(ec.DATASETS)
    for points, corr in results.values():
        assert len(points) == 4 * len(quant_ranking.BITS) * len(quant_ranking.GRANULARITIES)
        for q in points:  # each layer's certificate holds on the test data (inputs within [0, 3])
            assert q["max_gap"] <= 3 * q["path-metric"]
        assert all(-1 <= corr[p, "max_gap", "all"] <= 1 for p in quant_ranking.PREDICTORS)
        assert corr["path-metric", "max_gap", "all"] > 0.5


def test_certificate_tightness_tiny(tmp_path):
    import certificate_tightness
    results = certificate_tightness.run(tiny=True, out=tmp_path)
    assert (tmp_path / "certificate_tightness.md").stat().st_size > 0
    assert (tmp_path / "certificate_tightness.png").stat().st_size > 0
    tiny = certificate_tightness.TINY
    assert set(results) == set(ec.DATASETS)
    for dataset, rows in results.items():
        assert len(rows) == len(tiny["bits"]) + 2 * len(tiny["sparsities"])
        for r in rows:
            assert max(r["data_gap"], r["box_gap"], r["ball_gap"]) <= r["certified"]
            assert r["est_data"] < r["certified"] and r["est_worst"] < r["certified"]
            assert r["est_data"] < r["est_worst"]
            if dataset == "digits":  # sup-norm 1: the ball search starts from the worst images
                assert r["data_gap"] <= r["ball_gap"]
