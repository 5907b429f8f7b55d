"""Engine speed on a zoo model, every ratio measured side by side in one run.

Usage: python benchmarks/engine_speed.py [--model resnet50] [--size 224] [--repeat 5]
       [--threads 1,2] [--quick] [--clock wall|cpu] [--out benchmarks/results/engine_speed.md]

Times (best of --repeat, warm unless stated) against one float32 forward (and forward+backward)
of the same model at 1x3xSxS:
- path_norm in float64 (default) and float32, cold (first call, capture included) and warm;
- warm path_norm of the model holding a 64 MiB plain tensor attribute (the cache key digests it);
- the straightforward baseline: deep copy, module swaps (|w|, folded |BN|, ReLU -> identity,
  max-pool -> sum-pool), float64 forward on ones;
- path_metric (two lifted passes) against path_norm;
- weight_scores and layer_sensitivity over 4 bit-widths against forward+backward;
- a SynFlow-style score (|theta| everywhere, ones input, one backward), with how its numbers
  differ from ours (max-pooling, BatchNorm).

``--clock cpu`` times each call by the process's CPU time instead of the wall clock: with one
torch thread, what the call computed, without the time other processes took the core for on a
shared machine (their contention for memory bandwidth still counts).
``--quick`` times the forward and the path_norm rows only, the cold one as the best of
``--repeat`` captures anew (``forget`` before each): the capture path, for the A/B of
``engine_speed_ab.py`` on a loaded machine.
"""
import argparse
import copy
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pathmetric as pm
from pathmetric.core.support import forget

CLOCK = time.perf_counter   # time.process_time with --clock cpu


def best_time(fn, repeat, warmup=0):
    """Shortest of ``repeat`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return min(times)


class FoldedBN(nn.Module):
    def __init__(self, bn):
        super().__init__()
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("s", s.abs().detach()[None, :, None, None])
        self.register_buffer("t", (bn.bias - bn.running_mean * s).abs().detach()[None, :, None, None])

    def forward(self, x):
        return x * self.s + self.t


class SumPool(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return F.avg_pool2d(x, self.pool.kernel_size, self.pool.stride, self.pool.padding,
                            self.pool.ceil_mode, True, divisor_override=1)


def naive_path_norm(model, size):
    """The straightforward implementation: deep copy, module swaps, float64 forward on ones."""
    lifted = copy.deepcopy(model).double().eval()
    for name, module in list(lifted.named_modules()):
        parent = lifted.get_submodule(name.rsplit(".", 1)[0]) if "." in name else lifted
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                module.weight.abs_()
                if module.bias is not None:
                    module.bias.abs_()
        elif isinstance(module, nn.BatchNorm2d):
            setattr(parent, leaf, FoldedBN(module))
        elif isinstance(module, nn.ReLU):
            setattr(parent, leaf, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            setattr(parent, leaf, SumPool(module))
    with torch.no_grad():
        return float(lifted(torch.ones(1, 3, size, size, dtype=torch.float64)).sum())


def synflow_scores(model, size):
    """SynFlow (Tanaka et al. 2020): |theta| for every parameter, all-ones input, R = sum of
    outputs, score = |theta| * dR/d|theta|; BatchNorm and max-pooling are run as they are."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    out = net(torch.ones(1, 3, size, size, dtype=torch.float64)).sum()
    out.backward()
    return {n: (p * p.grad).detach() for n, p in net.named_parameters()}, float(out.detach())


