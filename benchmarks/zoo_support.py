"""Which zoo models the engine supports, and the first refused op of the others.

Usage: python benchmarks/zoo_support.py --json OUT.json       (one sweep with the installed code)
       python benchmarks/zoo_support.py --render BEFORE.json AFTER.json
                                        [--out benchmarks/results/zoo_support.md]

The sweep runs ``pm.check_support`` (capture and replay, nothing else) on every torchvision
classification model and on a fixed list of timm and segmentation_models_pytorch models, built
without pretrained weights, at 1x3x64x64 (1x3x224x224 when a model cannot run at 64; smp models
at 1x3x64x64). Run it once with the code before a change (e.g. another checkout's interpreter)
and once after, then render both into one table.
"""
import argparse
import json
import sys
import time

import torch

import pathmetric as pm

TIMM = ["mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_110d", "mobilenetv2_140",
        "efficientnet_lite0", "tf_efficientnet_lite0", "mnasnet_100", "mnasnet_small",
        "spnasnet_100", "fbnetc_100", "semnasnet_050", "tf_mobilenetv3_small_minimal_100",
        "mobilenetv3_small_050", "lcnet_050", "ghostnet_050", "mixnet_s", "resnet18",
        "resnet18d", "resnet26", "resnet50", "seresnet18", "regnetx_002", "regnety_002",
        "repvgg_a0", "vgg11", "densenet121", "dla34", "hrnet_w18_small", "cspresnet50",
        "darknet17", "res2net50_14w_8s", "selecsls42b", "dpn68", "xception41", "convnext_atto",
        "efficientnet_b0", "rexnet_100", "tinynet_e", "gernet_s", "resnest14d"]
SMP = [("Unet", "resnet18"), ("Unet", "mobilenet_v2"), ("Unet", "efficientnet-b0"),
       ("UnetPlusPlus", "resnet18"), ("FPN", "resnet18"), ("FPN", "mobilenet_v2"),
       ("Linknet", "resnet18"), ("PSPNet", "resnet18"), ("DeepLabV3", "resnet18"),
       ("DeepLabV3Plus", "mobilenet_v2"), ("PAN", "resnet18"), ("MAnet", "resnet18")]


def candidates():
    import torchvision
    for name in torchvision.models.list_models(module=torchvision.models):
        yield "torchvision", name, lambda name=name: torchvision.models.get_model(name, weights=None)
    import timm
    for name in TIMM:
        yield "timm", name, lambda name=name: timm.create_model(name, pretrained=False)
    import segmentation_models_pytorch as smp
    for arch, encoder in SMP:
        yield "smp", f"{arch}:{encoder}", lambda arch=arch, encoder=encoder: getattr(smp, arch)(
            encoder_name=encoder, encoder_weights=None)


def status(model):
    """'supported' (with the head when one was set aside) or the first refused op and reason."""
    last = None
    for size in (64, 224):
        try:
            report = pm.check_support(model, torch.zeros(1, 3, size, size))
        except pm.ModelCaptureError as exc:
            last = f"does not run: {str(exc)[:80]}"
            continue
        if report.ok:
            head = getattr(report, "head", None)
            return "supported" + (f" (head: {head})" if head else "")
        op, path, why = report.unsupported[0]
        return f"refused: {op} in '{path or '<model>'}': {why}"
    return last


def sweep(out):
    torch.set_num_threads(1)
    rows = []
    for family, name, build in candidates():
        start = time.perf_counter()
        try:
            torch.manual_seed(0)
            model = build().eval()
            result = status(model)
        except Exception as exc:  # noqa: BLE001 - a model the library itself cannot build here
            result = f"not built: {type(exc).__name__}: {str(exc)[:80]}"
        rows.append({"family": family, "name": name, "status": result,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(family, name, result[:120], file=sys.stderr, flush=True)
        del model
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


def render(before_path, after_path, out):
    before = {(r["family"], r["name"]): r["status"] for r in json.load(open(before_path))}
    after = json.load(open(after_path))
    lines = ["# Zoo support: before and after issue 15", "",
             "`benchmarks/zoo_support.py`: `pm.check_support` at 1x3x64x64 (224 when a model "
             "cannot run at 64), no pretrained weights. *Before*: main's code; *after*: this "
             "branch. A refused model names its first refused op.", ""]
    for family in ("torchvision", "timm", "smp"):
        rows = [r for r in after if r["family"] == family]
        ok_before = sum(before.get((family, r["name"]), "").startswith("supported") for r in rows)
        ok_after = sum(r["status"].startswith("supported") for r in rows)
        lines += [f"## {family}: {ok_before} of {len(rows)} supported before, {ok_after} after",
                  "", "| model | before | after |", "|---|---|---|"]
        for r in rows:
            old = before.get((family, r["name"]), "?")
            lines.append(f"| {r['name']} | {_short(old)} | {_short(r['status'], reason=True)} |")
        lines.append("")
    with open(out, "w") as f:
        f.write("\n".join(lines))


def _short(text, reason=False):
    """``refused: OP in 'PATH'`` (and the reason, cut, with ``reason``) or the status as is."""
    text = text.replace("|", "/")
    if text.startswith("refused: ") and not reason:
        return ":".join(text.split(":")[:2])
    return text[:100]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--render", nargs=2)
    parser.add_argument("--out", default="benchmarks/results/zoo_support.md")
    args = parser.parse_args()
    if args.render:
        render(*args.render, args.out)
    else:
        sweep(args.json)
