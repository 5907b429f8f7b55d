"""Deployed integer models (issue 22): exported programs, quantization points, the activation
term and the certificate of a model whose activations are quantized."""
import pathmetric as pm
import pytest
import torch
import torchvision

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_exported_resnet18_gives_the_eager_numbers(resnet):
    exported = torch.export.export(resnet, (X,)).module()
    report = pm.check_support(exported, X)
    assert report.ok, str(report)
    assert report.ops["aten.conv2d.default"] == 20 and report.ops["aten.batch_norm.default"] == 20
    assert pm.path_norm(exported, X) == pm.path_norm(resnet, X)
    assert pm.log_path_norm(exported, X, q=2.0) == pm.log_path_norm(resnet, X, q=2.0)
    scores, eager = pm.weight_scores(exported, X), pm.weight_scores(resnet, X)
    assert scores.keys() == eager.keys()
    assert all(torch.equal(scores[k], eager[k]) for k in eager)
