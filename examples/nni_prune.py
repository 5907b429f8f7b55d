"""NNI 3.0 pruning selected by a config file (``pruner: path_metric``), with certificates.

    python examples/nni_prune.py [--config examples/nni_prune.yaml] [--size 64]

1. The digits CNN shipped with pathmetric (trained on scikit-learn's digits): the config's
   pruner and NNI's ``l1`` from the same config, each followed by NNI's ``ModelSpeedup``; test
   accuracy without fine-tuning, parameters, and the certificate ``d = ||Phi - Phi'||_1`` as a
   share of the path-norm (the path-metric pruner removes the least path mass by construction).
2. torchvision ``resnet18`` (random weights) at ``size x size`` with the config as is: parameters
   before and after speedup, output shape.
3. The certified weight-quantization bound of two NNI quantization config lists (int8 per
   channel, int4 per tensor) on the digits CNN, checked against the largest actual output change
   on the test images: ``||R(x) - R_q(x)||_1 <= max(||x||_inf, 1) * bound``.
"""
import argparse
import copy
from pathlib import Path

import torch
import torchvision
from nni.runtime.log import silence_stdout

import pathmetric as pm
from pathmetric.adapters.nni import (
    load_config,
    prune_from_config,
    quantization_bound_from_config,
    quantized_parameters,
)
from pathmetric.app import digits

silence_stdout()          # NNI's INFO log lines (ModelSpeedup's ~300) off stdout
torch.set_num_threads(1)  # small tensors: more threads only contend (9x slower here)


def digits_pruning(config):
    _, _, x_test, y_test = digits.load_digits_tensors(0)
    example = torch.zeros(1, 1, 8, 8)
    base = digits.pretrained()
    norm = pm.path_norm(base, example)
    print(f"digits CNN: test accuracy {digits.accuracy(base, x_test, y_test):.4f}, "
          f"path-norm {norm:.4e}")
    print("pruner        params  ->  after   accuracy   certificate d   d / path-norm")
    for name in (config["pruner"], "l1"):
        model = copy.deepcopy(base)
        result = prune_from_config(model, {**config, "pruner": name}, example)
        accuracy = digits.accuracy(model.eval(), x_test, y_test)
        print(f"{name:12s} {result.params_before:7d} -> {result.params_after:6d}   {accuracy:8.4f}"
              f"   {result.certified_bound:13.4e}   {result.certified_bound / norm:13.4f}")


def resnet_pruning(config, size):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    shape = tuple(model(x).shape)
    norm = pm.path_norm(model, x)
    result = prune_from_config(model, config, x)
    sparsity = sorted({round(s, 3) for s in result.sparsity.values()})
    print(f"\nresnet18 at {size}x{size} ({config['pruner']}): weight sparsity per conv {sparsity}, "
          f"parameters {result.params_before} -> {result.params_after}"
          f"{' (ModelSpeedup)' if result.speedup else ''}, output {tuple(model.eval()(x).shape)} "
          f"(was {shape}), certificate d / path-norm {result.certified_bound / norm:.4f}")


def digits_quantization():
    _, _, x_test, _ = digits.load_digits_tensors(0)
    example = torch.zeros(1, 1, 8, 8)
    model = digits.pretrained()
    layers = ["Conv2d", "Linear"]
    configs = {
        "int8, out_channel": [{"op_types": layers, "target_names": ["weight"],
                               "quant_dtype": "int8", "granularity": "out_channel"}],
        "int4, per tensor": [{"op_types": layers, "target_names": ["_input_", "weight"],
                              "quant_dtype": "int4"}],
    }
    print("\nNNI quantization config      certified max ||dR||_1   actual max ||dR||_1")
    for label, config_list in configs.items():
        bound = quantization_bound_from_config(model, config_list, example)
        quantized = copy.deepcopy(model)
        with torch.no_grad():
            for name, tensor in quantized_parameters(model, config_list).items():
                quantized.get_parameter(name).copy_(tensor)
            actual = (model(x_test) - quantized(x_test)).abs().sum(dim=1).max().item()
        certified = max(x_test.abs().max().item(), 1.0) * bound
        print(f"{label:28s} {certified:20.4e}   {actual:19.4e}")
        assert actual <= certified
    print("(weights only: the _input_ target of the int4 config is activation quantization, "
          "which the bound does not cover)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("nni_prune.yaml")))
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    config = load_config(args.config)
    digits_pruning(config)
    resnet_pruning(config, args.size)
    digits_quantization()


if __name__ == "__main__":
    main()
