"""Intel Neural Compressor 3.10 adapter, against real INC on CPU (RTN, PT2E static/dynamic int8)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathmetric as pm
from pathmetric.app.digits import DigitsCNN, load_digits_tensors, pretrained, train

inc = pytest.importorskip("neural_compressor.torch.quantization",
                          reason="the inc extra (neural-compressor-pt) is not installed")
from neural_compressor.common.base_tuning import default_sampler  # noqa: E402
from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear  # noqa: E402
from neural_compressor.torch.export import export  # noqa: E402
from neural_compressor.torch.quantization import (  # noqa: E402
    DynamicQuantConfig,
    INT8StaticQuantConfig,
    RTNConfig,
    TuningConfig,
    autotune,
    quantize,
)

from pathmetric.adapters.neural_compressor import (  # noqa: E402
    PathMetricConfig,
    PrunedThenQuantizedConfig,
    path_metric_config_set,
    path_metric_sampler,
    quantization_bound,
    simulate_weights,
    storage_bits,
)

FP32_PT2E = dict(w_dtype="fp32", act_dtype="fp32")


class SmallCNN(nn.Module):
    """Digits CNN without BatchNorm (PT2E would fold it into the conv weights)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))


@pytest.fixture(scope="module")
def data():
    return load_digits_tensors(0)


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    return train(SmallCNN(), data, epochs=6, seed=0, lr=1e-2)


@pytest.fixture(scope="module")
def x(data):
    return data[2][:4]


