"""Running the user's model without changing it: eval mode and module paths for the duration, every
module's state, parameters and buffers restored bit for bit afterwards, the random generators
watched and restored (:func:`forward`), and the random sample inputs the engine runs it on.
"""
from __future__ import annotations

import contextlib
import random
import sys

import torch
from torch import nn

from ..errors import ModelCaptureError, UnsupportedModelError
from .rules.quantization import module_forward


class RandomDraws:
    """Watches the global random generators across calls: torch's CPU generator (and the current
    CUDA device's when CUDA is initialised), Python's ``random`` module and NumPy's legacy
    ``np.random`` (when NumPy is loaded). A call that moves one, or that is handed a
    ``torch.Generator``, draws random numbers, so the function analysed would not be a function
    of the input. The recorder checks torch's generators after every call (about a microsecond);
    Python's and NumPy's take about 50 to read, so they are checked over a whole run
    (:func:`forward`). :meth:`restore` puts the generators back as they were at the start.
    Generator objects the model holds itself (``random.Random()``, ``np.random.default_rng()``)
    are not seen: the per-sample and replay checks of capture are what catch those, by chance."""

    def __init__(self):
        self.start = self.states()
        self.last = dict(self.start)

    @staticmethod
    def states(everything=True) -> dict:
        """The generators' states: torch's, and Python's and NumPy's with ``everything``."""
        states: dict = {"torch": torch.random.get_rng_state()}
        if torch.cuda.is_initialized():   # (only where CUDA is available)
            states["cuda"] = torch.cuda.get_rng_state()
        if everything:
            states["python"] = random.getstate()
            numpy = sys.modules.get("numpy")
            if numpy is not None:
                _, key, *rest = numpy.random.get_state()
                states["numpy"] = (key.tobytes(), *rest)
        return states

    def moved(self, everything=True) -> bool:
        """Whether a generator (torch's alone unless ``everything``) moved since the last check
        (the check moves ``last`` along)."""
        now = self.states(everything)
        moved = any(k not in self.last or not (torch.equal(a, self.last[k]) if isinstance(
            a, torch.Tensor) else a == self.last[k]) for k, a in now.items())
        self.last.update(now)
        return moved

    def drawn_by(self, arguments=(), everything=True) -> str | None:
        """Why the call just made, with ``arguments`` (flattened), draws random numbers, or None
        (:meth:`moved`)."""
        if any(isinstance(x, torch.Generator) for x in arguments):
            return ("draws random numbers from the torch.Generator passed to it: the function "
                    "analysed must be deterministic")
        if self.moved(everything):
            return ("draws random numbers (a global random generator moved: torch's, Python's "
                    "random or NumPy's np.random): the function analysed must be deterministic "
                    "(dropout with training=True, torch.rand*, bernoulli, RReLU in training mode, "
                    "random.random(), ...); remove it or disable it in eval mode")
        return None

    def restore(self):
        torch.random.set_rng_state(self.start["torch"])
        random.setstate(self.start["python"])
        if "cuda" in self.start:
            torch.cuda.set_rng_state(self.start["cuda"])
        if "numpy" in self.start:
            key, *rest = self.start["numpy"]
            numpy = sys.modules["numpy"]
            numpy.random.set_state(("MT19937", numpy.frombuffer(key, dtype=numpy.uint32), *rest))


