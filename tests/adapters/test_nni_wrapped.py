"""NNI 3.0's quantizers (issue 22): the model an NNI quantizer wrapped, certified from the scales
its wrappers hold (``deployment_report_from_wrapped``), against that wrapped model's own
outputs; ``pm.output_bound`` on a wrapped model is that certificate once the adapter is
imported (it registers them)."""
import copy

import pytest
import torch
from torch import nn

pytest.importorskip("nni", reason="the nni extra is not installed")
import nni  # noqa: E402
from nni.compression import TorchEvaluator  # noqa: E402
from nni.compression.quantization import (  # noqa: E402
    DoReFaQuantizer,
    LsqQuantizer,
    PtqQuantizer,
    QATQuantizer,
)

import pathmetric as pm  # noqa: E402
import pathmetric.adapters.nni as pnni  # noqa: E402
from pathmetric import deployed  # noqa: E402
from pathmetric.app import digits  # noqa: E402

TARGETS = [{"op_types": ["Conv2d", "Linear"], "target_names": ["_input_", "weight", "_output_"],
            "quant_dtype": "int8", "quant_scheme": "affine"}]


@pytest.fixture(scope="module")
def data():
    x_train, y_train, x_test, y_test = digits.load_digits_tensors(0)
    model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
    return model, x_train[:256], y_train[:256], x_test[:200]


def _wrapped(quantizer_class, model, x, y, config_list, steps):
    """``quantizer_class`` on a copy of ``model``, trained (or calibrated) ``steps`` steps of SGD
    at a learning rate of 0 on batches of 32 of ``(x, y)``, in eval mode for PTQ (BatchNorm
    statistics as they are) and train mode for the others (NNI's QAT tracks its ranges in
    train mode only): the wrapped model, its wrappers frozen, in eval mode."""
    def training(model, optimizer, training_step, lr_scheduler=None, max_steps=None,
                 max_epochs=None):
        model.train(quantizer_class is not PtqQuantizer)
        for step in range(steps):
            rows = slice(32 * (step % 8), 32 * (step % 8) + 32)
            optimizer.zero_grad()
            training_step((x[rows], y[rows]), model).backward()
            optimizer.step()

    def training_step(batch, model):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])
    wrapped = copy.deepcopy(model)
    optimizer = nni.trace(torch.optim.SGD)(wrapped.parameters(), lr=0.0)
    quantizer = quantizer_class(wrapped, config_list,
                                TorchEvaluator(training, optimizer, training_step))
    wrapped, _ = quantizer.compress(max_steps=steps, max_epochs=None)
    for module in wrapped.modules():
        if hasattr(module, "_nni_wrapper"):
            module._nni_wrapper.freeze()
    return wrapped.eval()


QUANTIZERS = {
    "ptq": (PtqQuantizer, TARGETS),
    "qat": (QATQuantizer, [{**TARGETS[0], "target_names": ["_input_", "weight"]}]),
    # LSQ's scales start at 0.01 and are learnt: untrained, every activation point but the
    # input saturates, so the input and the weights are quantized here
    "lsq": (LsqQuantizer, [{**{k: v for k, v in TARGETS[0].items() if k != "op_types"},
                            "op_names": ["conv1"], "target_names": ["_input_", "weight"]},
                           {**TARGETS[0], "target_names": ["weight"]}]),
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_wrapped_model_is_certified(data, name):
    model, x_train, y_train, x = data
    quantizer_class, config_list = QUANTIZERS[name]
    wrapped = _wrapped(quantizer_class, model, x_train, y_train, config_list, steps=8)
    state = {k: v.clone() for k, v in wrapped.state_dict().items()}
    report = pnni.deployment_report_from_wrapped(model, wrapped, x)
    assert all(torch.equal(v, wrapped.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        gap = (model(x) - wrapped(x)).abs().sum(dim=1).double()
    certified = ~report.saturated
    # in and out of 2 convs and 2 linears (QAT: inputs only, outputs need a fused activation)
    activations = {"qat": 4, "lsq": 1}.get(name, 8)
    assert len(report.activation_terms) == activations and report.weight_term > 0
    assert certified.sum() > len(x) // 2 and torch.isinf(report.bound[~certified]).all()
    assert (gap[certified] <= report.bound[certified]).all()


def test_ptq_wrapped_equals_the_config_certificate(data):
    model, x_train, y_train, x = data
    wrapped = _wrapped(PtqQuantizer, model, x_train, y_train, TARGETS, steps=8)
    report = pnni.deployment_report_from_wrapped(model, wrapped, x)
    same = pnni.deployment_report_from_config(model, TARGETS, x_train, x)
    assert report.activation_terms == same.activation_terms
    assert report.weight_term == same.weight_term and torch.equal(report.bound, same.bound)


def test_output_bound_certifies_a_wrapped_model_through_the_adapter(data, monkeypatch):
    """With the adapter imported, ``pm.output_bound`` / ``pm.deployment_report`` on NNI's
    wrapped model are ``deployment_report_from_wrapped``'s; without its registration the
    wrapped model is refused, naming the wrapper and the adapter."""
    model, x_train, y_train, x = data
    wrapped = _wrapped(PtqQuantizer, model, x_train, y_train, TARGETS, steps=2)
    expected = pnni.deployment_report_from_wrapped(model, wrapped, x)
    assert torch.equal(pm.output_bound(model, wrapped, x), expected.bound)
    assert pm.deployment_report(model, wrapped, x).activation_terms == expected.activation_terms
    monkeypatch.setattr(deployed, "WRAPPED", [])
    with pytest.raises(pm.UnsupportedModelError,
                       match="ModuleWrapper.*import pathmetric.adapters.nni"):
        pm.output_bound(model, wrapped, x)


def test_a_wrapped_model_with_nan_weights_is_refused_naming_the_cause(data):
    """NNI 3.0's DoReFaQuantizer divides each output gradient by its largest magnitude (0/0 on
    an all-zero gradient): one step writes NaN into every parameter, and the refusal says so."""
    model, x_train, y_train, x = data
    config_list = [{**TARGETS[0], "target_names": ["weight"]}]
    wrapped = _wrapped(DoReFaQuantizer, model, x_train, y_train, config_list, steps=1)
    with pytest.raises(ValueError, match=r"NNI-wrapped model holds NaN or infinite values in "
                                         r"\['conv1.bias'.*DoReFaQuantizer divides"):
        pm.deployment_report(model, wrapped, x)


def test_a_live_conv_batch_norm_fusion_is_refused_naming_it(data):
    """QAT with ``fuse_names``: NNI folds bn1 into conv1's weight in every forward."""
    model, x_train, y_train, x = data
    config_list = [{**{k: v for k, v in TARGETS[0].items() if k != "op_types"},
                    "op_names": ["conv1"], "target_names": ["_input_", "weight"],
                    "fuse_names": [("conv1", "bn1")]}]
    wrapped = _wrapped(QATQuantizer, model, x_train, y_train, config_list, steps=1)
    with pytest.raises(ValueError, match=r"NNI wrapper of 'conv1': it is fused with \['bn1'\] "
                                         r"\(QAT conv-BatchNorm fusion"):
        pm.deployment_report(model, wrapped, x)