def _export(model, x):
    return export(copy.deepcopy(model), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def _eval(data):
    """Test accuracy without ``.eval()`` (exported PT2E models refuse it; all are in eval mode)."""
    def evaluate(m):
        with torch.no_grad():
            return float((m(data[2]).argmax(1) == data[3]).double().mean())
    return evaluate


def _rtn_deployed(q_model):
    """What INC's RTN deploys: ``recover()`` weights and the fp16-stored biases, as float32."""
    out = {}
    for name, m in q_model.named_modules():
        if isinstance(m, INCWeightOnlyLinear):
            out[f"{name}.weight"] = m.recover().float()
            if m.bias is not None:
                out[f"{name}.bias"] = m.bias.float()
    return out


def _pt2e_deployed(gm):
    """Dequantized weights of a converted PT2E graph: ``dequantize(quantize(get_attr))`` evaluated."""
    def value(a):
        if not isinstance(a, torch.fx.Node):
            return a
        obj = gm
        for part in a.target.split("."):
            obj = getattr(obj, part)
        return obj

    out = {}
    for node in gm.graph.nodes:
        q = node.args[0] if node.op == "call_function" and "dequantize" in str(node.target) else None
        if isinstance(q, torch.fx.Node) and q.op == "call_function" and q.args[0].op == "get_attr":
            ints = q.target(*[value(a) for a in q.args])
            out[q.args[0].target] = node.target(ints, *[value(a) for a in node.args[1:]])
    return out


def _assert_bit_exact(simulated, deployed):
    assert simulated.keys() == deployed.keys()
    for name in simulated:
        assert simulated[name].dtype == deployed[name].dtype, name
        assert torch.equal(simulated[name], deployed[name]), (
            name, (simulated[name] - deployed[name]).abs().max().item())


RTN_CONFIGS = [
    RTNConfig(),  # 4 bits, sym, group 32
    RTNConfig(bits=2, group_size=-1),
    RTNConfig(bits=3, use_sym=False, group_size=16),
    RTNConfig(bits=4, use_sym=False, group_size=20),  # 48 and 64 in-features: ragged last group
    RTNConfig(bits=8, use_sym=False, group_size=-1),
    RTNConfig(dtype="int8", group_size=-1),
    RTNConfig(bits=4, use_full_range=True),
    RTNConfig(bits=4, use_mse_search=True),
    RTNConfig(bits=4, use_double_quant=True),
    RTNConfig(bits=2).set_local("fc2", RTNConfig(dtype="fp32")),
    RTNConfig(bits=2).set_local("fc.*", RTNConfig(bits=8, group_size=-1)).set_local(
        "fc3", RTNConfig(dtype="fp32")),
]


@pytest.mark.parametrize("config", RTN_CONFIGS, ids=lambda c: str(c.to_dict())[:80])
def test_rtn_simulated_weights_are_inc_recovered_weights(model, config):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    simulated = simulate_weights(model, config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    deployed = _rtn_deployed(quantize(copy.deepcopy(model), copy.deepcopy(config)))
    _assert_bit_exact(simulated, deployed)


PT2E_CONFIGS = [
    INT8StaticQuantConfig(),
    INT8StaticQuantConfig(w_granularity="per_tensor"),
    INT8StaticQuantConfig().set_local("fc2", INT8StaticQuantConfig(**FP32_PT2E)),
    INT8StaticQuantConfig().set_local(nn.Conv2d, INT8StaticQuantConfig(**FP32_PT2E)),
    INT8StaticQuantConfig(w_granularity="per_tensor").set_local(
        "conv1", INT8StaticQuantConfig()),
    DynamicQuantConfig(),
]


@pytest.mark.parametrize("config", PT2E_CONFIGS, ids=lambda c: str(c.to_dict())[:80])
def test_pt2e_simulated_weights_are_inc_dequantized_weights(model, x, config):
    simulated = simulate_weights(model, config)
    gm = quantize(export(copy.deepcopy(model), (x,)), copy.deepcopy(config),
                  run_fn=lambda m: m(x), example_inputs=(x,))
    _assert_bit_exact(simulated, _pt2e_deployed(gm))


def test_fallbacks_leave_layers_untouched(model):
    rtn = simulate_weights(model, RTNConfig(bits=2).set_local("fc1", RTNConfig(dtype="fp32")))
    assert "fc1.weight" not in rtn and "fc2.weight" in rtn
    assert not torch.equal(rtn["fc2.weight"], model.fc2.weight)
    static = simulate_weights(model, INT8StaticQuantConfig().set_local(
        nn.Linear, INT8StaticQuantConfig(**FP32_PT2E)))
    assert sorted(static) == ["conv1.weight", "conv2.weight"]


def test_unsupported_inputs_raise_clear_errors(model, x):
    with pytest.raises(ValueError, match="RTN dtype 'nf4'"):
        simulate_weights(model, RTNConfig(dtype="nf4"))
    with pytest.raises(ValueError, match="BatchNorm"):
        simulate_weights(DigitsCNN().eval(), INT8StaticQuantConfig())
    with pytest.raises(TypeError, match="PathMetricConfig"):
        simulate_weights(model, PathMetricConfig())
    with pytest.raises(TypeError, match="eager model"):
        path_metric_sampler(_export(model, x), x)


def test_bound_certifies_inc_quantized_outputs(model, data):
    """``quantization_bound`` is the path-metric of INC's deployed weights and bounds its outputs."""
    config = RTNConfig(bits=3, group_size=16)
    bound = quantization_bound(model, data[2][:1], config)
    q_model = quantize(copy.deepcopy(model), copy.deepcopy(config))
    deployed = copy.deepcopy(model)
    deployed.load_state_dict(_rtn_deployed(q_model), strict=False)
    assert bound == pm.path_metric(model, deployed, data[2][:1]) > 0
    with torch.no_grad():
        gap = (model(data[2]) - q_model(data[2])).abs().sum(1)
    scale = data[2].flatten(1).abs().amax(1).clamp(min=1)
    assert bool((gap <= scale * bound).all())
    assert bound > quantization_bound(model, data[2][:1], RTNConfig(bits=8, group_size=16))


def _trial_order(configs, model, deployed):
    """Index of the config whose simulated weights equal what INC deployed in a trial."""
    sims = [simulate_weights(model, c) for c in configs]
    for i, sim in enumerate(sims):
        if sim.keys() == deployed.keys() and all(torch.equal(sim[k], deployed[k]) for k in sim):
            return i
    return None


def _autotune_recording(model, configs, sampler, eval_fn, deployed_of, tolerable_loss, **kwargs):
    order = []

    def recording_eval(m):
        order.append(_trial_order(configs, model, deployed_of(m)))
        return eval_fn(m)

    best = autotune(kwargs.pop("tuned", model), TuningConfig(config_set=configs, sampler=sampler,
                    tolerable_loss=tolerable_loss, max_trials=len(configs)), eval_fn=recording_eval,
                    **kwargs)
    return best, order[1:]  # order[0]: the fp32 baseline


def test_rtn_autotune_walks_configs_by_increasing_bound(model, data, x):
    configs = [RTNConfig(bits=2, group_size=-1), RTNConfig(bits=8, group_size=-1),
               RTNConfig(bits=4, group_size=16), RTNConfig(bits=3, use_sym=False, group_size=-1),
               RTNConfig(bits=2).set_local("fc1", RTNConfig(dtype="fp32"))]
    sampler = path_metric_sampler(model, x)
    bounds = sampler(configs).bounds
    assert bounds == [quantization_bound(model, x, c) for c in configs]
    # an unreachable goal runs every trial: the order is the one the sampler gives
    _, order = _autotune_recording(model, configs, sampler, _eval(data), _rtn_deployed, -1.0)
    assert order == sorted(range(len(configs)), key=bounds.__getitem__) != list(range(len(configs)))
    assert [bounds[i] for i in order] == sorted(bounds)
    # a reachable goal stops at the first config (smallest bound) that meets it
    best, order = _autotune_recording(model, configs, sampler, _eval(data), _rtn_deployed, 0.02)
    assert order == [bounds.index(min(bounds))]
    assert _eval(data)(best) >= 0.98 * _eval(data)(model)


def test_pt2e_static_autotune_walks_configs_by_increasing_bound(model, data, x):
    configs = [INT8StaticQuantConfig(w_granularity="per_tensor"), INT8StaticQuantConfig(),
               INT8StaticQuantConfig(w_granularity="per_tensor").set_local(
                   "fc1", INT8StaticQuantConfig(**FP32_PT2E))]
    sampler = path_metric_sampler(model, x)
    bounds = sampler(configs).bounds
    _, order = _autotune_recording(model, configs, sampler, _eval(data), _pt2e_deployed, -1.0,
                                   tuned=_export(model, x),
                                   run_fn=lambda m: m(data[0][:256]), example_inputs=(x,))
    assert order == sorted(range(len(configs)), key=bounds.__getitem__)
    assert bounds[order[0]] < bounds[order[-1]]


def test_config_set_falls_back_most_sensitive_layers_first(model, data, x):
    base = RTNConfig(bits=2, group_size=-1)
    configs = path_metric_config_set(model, x, base)
    linears = ["fc1", "fc2", "fc3"]
    sens = pm.layer_sensitivity(model, x, bits=(2,), layers=linears)
    ranked = sorted(linears, key=lambda n: -sens[n, 2])
    assert len(configs) == 4
    for k, config in enumerate(configs):
        assert sorted(simulate_weights(model, config)) == sorted(
            f"{n}.{p}" for n in ranked[k:] for p in ("weight", "bias"))
    bounds = [quantization_bound(model, x, c) for c in configs]
    assert bounds == sorted(bounds, reverse=True) and bounds[0] > bounds[-2] > bounds[-1] == 0
    # with INC's default sampler autotune walks the sequence and stops at the first config that passes
    best, order = _autotune_recording(model, configs, default_sampler, _eval(data), _rtn_deployed, 0.01)
    assert order == list(range(len(order)))
    assert _eval(data)(best) >= 0.99 * _eval(data)(model)
    # PT2E names are exact module names
    static = path_metric_config_set(model, x, INT8StaticQuantConfig(), max_fallbacks=2)
    assert len(static) == 3 and len(simulate_weights(model, static[2])) == 3


def _zeros(m):
    weights = [p for n, p in m.named_parameters() if n.endswith("weight")]
    return sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)


def test_path_metric_config_prunes_inside_quantize(model, x):
    pruned = quantize(copy.deepcopy(model), PathMetricConfig(sparsity=0.5), example_inputs=x)
    reference = pm.prune(model, 0.5, x)
    assert abs(_zeros(pruned) - 0.5) < 0.01
    assert pruned.path_metric_masks.keys() == reference.masks.keys()
    assert all(torch.equal(pruned.path_metric_masks[k], reference.masks[k]) for k in reference.masks)
    assert pruned.path_metric_bound == reference.certified_bound == pm.path_metric(model, pruned, x)
    assert quantization_bound(model, x, PathMetricConfig(sparsity=0.5)) == reference.certified_bound
    with pytest.raises(ValueError, match="example_inputs"):
        quantize(copy.deepcopy(model), PathMetricConfig(sparsity=0.5))


def test_autotune_over_sparsities(model, data, x):
    sparsities = []

    def evaluate(m):
        sparsities.append(round(_zeros(m), 2))
        return _eval(data)(m)

    config = PathMetricConfig(sparsity=[0.95, 0.8, 0.5, 0.2])
    best = autotune(copy.deepcopy(model), TuningConfig(config_set=[config], tolerable_loss=0.02),
                    eval_fn=evaluate, example_inputs=x)
    assert sparsities[0] == 0.0 and 1 < len(sparsities) - 1 <= 4  # baseline, then trials in order
    assert sparsities[1:] == [0.95, 0.8, 0.5, 0.2][:len(sparsities) - 1]
    assert _eval(data)(best) >= 0.98 * _eval(data)(model) and best.path_metric_bound > 0
    # the sampler ranks sparsities by their certified bound: least pruning first
    sampler = path_metric_sampler(model, x)([PathMetricConfig(sparsity=0.7), PathMetricConfig(sparsity=0.3)])
    assert list(sampler) == [1, 0] and sampler.bounds[0] > sampler.bounds[1] > 0


# ------------------------------------------------------------------ issue 16: INC workflows

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()


def test_woq_tuning_config_runs_certified_first_and_warns_once():
    from neural_compressor.torch.quantization import get_woq_tuning_config
    mlp, x = _mlp(), torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    configs = get_woq_tuning_config()   # RTN, AutoRound, GPTQ, AWQ
    with pytest.warns(UserWarning, match="no certificate") as record:
        sampler = path_metric_sampler(mlp, x[:1])(configs)
    messages = [str(w.message) for w in record if "no certificate" in str(w.message)]
    assert len(messages) == 1 and all(type(c).__name__ in messages[0] for c in configs[1:])
    assert list(sampler) == [0, 1, 2, 3] and sampler.bounds[0] > 0 and sampler.bounds[1:] == [None] * 3
    trials = []

    def evaluate(m):
        trials.append(m)
        return 1.0 - float((m(x) - mlp(x)).abs().mean())

    with pytest.warns(UserWarning, match="no certificate"):
        best = autotune(copy.deepcopy(mlp), TuningConfig(config_set=configs, tolerable_loss=0.5,
                        sampler=path_metric_sampler(mlp, x[:1])), eval_fn=evaluate, example_inputs=x[:1])
    assert len(trials) == 2 and isinstance(best[0], INCWeightOnlyLinear)   # baseline, then RTN


def test_pruning_plus_rtn_is_one_config_with_the_combined_certificate():
    mlp, x = _mlp(), torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    config = PathMetricConfig(sparsity=0.5) + RTNConfig(bits=4, group_size=32)
    assert isinstance(config, PrunedThenQuantizedConfig)
    before = copy.deepcopy(mlp.state_dict())
    bound = quantization_bound(mlp, x[:1], config)
    q_model = quantize(copy.deepcopy(mlp), config, example_inputs=x[:1])
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert isinstance(q_model[0], INCWeightOnlyLinear) and q_model.path_metric_bound == bound
    assert bound > quantization_bound(mlp, x[:1], PathMetricConfig(sparsity=0.5)) > 0
    # the deployed weights are the pruned weights quantized: half of them are zero
    assert float((q_model[2].recover() == 0).double().mean()) >= 0.5
    with torch.no_grad():
        change = (q_model(x) - mlp(x)).abs().sum(1)
    assert (change <= bound * x.abs().amax(1).clamp(min=1)).all()
    with pytest.raises(TypeError, match="RTNConfig"):
        PathMetricConfig(sparsity=0.5) + INT8StaticQuantConfig()


def test_sampler_orders_that_take_compression_into_account(model, x):
    grid = [RTNConfig(bits=b, group_size=g) for b in (2, 4, 8) for g in (-1, 16)]
    by_bound = path_metric_sampler(model, x)(grid)
    bits = [storage_bits(model, c) for c in grid]
    assert by_bound.bits == bits and bits[0] < bits[1] and bits[2] < bits[0 + 3]
    budget = sorted(by_bound.bounds)[3]
    by_size = path_metric_sampler(model, x, order="size", max_bound=budget)(grid)
    trusted = [i for i in range(len(grid)) if by_size.bounds[i] <= budget]
    assert list(by_size)[:len(trusted)] == sorted(trusted, key=bits.__getitem__)
    assert bits[list(by_size)[0]] < bits[list(by_bound)[0]]   # a smaller model is tried first
    per_bit = path_metric_sampler(model, x, order="bound_per_saved_bit")(grid)
    ratio = [b / (32 - s) for b, s in zip(per_bit.bounds, bits)]
    assert [ratio[i] for i in per_bit] == sorted(ratio)
    with pytest.raises(ValueError, match="max_bound"):
        path_metric_sampler(model, x, order="size")


def test_static_bound_of_a_batch_norm_model_is_the_deployed_weight_term(data):
    """A BatchNorm model needs no manual folding: the static config's bound is the weight term
    of the certificate of the model INC really converts (BatchNorm folded as PT2E folds it)."""
    from neural_compressor.torch.quantization import convert, prepare
    x_train, y_train, x_test, y_test = data
    model = pretrained(data).eval()
    config = INT8StaticQuantConfig()
    bound = quantization_bound(model, x_test[:1], config)
    prepared = prepare(export(model, (x_train[:1],)), copy.deepcopy(config))
    for i in range(16):
        prepared(x_train[i:i + 1])
    report = pm.deployment_report(model, convert(prepared), x_test[:8])
    assert bound == pytest.approx(report.weight_term, rel=1e-6)
    assert storage_bits(model, config) == storage_bits(model, INT8StaticQuantConfig())


def test_sampler_tries_nf4_after_the_certified_configs(model, x):
    """issue 25 item 10: INC's double-quant RTN set has an nf4 entry the adapter cannot simulate."""
    from neural_compressor.torch.quantization import get_rtn_double_quant_config_set
    configs = get_rtn_double_quant_config_set()
    nf4 = [i for i, c in enumerate(configs) if c.dtype == "nf4"]
    assert nf4
    with pytest.warns(UserWarning, match="no certificate"):
        sampler = path_metric_sampler(model, x)(configs)
    assert list(sampler)[-len(nf4):] == nf4 and all(sampler.bounds[i] is None for i in nf4)
    assert storage_bits(model, configs[nf4[0]]) < 32


def test_half_precision_layers_are_a_change_in_the_bound(model, x):
    """issue 22 item 4: the linear layers INC runs in fp16/bf16 have their weight and bias cast,
    read off the converted graph (INC 3.10 runs its bf16 layers in float16 too: the same
    bound); the bound includes that change and the storage counts 16 bits for them."""

    def config(dtype):
        return INT8StaticQuantConfig().set_local(
            nn.Linear, INT8StaticQuantConfig(w_dtype=dtype, act_dtype=dtype))
    fp32, fp16, bf16 = (quantization_bound(model, x, config(d)) for d in ("fp32", "fp16", "bf16"))
    assert fp32 < fp16 and bf16 == pytest.approx(fp16, rel=1e-9)
    assert storage_bits(model, config("fp16")) < storage_bits(model, config("fp32"))


def _static_full_bound(model, config, calibration):
    """``max(s, 1) * weight term + activation term`` of ``pm.deployment_report`` on the model
    INC's one-shot ``quantize`` (export, calibration ``run_fn``, convert) deploys for ``config``."""
    exported = export(copy.deepcopy(model), (calibration,),
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    deployed = quantize(exported, copy.deepcopy(config), run_fn=lambda m: m(calibration),
                        example_inputs=(calibration,))
    report = pm.deployment_report(model, deployed, calibration)
    sup = max(1.0, float(calibration.abs().max()))
    return sup * report.weight_term + report.activation_term, report


def test_sampler_ranks_static_configs_by_the_full_certificate(data):
    """issue 22 item 5: W8A8 per channel / per tensor and layer fallbacks on the digits CNN
    (BatchNorm after both convs, folded by INC) are ranked by weight + activation term of the
    converted models; the weight term alone orders them differently (a conv1 fallback removes
    the input point, the largest activation term)."""
    from neural_compressor.torch.quantization import StaticQuantConfig
    model = pretrained(data).eval()
    calibration = data[0][:64]
    configs = [INT8StaticQuantConfig(), INT8StaticQuantConfig(w_granularity="per_tensor"),
               INT8StaticQuantConfig().set_local("fc2", INT8StaticQuantConfig(**FP32_PT2E)),
               INT8StaticQuantConfig().set_local("conv1", INT8StaticQuantConfig(**FP32_PT2E)),
               StaticQuantConfig(w_granularity="per_tensor").set_local(
                   "conv1", StaticQuantConfig(**FP32_PT2E))]
    sampler = path_metric_sampler(model, calibration)(configs)
    expected = [_static_full_bound(model, c, calibration) for c in configs]
    full = [bound for bound, _ in expected]
    assert sampler.bounds == pytest.approx(full, rel=1e-9)
    assert list(sampler) == sorted(range(len(configs)), key=full.__getitem__)
    weight_terms = [report.weight_term for _, report in expected]
    assert list(sampler) != sorted(range(len(configs)), key=weight_terms.__getitem__)
    for report, (_, theirs) in zip(sampler.reports, expected):
        assert report.activation_term == pytest.approx(theirs.activation_term, rel=1e-9)
        assert report.saturated_count == theirs.saturated_count
    assert [math.log(b) for b in sampler.bounds] == pytest.approx(sampler.log_bounds, rel=1e-9)
    # calibrated on other digits, the ranking's certificate is that of the other calibration
    other = path_metric_sampler(model, data[2][:4], calibration=calibration)(configs[:2])
    assert other.bounds == pytest.approx(full[:2], rel=1e-9)
