"""Path-norms, generalization bound, classical vs path-metric bound and symmetries of a ResNet.

    python examples/report_resnet.py --arch resnet18 --size 224

Randomly initialised (no download). The command-line equivalent is
``pathmetric report torchvision:resnet18 --input-shape 1,3,224,224``.
"""
import argparse
import math

import torch
import torchvision

import pathmetric as pm
from pathmetric import reports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bits", type=int, default=8, help="quantization compared in the bounds")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, weights=None).eval()
    x = torch.zeros(1, 3, args.size, args.size)
    print(pm.check_support(model, x))
    for q in (1, 2, 4):
        print(f"L{q} path-norm: exp({pm.log_path_norm(model, x, q=q):.3f})")

    gen = reports.generalization_bound(model, x, n=1_281_167)
    print(f"generalization (2310.01225 Thm 3.1): D={gen['D']} P={gen['P']} K={gen['K']} "
          f"M={gen['M']} C={gen['C']:.3f} C'={gen['C_sharp']:.3f} "
          f"bound=10^{gen['log_bound'] / math.log(10):.2f} (sharpened 10^{gen['log_bound_sharp'] / math.log(10):.2f})")

    modules = dict(model.named_modules())
    change = {f"{layer}.weight": pm.quantize_weights(modules[layer].weight.detach(), args.bits)
              for layer in pm.prunable_layers(model, x)}
    both = reports.classical_vs_path(model, change, x)
    print(f"{args.bits}-bit quantization, certified ||R(x)-R'(x)||_1 for ||x||_inf <= 1: "
          f"classical 10^{both['classical_log_bound'] / math.log(10):.2f}, "
          f"path-metric 10^{both['log_path_bound'] / math.log(10):.2f}, "
          f"ratio 10^{both['log_ratio'] / math.log(10):.2f}")

    sym = reports.symmetries(model, x)
    print(f"symmetries (2305.11417): {sym['rescaling_dims']} rescaling dimensions, "
          f"{sym['permutation_groups']} permutation groups of order 10^{sym['permutation_log10_order']:.0f}")
    return {"generalization": gen, "classical_vs_path": both, "symmetries": sym}


if __name__ == "__main__":
    main()
