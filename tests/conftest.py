import torch
from hypothesis import HealthCheck, settings

# One torch thread per test process: CI runs two pytest-xdist workers on two cores, and the
# tests' tensors are small enough that more threads cost synchronisation, not time.
torch.set_num_threads(1)
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")


_MODULE_INTERNALS = set(torch.nn.Module().__dict__) - {"training"}


def _attribute_state(value, depth=0):
    """A module attribute as a comparable value: tensors by value, containers item by item,
    other objects by identity."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.detach().cpu().clone())
    if isinstance(value, (list, tuple, set, frozenset)) and depth < 4:
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return (type(value), tuple(_attribute_state(v, depth + 1) for v in items))
    if isinstance(value, dict) and depth < 4:
        return (dict, tuple((k, _attribute_state(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype, torch.device)):
        return value
    return ("object", type(value), id(value))


def _same_attribute(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_attribute(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b or (a != a and b != b)


def model_state(model):
    """Everything a public call must leave as it was: parameters (values, dtypes, grads,
    requires_grad, identity), buffers (values, identity), training flags, hooks and every other
    module attribute (plain values, containers and tensors by value) of every module."""
    return ({n: (p.detach().clone(), p.dtype, None if p.grad is None else p.grad.clone(),
                 p.requires_grad, id(p), p.data_ptr()) for n, p in model.named_parameters()},
            {n: (b.clone(), id(b)) for n, b in model.named_buffers()},
            {n: m.training for n, m in model.named_modules()},
            {n: (tuple(m._forward_hooks.values()), tuple(m._forward_pre_hooks.values()))
             for n, m in model.named_modules()},
            {n: _attribute_state({k: v for k, v in m.__dict__.items()
                                  if k not in _MODULE_INTERNALS})
             for n, m in model.named_modules()})


def same_state(a, b) -> bool:
    """``model_state`` snapshots equal bit for bit."""
    (pa, ba, fa, ha, aa), (pb, bb, fb, hb, ab) = a, b
    return (pa.keys() == pb.keys() and ba.keys() == bb.keys()
            and all(torch.equal(pa[n][0], pb[n][0]) and pa[n][1] == pb[n][1]
                    and pa[n][3:] == pb[n][3:] and (pa[n][2] is None) == (pb[n][2] is None)
                    and (pa[n][2] is None or torch.equal(pa[n][2], pb[n][2])) for n in pa)
            and all(torch.equal(ba[n][0], bb[n][0]) and ba[n][1] == bb[n][1] for n in ba)
            and fa == fb and ha == hb
            and aa.keys() == ab.keys() and all(_same_attribute(aa[n], ab[n]) for n in aa))
