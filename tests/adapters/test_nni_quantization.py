"""NNI 3.0 quantization (issue 22 item 6): the deployed model of a config with activation
targets, certified against the model NNI's PtqQuantizer really produces."""
import copy

import pytest
import torch
from torch import nn

pytest.importorskip("nni", reason="the nni extra is not installed")
import nni  # noqa: E402
from nni.compression import TorchEvaluator  # noqa: E402
from nni.compression.quantization import PtqQuantizer  # noqa: E402

import pathmetric.adapters.nni as pnni  # noqa: E402
from pathmetric.app import digits  # noqa: E402

CONFIG = [{"op_types": ["Conv2d", "Linear"], "target_names": ["_input_", "weight", "_output_"],
           "quant_dtype": "int8", "quant_scheme": "affine"}]


def _nni_ptq(model, config_list, calibration):
    """NNI's PtqQuantizer on a copy of ``model``, calibrated on ``calibration``."""
    def calibrate(model, optimizer, criterion, lr_scheduler=None, max_steps=None,
                  max_epochs=None):
        model.eval()
        with torch.no_grad():
            model(calibration)
    deployed = copy.deepcopy(model)
    optimizer = nni.trace(torch.optim.SGD)(deployed.parameters(), lr=0.0)
    quantizer = PtqQuantizer(deployed, config_list,
                             TorchEvaluator(calibrate, optimizer, nn.functional.cross_entropy))
    deployed, _ = quantizer.compress(max_steps=1, max_epochs=None)
    return deployed.eval()


def test_activation_targets_are_certified_against_nni_ptq():
    data = digits.load_digits_tensors(0)
    model = digits.pretrained(data).eval()
    calibration, x = data[0][:256], data[2]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = pnni.deployment_report_from_config(model, CONFIG, calibration, x)
    deployed = _nni_ptq(model, CONFIG, calibration)
    with torch.no_grad():
        gap = (model(x) - deployed(x)).abs().sum(dim=1).double()
    certified = ~report.saturated
    assert len(report.activation_terms) == 8   # the input and output of 2 convs and 2 linears
    assert report.weight_term > 0 and report.activation_term > 0
    assert certified.sum() > 0.9 * len(x) and torch.isinf(report.bound[~certified]).all()
    assert (gap[certified] <= report.bound[certified]).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.warns(UserWarning, match="deployment_report_from_config"):
        pnni.quantization_bound_from_config(model, CONFIG, x[:1])
