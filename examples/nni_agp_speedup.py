"""NNI's ``norm_pruning`` / ``scheduled_pruning`` examples with the path-metric pruner.

Adapted from NNI's examples/compression/pruning/norm_pruning.py and scheduled_pruning.py: resnet18
for CIFAR-10-sized inputs, random weights and random data (no download), ``PathMetricPruner``
in place of ``L1NormPruner`` and driven by ``AGPPruner``, then NNI's ``ModelSpeedup``. Nothing
else changes: importing ``pathmetric.adapters.nni`` applies the tracer patches NNI 3.0 needs on
recent torch. Run: ``python examples/nni_agp_speedup.py``.
"""
import nni
import torch
import torchvision
from nni.compression import TorchEvaluator
from nni.compression.pruning import AGPPruner
from nni.compression.speedup import ModelSpeedup
from nni.compression.utils import auto_set_denpendency_group_ids
from nni.runtime.log import silence_stdout

from pathmetric.adapters.nni import PathMetricPruner

silence_stdout()          # NNI's INFO log lines (ModelSpeedup's ~300) off stdout
torch.manual_seed(0)
images, labels = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))


def training_step(batch, model):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None):
    model.train()
    for step in range(max_steps):
        batch = (images[8 * step % 64:][:8], labels[8 * step % 64:][:8])
        optimizer.zero_grad()
        training_step(batch, model).backward()
        optimizer.step()


def parameters(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    print("Original model parameter number:", parameters(model))

    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    dummy_input = torch.rand(8, 3, 32, 32)
    config_list = auto_set_denpendency_group_ids(model, config_list, dummy_input)
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=1e-3)
    evaluator = TorchEvaluator(train, optimizer, training_step)

    sub_pruner = PathMetricPruner(model, config_list, dummy_input[:1])
    scheduled_pruner = AGPPruner(sub_pruner, interval_steps=2, total_times=3, evaluator=evaluator)
    _, masks = scheduled_pruner.compress(max_steps=2 * 3, max_epochs=None)
    scheduled_pruner.unwrap_model()

    model.eval()
    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    print("Pruned model parameter number:", parameters(model))
    print("Output shape after speedup:", tuple(model(dummy_input).shape))