def measure(model, x, size, repeat, quick=False):
    """Rows ``(what, seconds, ratio, target ratio or None)`` of one run, and the SynFlow table
    (only the forward and path_norm rows with ``quick``)."""
    with torch.no_grad():
        forward = best_time(lambda: model(x), repeat)

    def forward_backward():
        model.zero_grad()
        model(x).sum().backward()
    fwd_bwd = best_time(forward_backward, repeat)
    model.zero_grad(set_to_none=True)

    forget(model)
    cold = best_time(lambda: (forget(model), pm.path_norm(model, x)), repeat if quick else 1)
    warm64 = best_time(lambda: pm.path_norm(model, x), repeat)
    warm32 = best_time(lambda: pm.path_norm(model, x, precision="float32"), repeat)
    model.spare = torch.zeros(1 << 24)  # 64 MiB as a plain attribute: in the cache key by digest
    spare = best_time(lambda: pm.path_norm(model, x), repeat, warmup=1)
    del model.spare
    rows = [
        ("float32 forward of the model", forward, 1.0, None),
        ("float32 forward+backward of the model", fwd_bwd, fwd_bwd / forward, None),
        ("path_norm, float64, cold (capture included)", cold, cold / forward, 8),
        ("path_norm, float64, warm", warm64, warm64 / forward, 4),
        ("path_norm, float32, warm", warm32, warm32 / forward, 1.5),
        ("path_norm, float64, warm, a 64 MiB tensor attribute on the model", spare,
         spare / forward, None),
    ]
    if quick:
        return rows, (pm.path_norm(model, x), naive_path_norm(model, size)), []
    naive = best_time(lambda: naive_path_norm(model, size), repeat)
    ours, baseline = pm.path_norm(model, x), naive_path_norm(model, size)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(p.abs() > p.abs().flatten().kthvalue(max(1, p.numel() // 2)).values)
    metric = best_time(lambda: pm.path_metric(model, other, x), repeat)
    scores64 = best_time(lambda: pm.weight_scores(model, x), repeat)
    scores32 = best_time(lambda: pm.weight_scores(model, x, precision="float32"), repeat)
    sens64 = best_time(lambda: pm.layer_sensitivity(model, x, bits=(2, 3, 4, 8)), repeat)
    sens32 = best_time(lambda: pm.layer_sensitivity(model, x, bits=(2, 3, 4, 8),
                                                    precision="float32"), repeat)
    synflow = best_time(lambda: synflow_scores(model, size), repeat)
    syn, syn_total = synflow_scores(model, size)
    path = pm.weight_scores(model, x, relative=True)
    differences = []
    for name in list(path)[:3] + list(path)[-2:]:
        a = path[name].flatten().double()
        b = (syn[name] / syn_total).flatten()
        corr = torch.corrcoef(torch.stack([a.argsort().argsort().double(),
                                           b.argsort().argsort().double()]))[0, 1]
        differences.append((name, float(a.sum()), float(b.sum()), float(corr)))
    rows += [
        ("baseline: deep copy + module swaps + float64 forward", naive, naive / forward, None),
        ("path_metric, float64 (vs path_norm float64 warm)", metric, metric / warm64, 2.5),
        ("weight_scores, float64 (vs forward+backward)", scores64, scores64 / fwd_bwd, 3),
        ("weight_scores, float32 (vs forward+backward)", scores32, scores32 / fwd_bwd, 1.5),
        ("layer_sensitivity 4 bit-widths, float64 (vs fwd+bwd)", sens64, sens64 / fwd_bwd, 4),
        ("layer_sensitivity 4 bit-widths, float32 (vs fwd+bwd)", sens32, sens32 / fwd_bwd, 2),
        ("SynFlow-style scores, float64 (vs fwd+bwd)", synflow, synflow / fwd_bwd, None),
    ]
    return rows, (ours, baseline), differences


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, one "
                        "table each")
    parser.add_argument("--quick", action="store_true", help="the forward and path_norm rows "
                        "only, cold as the best of --repeat")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: the "
                        "process's CPU time (one thread)")
    parser.add_argument("--out", default="benchmarks/results/engine_speed.md")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    lines = [f"# Engine speed: {args.model} at 1x3x{args.size}x{args.size}, "
             f"torch {torch.__version__}, best of {args.repeat}", ""]
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        rows, (ours, baseline), differences = measure(model, x, args.size, args.repeat,
                                                      args.quick)
        lines += [f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "| what | seconds | ratio | target | met |", "|---|---:|---:|---|---|"]
        lines += [f"| {what} | {t:.4f} | {r:.2f}x | "
                  + ("" if target is None else f"<= {target}x") + " | "
                  + ("" if target is None else ("yes" if r <= target else "no")) + " |"
                  for what, t, r, target in rows]
        lines += ["", f"path_norm = {ours:.6e}; baseline = {baseline:.6e}; relative difference "
                  f"{abs(ours - baseline) / baseline:.2e}", ""]
    if args.quick:
        return publish(lines, args.out)
    lines += ["SynFlow vs path mass (share of the total) on a few layers: SynFlow keeps max-pooling "
              "as max (one path per window instead of all of them) and runs BatchNorm with |gamma|, "
              "|beta| and the raw running statistics, so its total and shares differ from the "
              "path-norm's; rank correlation within a layer stays high because a layer's "
              "downstream factor is shared.", "",
              "| layer | path share | SynFlow share | Spearman within layer |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {a:.3e} | {b:.3e} | {c:.4f} |" for n, a, b, c in differences]
    publish(lines, args.out)


def publish(lines, path):
    """Print the markdown ``lines`` and write them to ``path``."""
    text = "\n".join(lines) + "\n"
    print(text)
    with open(path, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
