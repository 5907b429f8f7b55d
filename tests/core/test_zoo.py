"""Zoo models (torchvision, timm, smp) the engine supports: certified end to end,
at small size."""
import math

import pytest
import torch
import torchvision
from models import X32, mobilenet_v2

import pathmetric as pm
from pathmetric import reports
from pathmetric.core.ir import Param
from pathmetric.core.support import capture

smp = pytest.importorskip("segmentation_models_pytorch")
timm = pytest.importorskip("timm")


ZOO = {
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "mnasnet0_5": lambda: torchvision.models.mnasnet0_5(weights=None),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(weights=None),
    "timm_mobilenetv2_100": lambda: timm.create_model("mobilenetv2_100", pretrained=False),
    "smp_unet_mobilenet_v2": lambda: smp.Unet("mobilenet_v2", encoder_weights=None, classes=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_are_supported_and_certified(name):
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    report = pm.check_support(model, X32)
    assert report.ok, str(report)
    assert math.isfinite(pm.log_path_norm(model, X32))
    bound = pm.quantization_bound(model, X32, bits=8)
    assert 0 < bound < math.inf
    scores = pm.weight_scores(model, X32)
    assert all(torch.isfinite(s).all() for s in scores.values())


@pytest.mark.slow
def test_mobilenet_v2_public_functions():
    model = mobilenet_v2()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 3
    facts = reports.graph_facts(model, X32)
    # 17 blocks, each conv-BN-ReLU6 (ReLU6: two neuron layers) ...: depth counts the ReLU6 layers
    assert facts.depth >= 3 * 35 and facts.max_pools_on_path == 0
    sensitivity = pm.layer_sensitivity(model, X32, bits=(4, 8))
    assert all(0 < v < math.inf for v in sensitivity.values())
    plan = pm.mixed_precision_plan(model, X32, bits=(4, 8), avg_bits=6)
    assert 0 < plan.certified_bound < math.inf
    result = pm.prune(model, 0.3, X32, structured=True)
    with torch.no_grad():
        gap = (model(x) - result.model(x)).abs().sum(dim=1)
    assert (gap <= pm.output_bound(model, result.model, x)).all()
    generalization = reports.generalization_bound(model, X32, n=50_000)
    assert math.isfinite(generalization["log_bound"])


@pytest.mark.slow
def test_mobilenet_v2_random_rescale_keeps_function_and_scores():
    model = mobilenet_v2()
    rescaled = pm.random_rescale(model, X32, seed=3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        out, out2 = model(x), rescaled(x)
    assert (out - out2).abs().max() <= 1e-4 * out.abs().max()
    changed = [n for n, p in model.named_parameters()
               if not torch.equal(p, dict(rescaled.named_parameters())[n])]
    assert changed   # something was rescaled (the linear bottlenecks feed convolutions directly)
    # never across a ReLU6: the BatchNorms in front of one keep their parameters
    graph = capture(model, X32)
    users = graph.users()
    guarded = 0
    for index, node in enumerate(graph.nodes):
        if node.rule_name == "batch_norm" and any(graph.nodes[j].rule_name == "hardtanh" for j in users[index]):
            names = [r.name for r in list(node.args) + list(node.kwargs.values())
                     if isinstance(r, Param)]
            assert names and not set(names) & set(changed)
            guarded += 1
    assert guarded == 35
    before, after = pm.weight_scores(model, X32), pm.weight_scores(rescaled, X32)
    for name in before:
        assert torch.allclose(before[name], after[name], rtol=1e-9, atol=1e-12 * float(before[name].abs().max()))
