"""The adapters on the same models: MobileNetV2 and the NNI quickstart model
(heads), log certificates past float64."""
import copy
import math

import pytest
import torch
from models import X32, QuickstartNet, deep_mlp, mobilenet_v2
from torch import nn

import pathmetric as pm

tp = pytest.importorskip("torch_pruning")
pytest.importorskip("nni")
pytest.importorskip("neural_compressor")


@pytest.mark.slow
def test_torch_pruning_prunes_mobilenet_v2():
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step
    model = mobilenet_v2()
    shape = model(X32).shape
    convs = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    original = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(model, X32, importance=PathMetricImportance(X32),
                                  pruning_ratio=0.4, ignored_layers=[model.classifier[-1]])
    bound = certified_step(pruner, X32)   # depthwise convolutions zeroed row by row
    assert model(X32).shape == shape
    kept = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert 0.5 * convs <= kept <= 0.7 * convs
    assert 0 < bound < math.inf
    for seed in range(3):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        change = (original(x) - model(x)).abs().sum(1).max().item()
        assert change <= max(x.abs().max().item(), 1.0) * bound
    assert math.isfinite(pm.log_path_norm(model, X32))


@pytest.mark.slow
def test_nni_prunes_mobilenet_v2_and_the_quickstart_model(tmp_path):
    from pathmetric.adapters import nni as pnni
    model = mobilenet_v2()
    config = {"pruner": "path_metric", "speedup": True,
              "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.4,
                               "exclude_op_names": ["features.0.0"]}]}
    shape = model(X32).shape
    result = pnni.prune_from_config(model, config, X32)
    assert result.speedup and result.params_after < 0.85 * result.params_before
    assert model.eval()(X32).shape == shape
    assert 0 < result.certified_bound < math.inf

    torch.manual_seed(0)
    net = QuickstartNet().eval()
    mnist = torch.randn(1, 1, 28, 28)
    quick = pnni.prune_from_config(net, {"pruner": "path_metric", "speedup": True, "config_list": [
        {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "exclude_op_names": ["fc3"]}]},
        mnist)
    assert quick.params_after < quick.params_before and net(mnist).shape == (1, 10)
    assert 0 < quick.certified_bound < math.inf


@pytest.mark.slow
def test_neural_compressor_certifies_mobilenet_v2():
    from neural_compressor.torch.quantization import RTNConfig

    from pathmetric.adapters import neural_compressor as pinc
    model = mobilenet_v2()
    bound = pinc.quantization_bound(model, X32, RTNConfig(bits=4))
    assert 0 < bound < math.inf


def test_inc_sampler_ranks_by_log_bounds_past_float64():
    from neural_compressor.torch.quantization import RTNConfig

    from pathmetric.adapters import neural_compressor as pinc
    model, x = deep_mlp(), torch.randn(1, 4)
    configs = [RTNConfig(bits=2, group_size=-1), RTNConfig(bits=8, group_size=-1),
               RTNConfig(bits=4, group_size=-1)]
    sampler = pinc.path_metric_sampler(model, x)(configs)
    assert sampler.bounds == [math.inf] * 3
    assert all(math.isfinite(b) for b in sampler.log_bounds)
    assert list(sampler) == [1, 2, 0]
    per_bit = pinc.path_metric_sampler(model, x, order="bound_per_saved_bit")(configs)
    logs = per_bit.log_bounds
    assert list(per_bit) == sorted(range(3), key=lambda i: logs[i] - math.log(32 - per_bit.bits[i]))


def test_nni_and_torch_pruning_results_carry_a_finite_log_bound_past_float64():
    import torch_pruning as tp

    from pathmetric.adapters import nni as pnni
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step
    model, x = deep_mlp(depth=300), torch.randn(1, 4)
    result = pnni.prune_from_config(model, {"pruner": "path_metric", "config_list": [
        {"op_types": ["Linear"], "sparse_ratio": 0.25, "exclude_op_names": [f"{2 * 299}"]}]}, x)
    assert result.certified_bound == math.inf and math.isfinite(result.log_certified_bound)
    model = deep_mlp(depth=300)
    pruner = tp.pruner.MetaPruner(model, x, importance=PathMetricImportance(x), pruning_ratio=0.25,
                                  ignored_layers=[model[-1]])
    bound = certified_step(pruner, x)
    assert bound == math.inf and math.isfinite(bound.log_certified_bound) and bound.head is None


def test_adapter_results_give_the_head():
    import torch_pruning as tp
    from neural_compressor.torch.quantization import quantize

    from pathmetric.adapters import neural_compressor as pinc
    from pathmetric.adapters import nni as pnni
    from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step
    x = torch.randn(1, 1, 28, 28)
    torch.manual_seed(0)
    result = pnni.prune_from_config(QuickstartNet().eval(), {"pruner": "path_metric",
        "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}, x)
    assert result.head == "log_softmax" and result.notes
    net = QuickstartNet().eval()
    pruner = tp.pruner.MetaPruner(net, x, importance=PathMetricImportance(x), pruning_ratio=0.3,
                                  ignored_layers=[net.fc3])
    step = certified_step(pruner, x)
    assert step.head == "log_softmax" and 0 < step < math.inf
    pruned = quantize(QuickstartNet().eval(), pinc.PathMetricConfig(sparsity=0.5), example_inputs=x)
    assert pruned.path_metric_head == "log_softmax"
    assert pruned.path_metric_log_bound == pytest.approx(math.log(pruned.path_metric_bound))


def test_step_certificate_is_a_float_that_pickles_with_its_fields():
    import pickle

    from pathmetric.adapters.torch_pruning import StepCertificate
    step = pickle.loads(pickle.dumps(StepCertificate(2.5, math.log(2.5), "softmax")))
    assert step == 2.5 and isinstance(step, float) and step.head == "softmax"
    assert step.log_certified_bound == math.log(2.5)
