"""Certify a torchao PT2E int8 model, weights and activations, against the float model.

    python examples/pt2e_certify_resnet18.py [--samples 256] [--quantizer xnnpack|x86]

1. torchvision resnet18 (10 classes, random weights, 32x32 inputs), exported at batch size 1.
2. torchao's PT2E flow: ``prepare_pt2e`` with XNNPACKQuantizer (per channel; or the
   X86InductorQuantizer), calibration on 64 N(0, 1) inputs, ``convert_pt2e``: BatchNorm folded,
   int8 weights, a quantize/dequantize pair at every activation point.
3. ``pm.deployment_report``: per sample, the weight term times ``max(||x||_inf, 1)`` plus the
   activation term of every point, ``inf`` where a point saturates; beside it the measured gap.
"""
import argparse

import torch
import torchvision

import pathmetric as pm


def quantizer(name):
    if name == "x86":
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
        return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    from torchao.testing.pt2e._xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--quantizer", choices=("xnnpack", "x86"), default="xnnpack")
    args = parser.parse_args()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(64 + args.samples, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prepared = prepare_pt2e(torch.export.export(model, (x[:1],)).module(),
                            quantizer(args.quantizer))
    with torch.no_grad():
        for i in range(64):
            prepared(x[i:i + 1])
    deployed = convert_pt2e(prepared)
    x = x[64:]
    report = pm.deployment_report(model, deployed, x)
    with torch.no_grad():
        gap = torch.cat([(model(v) - deployed(v)).abs().sum(dim=1) for v in x.split(1)]).double()
    certified = ~report.saturated
    print(f"points: {len(report.activation_terms)}; weight term {report.weight_term:.4g}, "
          f"activation term {report.activation_term:.4g} ({report.arithmetic})")
    print(f"saturated (not certified): {report.saturated_count} of {len(x)}")
    if certified.any():
        print(f"certified: largest bound {float(report.bound[certified].max()):.4g}, "
              f"largest measured gap {float(gap[certified].max()):.4g}, worst gap/bound "
              f"{float((gap[certified] / report.bound[certified]).max()):.3g}")


if __name__ == "__main__":
    main()
