"""State a forward reads enters the capture cache's key whatever its type: a slice attribute
(unhashable before Python 3.12; NNI 3.0's wrappers hold some) keys the cache by its bounds."""
import torch
from torch import nn

import pathmetric as pm


class Rows(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 4)
        self.rows = slice(0, 2)

    def forward(self, x):
        return self.fc(x)[:, self.rows]


def test_a_slice_attribute_keys_the_cache():
    model = Rows().eval()
    x = torch.rand(1, 6)
    first = pm.path_norm(model, x)
    assert pm.path_norm(model, x) == first
    model.rows = slice(0, 4)
    assert pm.path_norm(model, x) > first   # two more outputs' paths, not the cached graph