@contextlib.contextmanager
def eval_mode_with_paths(model: nn.Module, paths: list | None):
    """Eval mode (the ``training`` flags set directly: a user ``train()`` override is not run)
    and, unless ``paths`` is None, a module-path stack for the duration, and the rule's forward
    for a known quantization module (:func:`~pathmetric.core.rules.quantization.module_forward`:
    no observer runs); the hooks are removed afterwards (the flags and forwards are restored by
    :func:`model_untouched`)."""
    handles = []
    seen = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        module.training = False
        if (replacement := module_forward(module)) is not None:
            module.forward = replacement
        if paths is None:
            continue
        entry = (name, type(module).__name__)
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, entry=entry: paths.append(entry)))
        handles.append(module.register_forward_hook(
            lambda _m, _a, _o: paths.pop() and None, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_CONTAINERS = (dict, list, set)


def _contents(value):
    """A copy of the items of a mutable container (list, dict, set)."""
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, list) else set(value)


def _put_back(container, items):
    """Refill ``container`` with the ``items`` :func:`_contents` copied from it (nothing to do
    for one that was and is empty, as most hook dicts are)."""
    if not items and not container:
        return
    if isinstance(container, list):
        container[:] = items
    else:
        container.clear()
        container.update(items)


_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def identical(a, b) -> bool:
    """``torch.equal(a, b)``, through NumPy for large CPU float tensors (a memory-bound
    comparison, about twice as fast as torch's on one thread; the conversion costs a few
    microseconds, more than torch takes on a small tensor)."""
    if a.numel() >= 1 << 16 and a.device.type == "cpu" and a.dtype in _NUMPY_FLOATS \
            and a.shape == b.shape and b.device.type == "cpu" and b.dtype == a.dtype:
        return bool((a.detach().numpy() == b.detach().numpy()).all())
    return torch.equal(a, b)


def restore_parameters(model, values) -> list:
    """The names of the parameters whose values differ from their copy ``values`` (name ->
    tensor, taken once for the runs of a capture), the copy written back: a write the recorder
    cannot see (into ``p.data`` under ``torch._C.DisableTorchFunction``, through numpy) bumps no
    version counter."""
    changed = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not identical(p.data, values[name]):
                p.data.copy_(values[name])
                changed.append(name)
    return changed


@contextlib.contextmanager
def model_untouched(model, values=None):
    """Leave ``model`` exactly as it was: every module's ``__dict__`` (plain attributes, flags,
    the parameter, buffer, submodule and hook dicts, and the items of other lists, dicts and
    sets it holds: forward may rebind or append to them), every parameter's ``data``,
    ``requires_grad`` and ``grad``, parameter values equal to ``values`` (their copy, if given:
    :func:`restore_parameters`; without it a write that bumps no version counter is left for a
    later comparison to find), and buffer values bit for bit (train-mode batch statistics write
    into them inside the op). Yields a list that then names the parameters and buffers that
    forward rebound or wrote into: a refusal, as the function analysed would not be the model's
    (writes into parameters through the recorder already went to copies)."""
    modules = []
    for module in model.modules():
        state = dict(module.__dict__)
        modules.append((module, state, {k: _contents(v) for k, v in state.items()
                                        if isinstance(v, _CONTAINERS)}))
    params = [(n, p, p.data, p.requires_grad, p.grad, p._version)
              for n, p in model.named_parameters()]
    buffers = [(n, b, b.detach().clone()) for n, b in model.named_buffers()]
    changed: list = []
    try:
        yield changed
    finally:
        now_params = dict(model.named_parameters(remove_duplicate=False))
        now_buffers = dict(model.named_buffers(remove_duplicate=False))
        changed.extend(n for n, p, *_ in params if now_params.get(n) is not p)
        changed.extend(n for n, b, _ in buffers if now_buffers.get(n) is not b)
        for module, state, contents in modules:
            module.__dict__.clear()
            module.__dict__.update(state)
            for key, items in contents.items():
                _put_back(state[key], items)
        with torch.no_grad():
            for name, p, data, requires_grad, grad, version in params:
                if p.data.data_ptr() != data.data_ptr() or p.data.shape != data.shape \
                        or p.data.dtype != data.dtype:
                    p.data = data
                    changed.append(name)
                elif p._version != version:
                    changed.append(name)
                if p.requires_grad != requires_grad:
                    p.requires_grad_(requires_grad)
                if p.grad is not grad:
                    p.grad = grad
            for name, tensor, copy in buffers:
                if tensor.dtype != copy.dtype or tensor.shape != copy.shape:
                    tensor.data = copy
                    changed.append(name)
                elif not identical(tensor, copy):
                    tensor.copy_(copy)
                    changed.append(name)
            if values is not None:
                changed.extend(n for n in restore_parameters(model, values) if n not in changed)


def forward(model, inputs, what, values, recorder=None):
    """``model(*inputs)`` in eval mode without gradients, the model left as it was
    (:func:`model_untouched`, its parameters compared with their copy ``values`` if given) and
    the random generators too; returns the output, the names of the parameters and buffers
    forward changed and why it draws random numbers (or None)."""
    paths = recorder.paths if recorder is not None else None
    draws = recorder.random if recorder is not None else RandomDraws()
    with model_untouched(model, values) as changed:
        try:
            with eval_mode_with_paths(model, paths), recorder or contextlib.nullcontext():
                out = _called(model, inputs, what)
        finally:
            drew = draws.drawn_by()
            draws.restore()
    return out, changed, drew


def changes_refused(changed) -> tuple:
    """The refusal of a forward that changed the parameters or buffers ``changed``."""
    return ("forward", "", f"the forward changes {changed[:3]} (train-mode batch statistics, a "
                           "buffer or parameter rebound, written or its .data replaced, an "
                           "in-place update of model state); the engine restored them")


def sample_inputs(examples, generator, like=None):
    """Random inputs of the example shapes with batch size 1, drawn in the model's dtype (a
    float64 draw cast down takes ten times as long) and moved to its device (only the shapes of
    ``example_inputs`` matter)."""
    out = []
    for x in examples:
        if x.dim() == 0:
            raise ModelCaptureError("example inputs need a batch dimension")
        if not x.is_floating_point():
            why = (f"the model takes a {x.dtype} input (indices for an embedding, say): the "
                   "path-lifting model's input is a real vector; analyse the part of the model "
                   "after the embedding, with its output as input")
            raise UnsupportedModelError(f"input: {why}", [("input", "", why)])
        shape = (1,) + tuple(x.shape[1:])
        dtype = like.dtype if like is not None and like.is_floating_point() else x.dtype
        device = like.device if like is not None else x.device
        out.append(torch.randn(shape, generator=generator, dtype=dtype).to(device))
    return out


def first_parameter(model):
    return next(iter(model.parameters()), None)


def _called(model, inputs, what):
    try:
        with torch.no_grad():
            return model(*inputs)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # the model's own error, reported with the input shapes
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise ModelCaptureError(
            f"{type(model).__name__} failed to run {what} on inputs of shape {shapes}: "
            f"{type(exc).__name__}: {exc}") from exc
