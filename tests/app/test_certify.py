"""``pathmetric certify`` (issue 22 item 6): a deployed model saved by torch.export.save,
certified against the float model from the command line."""
import json

import torch

import pathmetric as pm
from pathmetric.app import digits
from pathmetric.app.cli import main


def test_certify_json_matches_the_library(tmp_path, capsys):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    data = digits.load_digits_tensors()
    model = digits.pretrained(data).eval()
    x_train, x_test = data[0], data[2][:40]
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (x_train[:1],)).module(), quantizer)
    for i in range(32):
        prepared(x_train[i:i + 1])
    deployed = convert_pt2e(prepared)
    torch.save(model.state_dict(), tmp_path / "float.pt")
    torch.export.save(torch.export.export(deployed, (x_train[:1],)), tmp_path / "int8.pt2")
    torch.save(x_test, tmp_path / "x.pt")
    rc = main(["certify", "digits", "--checkpoint", str(tmp_path / "float.pt"), "--quantized",
               str(tmp_path / "int8.pt2"), "--inputs", str(tmp_path / "x.pt"), "--json"])
    out = json.loads(capsys.readouterr().out)
    report = pm.deployment_report(model, deployed, x_test)
    assert rc == 0 and out["samples"] == 40 and out["saturated"] == report.saturated_count
    assert out["weight_term"] == report.weight_term
    assert out["activation_term"] == report.activation_term
    assert out["bounds"] == report.bound.tolist()
    assert out["safe_input_radius"] == report.safe_input_radius
    assert out["safe_radius"] == report.safe_radius
    assert "exact" in out["arithmetic"]
    assert out["dynamic_term"] == report.dynamic_term.tolist()
    assert out["rounding_term"] == report.rounding_term.tolist() and out["rounding_terms"] == {}


def test_certify_refuses_inputs_of_the_wrong_shape(tmp_path, capsys):
    torch.save(torch.zeros(4, 3, 8, 8), tmp_path / "x.pt")
    model = digits.DigitsCNN().eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), tmp_path / "m.pt2")
    rc = main(["certify", "digits", "--quantized", str(tmp_path / "m.pt2"), "--inputs",
               str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "expected a tensor of shape (N, 1, 8, 8)" in err
