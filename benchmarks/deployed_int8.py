"""Certificates of deployed int8 models (issue 22) against the real backends.

For each model (the shipped digits CNN on the 1,797 digits; torchvision resnet18, mobilenet_v2
(ReLU6) and vgg11_bn at 32x32 with 10 classes, random weights, on N(0, 1) inputs) and each backend
(torchao PT2E with X86InductorQuantizer and XNNPACKQuantizer per channel; Intel Neural
Compressor static int8 per channel and per tensor, through the adapter's ``static_deployed``),
export with a dynamic batch dimension, calibrate on 128 inputs of the distribution in one batch
(INC's default ``MovingAverageMinMaxObserver`` fed one sample at a time averages the samples'
extremes, so about half of fresh samples clip: measured on vgg11_bn, 50 of 50), convert, and
on ``--samples`` further inputs of it compare the measured output gap ``||R(x) - Rq(x)||_1`` with ``pm.deployment_report``'s bound: the bound, the worst gap/bound of
the certified samples, the share of samples where a point saturates (bound inf), and the shares
of the weight and activation terms. The digits CNN also gets W8A8 and W4A8 (XNNPACK, weights in
[-7, 7]) certificates beside the measured test-set gap and accuracy.

Beside the samples, a derivative-free ascent on the gap of the real converted graph
(:func:`pathmetric.deployed.gap_search`, SPSA: the graph carries no gradient through its
rounding) from the ``--starts`` certified samples with the largest gap/bound, ``--steps`` steps
in the box of the calibration values: its iterates are certified too, and the worst gap/bound
over the certified iterates is recorded.

``--half`` runs only the digits CNN under INC static configs with layers in fp16/bf16 (issue 22
item 4: the casts and the half-precision layer's rounding in the certificate, and the INC
sampler's order of those configs) and writes that section of the results file in place.

    python benchmarks/deployed_int8.py [--models digits,resnet18] [--backends "INC static"]
        [--samples 1000] [--starts 4] [--steps 20] [--out DIR] [--half]
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torchvision

import pathmetric as pm
from pathmetric.app import digits
from pathmetric.deployed import gap_search


def _batch_dynamic(x):
    """``dynamic_shapes`` for an export whose batch dimension is dynamic: the deployed graph
    is calibrated, measured and certified on whole batches."""
    return ({0: torch.export.Dim("batch")},)


def torchao(quantizer, batch=True):
    """torchao's PT2E flow; the export is strict (through dynamo), whose ``source_fn_stack``
    X86InductorQuantizer's conv + add + ReLU pattern reads: on a non-strict export of
    torchvision resnet18 it groups the two calls of a block's ReLU into one partition and fails
    ("Input partition has more than one output node"). ``batch=False``: exported at batch size 1
    and calibrated one sample at a time (a dynamic grid computed from the whole batch would mix
    the samples of a batch)."""
    def deploy(model, x):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        exported = torch.export.export(model, (x[:2 if batch else 1],), strict=True,
                                       dynamic_shapes=_batch_dynamic(x) if batch else None)
        prepared = prepare_pt2e(exported.module(), quantizer())
        with torch.no_grad():
            for rows in x.split(len(x) if batch else 1):
                prepared(rows)
        return convert_pt2e(prepared)
    return deploy


def inc(granularity):
    def deploy(model, x):
        from neural_compressor.torch.quantization import StaticQuantConfig

        from pathmetric.adapters.neural_compressor import static_deployed
        return static_deployed(model, StaticQuantConfig(w_granularity=granularity), x)
    return deploy


def x86():
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


def xnnpack(weight_max=127, dynamic=False):
    def make():
        from torchao.testing.pt2e._xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        config = get_symmetric_quantization_config(is_per_channel=True, weight_qmin=-weight_max,
                                                   weight_qmax=weight_max, is_dynamic=dynamic)
        return XNNPACKQuantizer().set_global(config)
    return make


#: NNI 3.0 targets: the input, weight and output of every conv and linear layer, int8 affine
NNI_TARGETS = [{"op_types": ["Conv2d", "Linear"], "target_names": ["_input_", "weight", "_output_"],
                "quant_dtype": "int8", "quant_scheme": "affine"}]


def nni_ptq(model, x):
    """NNI 3.0's ``PtqQuantizer`` on a copy of ``model`` (eval mode), calibrated on ``x`` in
    batches of 32 (random labels: its evaluator's loss is not used), wrappers frozen: the
    wrapped model, certified by the NNI adapter's registered ``deployment_report_from_wrapped``."""
    import nni
    from nni.compression import TorchEvaluator
    from nni.compression.quantization import PtqQuantizer

    import pathmetric.adapters.nni  # noqa: F401  (registers the wrapped models' certificate)

    def training(model, optimizer, training_step, lr_scheduler=None, max_steps=None,
                 max_epochs=None):
        model.eval()
        for batch in x.split(32):
            training_step((batch, None), model)

    wrapped = copy.deepcopy(model)
    optimizer = nni.trace(torch.optim.SGD)(wrapped.parameters(), lr=0.0)
    quantizer = PtqQuantizer(wrapped, NNI_TARGETS, TorchEvaluator(
        training, optimizer, lambda batch, model: model(batch[0]).sum()))
    wrapped, _ = quantizer.compress(max_steps=len(x) // 32, max_epochs=None)
    for module in wrapped.modules():
        if hasattr(module, "_nni_wrapper"):
            module._nni_wrapper.freeze()
    return wrapped.eval()


BACKENDS = {"torchao X86 (W8A8, per channel)": torchao(x86),
            "torchao XNNPACK (W8A8, per channel)": torchao(xnnpack()),
            "INC static (W8A8, per channel)": inc("per_channel"),
            "INC static (W8A8, per tensor)": inc("per_tensor"),
            "torchao XNNPACK dynamic (W8A8, per channel)": torchao(xnnpack(dynamic=True),
                                                                   batch=False),
            "NNI PTQ (W8A8, per tensor)": nni_ptq}
#: backends whose graph runs one sample at a time (exported at batch size 1)
PER_SAMPLE = {"torchao XNNPACK dynamic (W8A8, per channel)"}


def models(names, samples):
    """``name -> (float model, calibration inputs, evaluation inputs, labels or None)``."""
    out = {}
    for name in names:
        if name == "digits":
            x_train, y_train, x_test, y_test = digits.load_digits_tensors()
            model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
            x_all = torch.cat([x_train, x_test])
            out[name] = (model, x_train[:128], x_all[:max(samples, 1)], None)
            continue
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(num_classes=10).eval()
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(128 + samples, 3, 32, 32, generator=generator)
        out[name] = (model, x[:128], x[128:], None)
    return out


def gaps(model, deployed, x, rows=100):
    with torch.no_grad():
        return torch.cat([(model(v) - deployed(v)).abs().sum(dim=1) for v in x.split(rows)]
                         ).double()


def row(name, backend, model, deployed, x, calibration, search, start):
    """A table row: the certificate on ``x`` against the measured gaps, and the gap search
    ``search = (starts, steps)`` from the certified samples with the largest gap/bound."""
    report = pm.deployment_report(model, deployed, x)
    gap = gaps(model, deployed, x, rows=1 if backend in PER_SAMPLE else 100)
    certified = ~report.saturated
    ratio = (gap / report.bound).masked_fill(report.saturated, -1.0)
    worst = float(ratio.max()) if certified.any() else float("nan")
    bound = report.bound[certified]
    searched = "no certified start"
    if certified.any() and search[0] > 0:
        starts = x[ratio.argsort(descending=True)[:min(search[0], int(certified.sum()))]]
        iterates, found = gap_search(model, deployed, starts, steps=search[1],
                                     box=(float(calibration.min()), float(calibration.max())))
        checked = pm.deployment_report(model, deployed, iterates)
        kept = ~checked.saturated
        searched = (f"{float((found[kept] / checked.bound[kept]).max()):.3g} "
                    f"({int(kept.sum())}/{len(iterates)})" if kept.any()
                    else f"all {len(iterates)} saturate")
    return (f"| {name} | {backend} | {len(report.activation_terms)} | "
            f"{float(bound.median()) if certified.any() else float('inf'):.4g} | "
            f"{float(gap.max()):.3g} | {worst:.3g} | {searched} | "
            f"{report.saturated_count / len(x):.1%} | {report.weight_share:.1%} | "
            f"{report.activation_share:.1%} | {time.time() - start:.0f} |")


def digits_table(out):
    x_train, y_train, x_test, y_test = digits.load_digits_tensors()
    model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
    lines = ["", "## The digits CNN: W8A8 and W4A8 (XNNPACK per channel), test set (450 digits)",
             "", "| weights | bound (median, certified) | weight term | activation term | "
             "saturated | measured gap (max / mean) | accuracy (float -> deployed) |",
             "|---|---|---|---|---|---|---|"]
    for label, weight_max in (("W8A8", 127), ("W4A8", 7)):
        deployed = torchao(xnnpack(weight_max))(model, x_train[:128])
        report = pm.deployment_report(model, deployed, x_test)
        gap = gaps(model, deployed, x_test)
        with torch.no_grad():
            predicted = deployed(x_test)
        accuracy = float((predicted.argmax(1) == y_test).double().mean())
        certified = ~report.saturated
        lines.append(f"| {label} | {float(report.bound[certified].median()):.4g} | "
                     f"{report.weight_term:.4g} | {report.activation_term:.4g} | "
                     f"{report.saturated_count}/{len(x_test)} | {float(gap.max()):.3g} / "
                     f"{float(gap.mean()):.3g} | {digits.accuracy(model, x_test, y_test):.3f} "
                     f"-> {accuracy:.3f} |")
        out.write("\n".join(lines) + "\n")
        out.flush()
        lines = []


HALF_SECTION = "## INC static with layers in fp16/bf16 (digits CNN)"


def half_precision_section(samples, search) -> str:
    """The digits CNN under INC static W8A8 (per channel) with layers in fp16/bf16: per config
    the certificate of the converted model on ``samples`` digits against the measured gaps and
    along the gap search ``search = (starts, steps)`` (as in :func:`row`), and the order of
    ``path_metric_sampler`` over the configs (calibration: 128 training digits)."""
    from neural_compressor.torch.quantization import INT8StaticQuantConfig

    from pathmetric.adapters.neural_compressor import path_metric_sampler, static_deployed

    def config(**layers):
        c = INT8StaticQuantConfig()
        for name, dtype in layers.items():
            c.set_local(name, INT8StaticQuantConfig(w_dtype=dtype, act_dtype=dtype))
        return c
    x_train, y_train, x_test, y_test = digits.load_digits_tensors()
    model = digits.pretrained((x_train, y_train, x_test, y_test)).eval()
    calibration, x = x_train[:128], torch.cat([x_train, x_test])[:samples]
    configs = {"W8A8": config(), "fc1 fp32": config(fc1="fp32"), "fc1 fp16": config(fc1="fp16"),
               "fc1 bf16": config(fc1="bf16"), "fc1, fc2 fp16": config(fc1="fp16", fc2="fp16")}
    lines = ["| config | bound (median, certified) | weight term | activation term | rounding "
             "term (median) | max gap | worst gap/bound | search: worst gap/bound (certified "
             "iterates) | saturated | weight / activation / rounding share | accuracy | "
             "seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, c in configs.items():
        start = time.time()
        deployed = static_deployed(model, c, calibration)
        report = pm.deployment_report(model, deployed, x)
        gap = gaps(model, deployed, x)
        certified = ~report.saturated
        ratio = (gap / report.bound).masked_fill(report.saturated, -1.0)
        iterates, found = gap_search(model, deployed, x[ratio.argsort(descending=True)[
            :search[0]]], steps=search[1], box=(float(calibration.min()),
                                                float(calibration.max())))
        checked = pm.deployment_report(model, deployed, iterates)
        kept = ~checked.saturated
        with torch.no_grad():
            accuracy = float((deployed(x_test).argmax(1) == y_test).double().mean())
        lines.append(f"| {label} | {float(report.bound[certified].median()):.4g} | "
                     f"{report.weight_term:.4g} | {report.activation_term:.4g} | "
                     f"{float(report.rounding_term[certified].median()):.3g} | "
                     f"{float(gap.max()):.3g} | "
                     f"{float((gap[certified] / report.bound[certified]).max()):.3g} | "
                     f"{float((found[kept] / checked.bound[kept]).max()):.3g} "
                     f"({int(kept.sum())}/{len(iterates)}) | "
                     f"{report.saturated_count}/{len(x)} | {report.weight_share:.1%} / "
                     f"{report.activation_share:.1%} / {report.rounding_share:.2%} | "
                     f"{accuracy:.3f} | {time.time() - start:.0f} |")
        print(lines[-1], flush=True)
    names = list(configs)
    sampler = path_metric_sampler(model, calibration)(list(configs.values()))
    int8 = [i for i, name in enumerate(names) if "fp16" not in name and "bf16" not in name]
    before = sorted(int8, key=sampler.bounds.__getitem__) + [i for i in range(len(names))
                                                             if i not in int8]
    lines += ["", "Sampler (`path_metric_sampler(model, calibration)`, order `bound`): "
              + ", ".join(f"{names[i]} ({sampler.bounds[i]:.5g})" for i in sampler) + ".",
              "Before (the fp16/bf16 configs uncertified, tried last in the set's order): "
              + ", ".join(names[i] for i in before) + "."]
    about = ("`python benchmarks/deployed_int8.py --half --samples N` (one torch thread): INC "
             "static W8A8 per channel (`INT8StaticQuantConfig`) with `set_local` layers in "
             "fp16/bf16 or fp32, calibrated on 128 training digits (one batch, "
             "`static_deployed`), certified by `pm.deployment_report` on the first N of the "
             "1,797 digits and measured on them, and on the certified iterates of the SPSA "
             "search on the gap (`--starts` starts, `--steps` steps, as above). Rounding term: the casts of the half-precision "
             "layers' inputs and their float16 arithmetic (`report.rounding_term`, per sample); "
             "the cast weights are in the weight term. INC 3.10 runs a bf16 layer in float16 "
             "(its bf16 rewrite patterns are its fp16 ones): the fc1 bf16 row is the fc1 fp16 "
             "model. Accuracy: the 450 test digits (float model 0.989).")
    return "\n".join([HALF_SECTION, "", about, ""] + lines) + "\n"


def write_section(path: Path, section: str):
    """``section`` (from its ``## `` title) in the results file ``path``, in place of the one with
    the same title, or appended."""
    text = path.read_text() if path.exists() else ""
    title = section.split("\n", 1)[0]
    if title in text:
        head, rest = text.split(title, 1)
        tail = rest[rest.index("\n## "):] if "\n## " in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


HEADER = ("| model | backend | points | bound | max gap | worst gap/bound | search: worst "
          "gap/bound (certified iterates) | saturated | weight share | activation share | "
          "seconds |\n|---|---|---|---|---|---|---|---|---|---|---|\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet18,mobilenet_v2,vgg11_bn")
    parser.add_argument("--backends", default="", help="only the backends whose name contains "
                                                       "this text")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--half", action="store_true", help="only the INC fp16/bf16 section "
                                                            "(digits CNN), written in place")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = Path(args.out) / "deployed_int8.md"
    if args.half:
        write_section(path, half_precision_section(args.samples, (args.starts, args.steps)))
        return
    with path.open("w") as out:
        out.write("# Certificates of deployed int8 models (benchmarks/deployed_int8.py)\n\n"
                  f"{args.samples} inputs per model from its calibration distribution "
                  "(digits: the 1,797 digits; torchvision models: N(0, 1) at 32x32, random "
                  "weights); 128 more calibrate. Bound: median over the certified samples of "
                  "`pm.deployment_report`'s per-sample bound (exact arithmetic); worst "
                  "gap/bound over the certified samples; search: SPSA ascent on the gap "
                  f"from {args.starts} starts, {args.steps} steps, worst gap/bound over its "
                  "certified iterates; saturated: samples on which a point clips (bound "
                  "inf); weight/activation share: mean share of the two terms in the "
                  "certified bounds.\n\n" + HEADER)
        for name, (model, calibration, x, _) in models(args.models.split(","),
                                                      args.samples).items():
            for backend, deploy in BACKENDS.items():
                if args.backends not in backend:
                    continue
                start = time.time()
                try:
                    deployed = deploy(model, calibration)
                    line = row(name, backend, model, deployed, x, calibration,
                               (args.starts, args.steps), start)
                except Exception as exc:  # noqa: BLE001  (a backend that fails on a model is a result too)
                    line = f"| {name} | {backend} | failed: {type(exc).__name__}: " \
                           f"{str(exc)[:160]} | | | | | | | | |"
                out.write(line + "\n")
                out.flush()
                print(line, flush=True)
        if "digits" in args.models and not args.backends:
            digits_table(out)


if __name__ == "__main__":
    main()
