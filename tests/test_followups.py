"""Follow-ups of issues 15 and 16: depthwise zeroing, log certificates in the adapters, heads in
every output, parameter views (LayerScale), ``x @ W`` weights as layers."""
import torch
from torch import nn

import pathmetric as pm


# ------------------------------------------------------------------ item 1: depthwise convolutions

class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Linear(4 * 5 * 5, 2)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.relu(self.pw(x)))).flatten(1))


def test_depthwise_members_zero_their_own_rows():
    torch.manual_seed(0)
    model = Depthwise().eval()
    x = torch.randn(1, 3, 5, 5)
    members = [("pw", "out", [1, 3], [1, 3]), ("dw", "in", [1, 3], [1, 3]),
               ("dw", "out", [1, 3], [1, 3])]
    zeroed = pm.zeroed_members(model, x, members)
    assert set(zeroed) == {"pw.weight", "pw.bias", "dw.weight", "dw.bias"}
    for c in range(4):
        assert bool((zeroed["dw.weight"][c] == 0).all()) == (c in (1, 3))
        assert bool(zeroed["dw.bias"][c] == 0) == (c in (1, 3))
    assert pm.path_metric(model, zeroed, x) > 0
