import torch
from hypothesis import HealthCheck, settings

# One torch thread per test process: CI runs two pytest-xdist workers on two cores, and the
# tests' tensors are small enough that more threads cost synchronisation, not time.
torch.set_num_threads(1)
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")


def model_state(model):
    """Everything a public call must leave as it was: parameters (values, dtypes, grads,
    requires_grad), buffers, training flags and hooks of every module."""
    return ({n: (p.detach().clone(), p.dtype, None if p.grad is None else p.grad.clone(),
                 p.requires_grad) for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()},
            {n: m.training for n, m in model.named_modules()},
            {n: (tuple(m._forward_hooks.values()), tuple(m._forward_pre_hooks.values()))
             for n, m in model.named_modules()})


def same_state(a, b) -> bool:
    """``model_state`` snapshots equal bit for bit."""
    (pa, ba, fa, ha), (pb, bb, fb, hb) = a, b
    return (pa.keys() == pb.keys() and ba.keys() == bb.keys()
            and all(torch.equal(pa[n][0], pb[n][0]) and pa[n][1] == pb[n][1]
                    and pa[n][3] == pb[n][3] and (pa[n][2] is None) == (pb[n][2] is None)
                    and (pa[n][2] is None or torch.equal(pa[n][2], pb[n][2])) for n in pa)
            and all(torch.equal(ba[n], bb[n]) for n in ba) and fa == fb and ha == hb)
