"""Peak resident memory of every public analysis, each in its own process, beside a float32
forward and forward+backward of the same model (1 thread, random weights).

Usage: python benchmarks/memory.py [--models vgg11_bn@64,unet@512,vgg16@224]
       [--analyses path_norm,...] [--limit-gb 12] [--label after]
       [--out benchmarks/results/memory.md]

Each measurement is a fresh ``python benchmarks/memory.py --child MODEL@SIZE ANALYSIS`` whose
address space is capped at ``--limit-gb`` (so one runaway analysis cannot take a shared machine
down) and which prints its own peak resident set (``VmHWM`` of /proc/self/status) at the end:
torch's own baseline (libraries, allocator) is in every figure, the model itself too. Processes
run one at a time. The table gives MB and the ratio to the float32 forward+backward, the target
of issue 23 being <= 2x for every analysis.

``path_metric``, ``output_bound`` and ``prune`` hold a second model (the user's pruned copy,
``prune``'s own copy): one model's parameters more than the others, by the API's nature.
"""
import argparse
import copy
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASELINES = ("forward", "forward_backward")
ANALYSES = ("path_norm", "path_metric", "output_bound", "weight_scores", "channel_scores",
            "layer_sensitivity", "quantization_bound", "mixed_precision_plan", "prune",
            "tp_importance", "inc_sampler")


def peak_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(spec):
    """``(model, input)`` for ``name@size``: a torchvision classifier or ``unet`` (smp U-Net
    resnet34), random weights, eval mode, a 1x3xSxS input."""
    import torch
    import torchvision
    name, size = spec.split("@")
    torch.manual_seed(0)
    if name == "unet":
        import segmentation_models_pytorch as smp
        model = smp.Unet("resnet34", encoder_weights=None)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    return model.eval(), torch.zeros(1, 3, int(size), int(size))


def _pruned_copy(model):
    """A copy of ``model`` with about the 30 % smallest entries of every weight zeroed (the
    user's pruned model of ``path_metric`` and ``output_bound``): the threshold of a strided
    sample, applied by blocks of rows, so that making the copy peaks below the analysis."""
    import torch
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() > 1:
                sample = p.detach().flatten()[::max(1, p.numel() >> 16)].abs()
                threshold = sample.kthvalue(max(1, int(0.3 * sample.numel()))).values
                for rows in p.split(256):
                    rows.masked_fill_(rows.abs() <= threshold, 0)
    return other


def child(spec, analysis):
    import torch
    torch.set_num_threads(1)
    model, x = build(spec)
    import pathmetric as pm
    if analysis == "forward":
        with torch.no_grad():
            model(x)
    elif analysis == "forward_backward":
        out = model(x)
        out.float().sum().backward()
    elif analysis == "path_norm":
        pm.path_norm(model, x)
    elif analysis == "path_metric":
        pm.path_metric(model, _pruned_copy(model), x)
    elif analysis == "output_bound":
        pm.output_bound(model, _pruned_copy(model), x.repeat(2, 1, 1, 1))
    elif analysis == "weight_scores":
        pm.weight_scores(model, x)
    elif analysis == "channel_scores":
        pm.channel_scores(model, x)
    elif analysis == "layer_sensitivity":
        pm.layer_sensitivity(model, x, bits=(4,))
    elif analysis == "quantization_bound":
        pm.quantization_bound(model, x, bits=4)
    elif analysis == "mixed_precision_plan":
        pm.mixed_precision_plan(model, x, bits=(2, 4, 8), avg_bits=4)
    elif analysis == "prune":
        pm.prune(model, 0.5, x)
    elif analysis == "tp_importance":
        import torch_pruning as tp

        from pathmetric.adapters.torch_pruning import PathMetricImportance
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        importance = PathMetricImportance(x)
        for group in graph.get_all_groups(root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
            importance(group)
    elif analysis == "inc_sampler":
        from neural_compressor.torch.quantization import RTNConfig

        from pathmetric.adapters.neural_compressor import path_metric_sampler
        path_metric_sampler(model, x)([RTNConfig(bits=4), RTNConfig(bits=8)])
    else:
        raise SystemExit(f"unknown analysis {analysis!r}; known: {BASELINES + ANALYSES}")
    print(f"PEAK_MB {peak_mb():.0f}")


def measure(spec, analysis, limit_bytes) -> tuple[float | None, float]:
    """``(peak MB or None when the child failed, seconds)`` of one analysis in a fresh process."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", spec, analysis], cwd=ROOT, env=env,
                          preexec_fn=cap, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    for line in done.stdout.splitlines():
        if line.startswith("PEAK_MB"):
            return float(line.split()[1]), seconds
    print(f"{spec} {analysis} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    return None, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("MODEL@SIZE", "ANALYSIS"))
    parser.add_argument("--models", default="vgg11_bn@64,unet@512,vgg16@224")
    parser.add_argument("--analyses", default=",".join(ANALYSES))
    parser.add_argument("--limit-gb", type=float, default=12.0)
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    analyses = args.analyses.split(",")
    header = "| model | f32 fwd | f32 fwd+bwd | " + " | ".join(analyses) + " |"
    lines = [header, "|---" * (3 + len(analyses)) + "|"]
    for spec in args.models.split(","):
        peaks = {}
        for analysis in BASELINES + tuple(analyses):
            peaks[analysis], seconds = measure(spec, analysis, int(args.limit_gb * 2**30))
            print(f"{spec} {analysis}: {peaks[analysis]} MB ({seconds:.0f} s)", file=sys.stderr,
                  flush=True)
        ref = peaks["forward_backward"]
        cells = [f"{peaks[a]:.0f}" if peaks[a] else "failed" for a in BASELINES]
        cells += [f"{peaks[a]:.0f} ({peaks[a] / ref:.2f}x)" if peaks[a] and ref else "failed"
                  for a in analyses]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = (f"### {args.label}\n\nPeak resident MB of one process (ratio to the float32 "
             f"forward+backward), 1 thread, random weights; `python benchmarks/memory.py "
             f"--models {args.models} --analyses {args.analyses}`\n\n" + "\n".join(lines) + "\n")
    print(table)
    if args.out:
        with open(args.out, "a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
