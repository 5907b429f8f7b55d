"""Autotune a small digits CNN with Intel Neural Compressor 3.x: path-metric sampler vs INC's order.

    python examples/inc_autotune_digits.py [--seed 0] [--tolerable-loss 0.01]

1. Trains a small ReLU CNN (two convs, four Linear layers) on scikit-learn digits for a few seconds.
2. RTN weight-only grid (bits x group size, most compressed first, as one would list it):
   ``autotune`` with INC's default sequential sampler, then with ``path_metric_sampler``, which
   walks the same set by increasing certified bound. Prints trials used, the accepted config,
   its accuracy and its weight storage (bits per weight, fp16 scales included).
3. Layer-wise fp32 fallback from 2-bit RTN (group 16): ``path_metric_config_set`` (most sensitive layers
   first, by ``pm.layer_sensitivity``) against falling back in model order.
4. Static int8 (PT2E) trials ranked by the sampler, and ``PathMetricConfig`` pruning over sparsities.
"""
import argparse
import copy
import re
import time

import torch
import torch.nn.functional as F
from neural_compressor.common.base_tuning import default_sampler
from neural_compressor.torch.export import export
from neural_compressor.torch.quantization import (
    INT8StaticQuantConfig,
    RTNConfig,
    TuningConfig,
    autotune,
)
from torch import nn

import pathmetric as pm
from pathmetric.adapters.neural_compressor import (
    PathMetricConfig,
    path_metric_config_set,
    path_metric_sampler,
    quantization_bound,
    simulate_weights,
    storage_bits,
)
from pathmetric.app.digits import load_digits_tensors, train


class DigitsNet(nn.Module):
    """conv3x3(1->16)+ReLU+maxpool2 -> conv3x3(16->32)+ReLU+maxpool2 -> 128 -> 128 -> 64 -> 32 -> 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(128, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 32)
        self.fc4 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc4(F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))))


def trained_model(data, seed=0, epochs=20):
    torch.manual_seed(seed)
    return train(DigitsNet(), data, epochs=epochs, seed=seed, lr=5e-3)


def accuracy_fn(x, y):
    """Top-1 accuracy; no ``.eval()`` call (exported PT2E models refuse it; all are in eval mode)."""
    def evaluate(model):
        with torch.no_grad():
            return float((model(x).argmax(1) == y).double().mean())
    return evaluate


def rtn_grid():
    """RTN candidates, most compressed first: bits 2, 3, 4 x per-channel / group 32 / group 16."""
    return [RTNConfig(bits=b, group_size=g) for b in (2, 3, 4) for g in (-1, 32, 16)]


def model_order_fallbacks(model, base_config, reverse=False):
    """``[base, base + first layer in fp32, + first two, ...]`` in the model's order (or reversed):
    the sequence one builds without a sensitivity ranking."""
    layers = sorted({n.rsplit(".", 1)[0] for n in simulate_weights(model, base_config)},
                    key=list(dict(model.named_modules())).index, reverse=reverse)
    configs = []
    for k in range(len(layers) + 1):
        config = copy.deepcopy(base_config)
        for name in layers[:k]:
            config.set_local(name + "$", RTNConfig(dtype="fp32"))
        configs.append(config)
    return configs


def run_autotune(model, configs, sampler, evaluate, tolerable_loss, **kwargs):
    """``autotune`` recording the trial order: returns (indices tried, accuracies, best model)."""
    tried, scores = [], []

    class Recording(sampler):
        def __iter__(self):
            for index in super().__iter__():
                tried.append(index)
                yield index

    def recording_eval(m):
        scores.append(evaluate(m))
        return scores[-1]

    best = autotune(kwargs.pop("tuned", model), TuningConfig(config_set=configs, sampler=Recording,
                    tolerable_loss=tolerable_loss),
                    eval_fn=recording_eval, **kwargs)
    return tried, scores[1:], best


def describe(config):
    """``bits=.. group=..`` plus the layers an RTN config keeps in fp32."""
    kept = [k.rstrip("$") for k, v in config.local_config.items()
            if v.dtype == "fp32" and re.fullmatch(r"[\w.]+\$?", k)]  # not INC's own lm_head patterns
    return f"bits={config.bits} group={config.group_size}" + (f" fp32={kept}" if kept else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerable-loss", type=float, default=0.01)
    args = parser.parse_args()

    data = load_digits_tensors(0)
    start = time.perf_counter()
    model = trained_model(data, args.seed)
    evaluate = accuracy_fn(data[2], data[3])
    x = data[2][:1]
    print(f"trained DigitsNet in {time.perf_counter() - start:.1f} s, fp32 accuracy {evaluate(model):.4f}")

    print(f"\n== RTN grid, tolerable loss {args.tolerable_loss:.0%} ==")
    configs = rtn_grid()
    for name, sampler in (("INC default order", default_sampler),
                          ("path-metric sampler", path_metric_sampler(model, x))):
        tried, scores, best = run_autotune(model, configs, sampler, evaluate, args.tolerable_loss)
        chosen = configs[tried[scores.index(max(scores))]]
        print(f"{name:<20} trials {len(tried)}  accepted {describe(chosen):<22} accuracy "
              f"{evaluate(best):.4f}  bound {quantization_bound(model, x, chosen):.3e}  "
              f"{storage_bits(model, chosen):.2f} bits/weight")

    print("\n== layer-wise fp32 fallback from RTN 2 bits, group 16 ==")
    base = RTNConfig(bits=2, group_size=16)
    for name, sequence in (("model order", model_order_fallbacks(model, base)),
                           ("path-metric ranking", path_metric_config_set(model, x, base))):
        tried, scores, best = run_autotune(model, sequence, default_sampler, evaluate, args.tolerable_loss)
        print(f"{name:<20} trials {len(tried)}  fp32 layers {len(tried) - 1}  accuracy {evaluate(best):.4f}  "
              f"{storage_bits(model, sequence[tried[-1]]):.2f} bits/weight  "
              f"fallback {describe(sequence[tried[-1]])}")

    print("\n== static int8 (PT2E) trials, ranked by the full certificate (weights + activations) ==")
    static = [INT8StaticQuantConfig(w_granularity="per_tensor"), INT8StaticQuantConfig()]
    sampler = path_metric_sampler(model, x, calibration=data[0][:256])
    tried, scores, best = run_autotune(
        model, static, sampler, evaluate, args.tolerable_loss, tuned=export(
            copy.deepcopy(model), (data[2][:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)),
        run_fn=lambda m: m(data[0][:256]), example_inputs=(data[2][:2],))
    bounds = sampler(static).bounds
    for i in tried:
        print(f"trial {tried.index(i) + 1}: w_granularity={static[i].w_granularity:<12} bound {bounds[i]:.3e}"
              f"  accuracy {scores[tried.index(i)]:.4f}")

    print("\n== path_metric pruning inside autotune (sparsity 0.9 -> 0.3) ==")
    tried, scores, best = run_autotune(model, [PathMetricConfig(sparsity=[0.9, 0.8, 0.7, 0.5, 0.3])],
                                       default_sampler, evaluate, 0.02, example_inputs=x)
    print(f"trials {len(tried)}, accuracies {[round(s, 4) for s in scores]}, accepted model: accuracy "
          f"{evaluate(best):.4f}, certified bound {best.path_metric_bound:.3e} "
          f"(path-norm {pm.path_norm(model, x):.3e})")


if __name__ == "__main__":
    main()
