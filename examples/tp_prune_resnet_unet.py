"""Iterative torch-pruning of a ResNet and a U-Net with path-metric importance and certificates.

    python examples/tp_prune_resnet_unet.py [--size 64] [--steps 3] [--ratio 0.5] [--exact]

Randomly initialised models (no download): torchvision ``resnet18`` and
``segmentation_models_pytorch.Unet('resnet18')``. Each step prints MACs and parameters
(``tp.utils.count_ops_and_params``), the step's certificate ``d = ||Phi(theta) - Phi(theta')||_1``
(also as a share of the path-norm before the step), the certified output bound
``max(||x||_inf, 1) * sum of d so far`` for a test input ``x``, and the actual
``||R(x) - R_pruned(x)||_1`` against the unpruned model.
"""
import argparse
import copy

import segmentation_models_pytorch as smp
import torch
import torch_pruning as tp
import torchvision

import pathmetric as pm
from pathmetric.adapters.torch_pruning import PathMetricImportance, certified_step


def prune(name, model, ignored, size, steps, ratio, exact):
    model.eval()
    example = torch.zeros(1, 3, size, size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    original = copy.deepcopy(model)
    with torch.no_grad():
        reference = original(x)
    pruner = tp.pruner.BasePruner(model, example, importance=PathMetricImportance(example, exact),
                                  pruning_ratio=ratio, global_pruning=True, iterative_steps=steps,
                                  ignored_layers=ignored)
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    print(f"\n{name} at {size}x{size}: {macs0 / 1e6:.1f} MMACs, {params0 / 1e6:.2f} M params, "
          f"path-norm {pm.path_norm(model, example):.3e}")
    print("step   MMACs   Mparams   certificate d   d / norm   certified ||dR||_1"
          "   actual ||dR||_1")
    total = 0.0
    for step in range(1, steps + 1):
        norm = pm.path_norm(model, example)
        bound = certified_step(pruner, example)
        total += bound
        macs, params = tp.utils.count_ops_and_params(model, example)
        with torch.no_grad():
            actual = (model(x) - reference).abs().sum().item()
        certified = max(x.abs().max().item(), 1.0) * total
        print(f"{step:4d} {macs / 1e6:7.1f} {params / 1e6:9.2f}   {bound:13.4e}"
              f" {bound / norm:10.4f}   {certified:18.4e}   {actual:15.4e}")
    assert model(x).shape == reference.shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input resolution (small = fast)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio at the end")
    parser.add_argument("--exact", action="store_true",
                        help="exact coupled-group masses (one pair pass per channel; slow)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    prune("resnet18", resnet, [resnet.fc], args.size, args.steps, args.ratio, args.exact)
    unet = smp.Unet("resnet18", encoder_weights=None, classes=2)
    prune("smp.Unet(resnet18)", unet, [unet.segmentation_head], args.size, args.steps, args.ratio,
          args.exact)


if __name__ == "__main__":
    main()
