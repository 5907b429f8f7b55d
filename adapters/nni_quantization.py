"""NNI 3.0 quantization: the certificate of an NNI quantization ``config_list`` (re-exported by
:mod:`pathmetric.adapters.nni`).

- :func:`quantized_parameters`: the weights (and biases) NNI's quantizers deploy for a config;
- :func:`quantization_bound_from_config`: the weight path-metric of that change;
- :func:`deployment_report_from_config`: the deployed model, ``_input_`` / ``_output_``
  (activation) targets included: each becomes a quantization point with NNI's scale and zero
  point from calibrated min/max (as NNI's ``PtqQuantizer`` computes them), certified by
  ``pm.deployment_report``;
- :func:`deployment_report_from_wrapped`: the model an NNI quantizer (``PtqQuantizer``,
  ``QATQuantizer``, ``LsqQuantizer``, ``DoReFaQuantizer`` ...) wrapped, with the scales and zero
  points its wrappers hold: the same deployed model, read off the quantizer's own state.

NNI's own machinery does the translation: its config parsing and target settings, its
granularity scalers, ``compute_scale_zp`` and ``ClampRound``. ``model`` is never modified.
"""
from __future__ import annotations

import warnings
from copy import deepcopy

import torch
from nni.compression.base.apply_method import ClampRound
from nni.compression.base.compressor import register_scalers
from nni.compression.base.config import trans_legacy_config_list
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import register_wrappers
from nni.compression.quantization.ptq_quantizer import compute_scale_zp
from torch import nn

import pathmetric as pm
from pathmetric import deployed

__all__ = ["quantized_parameters", "quantization_bound_from_config",
           "deployment_report_from_config", "deployment_report_from_wrapped"]


def _spaces(model: nn.Module, config_list: list) -> dict:
    """NNI's target spaces of ``config_list`` on ``model``: ``{module: {target: space}}``."""
    _, spaces = register_wrappers(model, trans_legacy_config_list(deepcopy(config_list)),
                                  "quantization")
    return spaces


def quantized_parameters(model: nn.Module, config_list: list) -> dict:
    """``{parameter name: weight as NNI would quantize it}`` for an NNI quantization config.

    NNI's own machinery does it: its config parsing and target settings, its granularity
    scalers, ``compute_scale_zp`` on the exact min/max of the weight (no calibration is needed
    for weights) and its ``ClampRound``. Only parameter targets (``weight``, ``bias``) count;
    ``_input_`` / ``_output_`` (activation) targets are ignored. ``model`` is not modified.
    """
    spaces = _spaces(model, config_list)
    # activation targets are outside the certificate; NNI's scalers reject some of their
    # granularities (out_channel on _input_), so they are dropped before registering scalers
    spaces = {module_name: {target_name: space for target_name, space in targets.items()
                            if space.type is TargetType.PARAMETER and space.target is not None}
              for module_name, targets in spaces.items()}
    register_scalers(spaces, lambda space: None)
    out = {}
    for module_name, targets in spaces.items():
        for target_name, space in targets.items():
            if space.quant_dtype is None:
                raise ValueError(f"'{module_name}.{target_name}': quant_dtype is not set")
            weight = space.target.detach()
            if space._scaler is None:
                space.tracked_min, space.tracked_max = weight.amin(), weight.amax()
            else:
                space.tracked_min = space._scaler.shrink(weight, lambda t: t.amin(dim=-1),
                                                         keepdim=True)
                space.tracked_max = space._scaler.shrink(weight, lambda t: t.amax(dim=-1),
                                                         keepdim=True)
            space.scale, space.zero_point = compute_scale_zp(space)
            out[f"{module_name}.{target_name}"] = ClampRound.apply(weight, space)
    return out


def quantization_bound_from_config(model: nn.Module, config_list: list, example_inputs) -> float:
    """Certified path-metric ``||Phi(theta) - Phi(theta_q)||_1`` of an NNI quantization config.

    ``theta_q`` replaces every parameter target of ``config_list`` (``quant_dtype`` int8, int4,
    uint8, ...; ``quant_scheme`` symmetric or affine; ``granularity`` default = per tensor,
    ``out_channel``, or NNI block sizes) by its round-to-nearest quantization with NNI's own
    scale and zero point (:func:`quantized_parameters`), computed before any calibration. Then
    ``||R_theta(x) - R_theta_q(x)||_1 <= max(||x||_inf, 1) * bound`` for every input ``x``.

    The weights alone: the ``_input_`` / ``_output_`` (activation) targets of ``config_list``
    are named in a warning, with a pointer to :func:`deployment_report_from_config`, which
    certifies the deployed model with them.
    """
    activations = _activation_targets(model, config_list)
    if activations:
        warnings.warn(f"quantization_bound_from_config: the activation targets "
                      f"{', '.join(activations[:3])}{', ...' if len(activations) > 3 else ''} "
                      "are not in this weight bound; deployment_report_from_config(model, "
                      "config_list, calibration_inputs, x) certifies them", stacklevel=2)
    replaced = quantized_parameters(model, config_list)
    if not replaced:
        raise ValueError("the config list quantizes no parameter (weight or bias) of the model")
    return pm.path_metric(model, replaced, example_inputs)


def _activation_targets(model: nn.Module, config_list: list) -> list:
    """``'<module>.<target>'`` of the ``_input_`` / ``_output_`` targets of ``config_list``."""
    return [f"{module}.{target}" for module, targets in _spaces(model, config_list).items()
            for target, space in targets.items()
            if space.type in (TargetType.INPUT, TargetType.OUTPUT)]


def _calibrated_points(model: nn.Module, config_list: list, calibration_inputs) -> dict:
    """``{(module, 'input'/'output', index): (scale, zero point, qmin, qmax)}`` of the activation
    targets: NNI's ``compute_scale_zp`` on the min/max the module's input or output reaches on
    ``calibration_inputs`` (per tensor, as NNI's PTQ tracks them)."""
    spaces = _spaces(model, config_list)
    modules = dict(model.named_modules())
    ranges: dict = {}
    handles = []

    def track(key, tensor):
        low, high = tensor.detach().amin(), tensor.detach().amax()
        old = ranges.get(key)
        ranges[key] = (low, high) if old is None else (torch.minimum(old[0], low),
                                                       torch.maximum(old[1], high))
    wanted = {}
    for module_name, targets in spaces.items():
        for target, space in targets.items():
            if space.type not in (TargetType.INPUT, TargetType.OUTPUT):
                continue
            if space.granularity not in (None, "default"):
                raise ValueError(f"'{module_name}.{target}': activation granularity "
                                 f"{space.granularity!r} is not certified (per tensor only)")
            side = "input" if space.type is TargetType.INPUT else "output"
            wanted[(module_name, side, int(target.rsplit("_", 1)[-1]))] = space
    for module_name in {m for m, _, _ in wanted}:
        module = modules[module_name]
        handles.append(module.register_forward_pre_hook(
            lambda _m, args, name=module_name: [track((name, "input", i), a)
                                                for i, a in enumerate(args)] and None))
        handles.append(module.register_forward_hook(
            lambda _m, _a, out, name=module_name: track((name, "output", 0), out) and None))
    try:
        with torch.no_grad():
            model(calibration_inputs)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for key, space in wanted.items():
        space.tracked_min, space.tracked_max = ranges[key]
        scale, zero_point = compute_scale_zp(space)
        out[key] = (float(scale), int(zero_point), int(space.qmin), int(space.qmax))
    return out


def _fake_quantized(tensor, grid):
    scale, zero_point, qmin, qmax = grid
    return torch.fake_quantize_per_tensor_affine(tensor, scale, zero_point, qmin, qmax)


def _with_points(deployed: nn.Module, points: dict) -> nn.Module:
    """``deployed`` (a copy) with a fake-quantization point ``(scale, zero point, qmin, qmax)``
    on each ``(module, 'input'/'output', index)`` of ``points``, as forward (pre-)hooks."""
    modules = dict(deployed.named_modules())
    for module_name in {m for m, _, _ in points}:
        inputs = {i: g for (m, side, i), g in points.items() if m == module_name and side == "input"}
        output = points.get((module_name, "output", 0))
        if inputs:
            modules[module_name].register_forward_pre_hook(
                lambda _m, args, grids=inputs: tuple(
                    _fake_quantized(a, grids[i]) if i in grids else a for i, a in enumerate(args)))
        if output is not None:
            modules[module_name].register_forward_hook(
                lambda _m, _a, out, grid=output: _fake_quantized(out, grid))
    return deployed


def deployment_report_from_config(model: nn.Module, config_list: list, calibration_inputs, x):
    """``pm.deployment_report`` of the model NNI's PTQ quantizer deploys for ``config_list``:
    the parameter targets replaced by :func:`quantized_parameters`, and every ``_input_`` /
    ``_output_`` target a quantization point (NNI's scale and zero point from the min/max over
    ``calibration_inputs``, per tensor). On each sample of ``x``:
    ``max(||x||_inf, 1) d(theta, theta_q) + sum_t sum_v (s_t / 2) G(v)``, ``inf`` where a point
    saturates. The deployed model is a copy; ``model`` is not modified."""
    points = _calibrated_points(model, config_list, calibration_inputs)
    deployed = deepcopy(model)
    with torch.no_grad():
        named = dict(deployed.named_parameters())
        for name, tensor in quantized_parameters(model, config_list).items():
            named[name].copy_(tensor)
    return pm.deployment_report(model, _with_points(deployed, points), x)


#: NNI's apply methods that put an activation on a grid, and whether the grid reads the target
#: space's zero point (LSQ's ``lsq_clamp_round`` rounds ``clamp(z / s, qmin, qmax)``: zero 0)
_GRID_METHODS = {"clamp_round": True, "qat_clamp_round": True, "lsq_clamp_round": False}


def _activation_grid(wrapper, target: str, space) -> tuple:
    """``(scale, zero point, qmin, qmax)`` of an activation target of an NNI wrapper, checked
    against NNI's own quantize-dequantize on values across the grid and beyond its ends; a
    ``ValueError`` naming the wrapper and target when it is not such a grid."""
    where = f"NNI wrapper of '{wrapper.name}', target {target} (apply method " \
            f"{space.apply_method!r})"
    if space.apply_method not in _GRID_METHODS:
        raise ValueError(f"{where}: not a rounding onto a grid the certificate covers (supported: "
                         f"{sorted(_GRID_METHODS)}); DoReFa's activation clamp and BNN's sign "
                         "are not")
    if space.scale.numel() != 1 or space.zero_point.numel() != 1:
        raise ValueError(f"{where}: a scale per channel on an activation is not certified; use "
                         "a per-tensor granularity")
    scale = float(space.scale)
    zero = float(space.zero_point) if _GRID_METHODS[space.apply_method] else 0.0
    if zero != round(zero):
        raise ValueError(f"{where}: its zero point {zero} is not an integer")
    grid = (scale, int(zero), int(space.qmin), int(space.qmax))
    # one value in each step from 4 steps below the grid's lower end to 4 above its upper end,
    # away from the ties that NNI's z / s and fake-quantization's z * (1 / s) may round apart
    steps = torch.arange(grid[3] - grid[2] + 8, dtype=torch.float64)
    offsets = (steps * 0.6180339887 + 0.1) % 1
    offsets = torch.where((offsets - 0.5).abs() < 0.02, 0.25, offsets)
    probe = (scale * (grid[2] - grid[1] + steps - 4 + offsets)).float()
    with torch.no_grad():
        theirs = wrapper._apply_quant_helper(probe, space)
    if not torch.allclose(theirs, _fake_quantized(probe, grid), rtol=0, atol=1e-6 * scale):
        raise ValueError(f"{where}: NNI's quantize-dequantize is not fake-quantization on the "
                         f"grid (scale {scale}, zero point {grid[1]}, [{grid[2]}, {grid[3]}])")
    return grid


def deployment_report_from_wrapped(model: nn.Module, wrapped: nn.Module, x):
    """``pm.deployment_report(model, deployed, x)`` for ``wrapped``, the model an NNI quantizer
    wrapped (``PtqQuantizer`` after ``compress``, ``QATQuantizer``, ``LsqQuantizer``,
    ``DoReFaQuantizer`` ...), with the state its wrappers hold now: the deployed model has
    each wrapper's parameter targets replaced by NNI's own
    quantize-dequantize of them (any apply method: DoReFa's weight transform included) and its
    ``_input_`` / ``_output_`` targets fake-quantization points on their scales and zero points
    (per tensor; each checked against NNI's own quantize-dequantize), the wrappers removed.
    ``model`` is the float model the quantizer wrapped a copy of (the deployed model is ``model``
    with the wrapped model's tensors); neither model is modified."""
    wrappers = {name: module._nni_wrapper for name, module in wrapped.named_modules()
                if isinstance(getattr(module, "_nni_wrapper", None), nn.Module)}
    if not wrappers:
        raise ValueError(f"{type(wrapped).__name__} has no NNI wrapper: pass the model an NNI "
                         "quantizer wrapped, or certify an unwrapped model with pm.output_bound")
    points, params = {}, {}
    for name, wrapper in wrappers.items():
        if wrapper.fused_modules:
            names = {id(m): n for n, m in wrapped.named_modules()}
            fused = [names.get(id(m), type(m).__name__) for m in wrapper.fused_modules[1:]]
            raise ValueError(f"NNI wrapper of '{name}': it is fused with {fused} (QAT "
                             "conv-BatchNorm fusion, 'fuse_names'), which computes the layer's "
                             "weight in every forward: it runs the BatchNorm on the layer's "
                             "output (updating its statistics in training) and folds it into "
                             "the weight before quantizing, so there is no fixed weight to "
                             "certify; quantize without 'fuse_names' (the certificate folds a "
                             "frozen BatchNorm after a layer into it, as the backends do)")
        if wrapper.pruning_target_spaces:
            raise ValueError(f"NNI wrapper of '{name}': pruning masks and quantization in one "
                             "wrapper are not certified; certify the pruned model "
                             "(pm.path_metric) and its quantization apart, or quantize the "
                             "sped-up pruned model")
        for target, space in wrapper.quantization_target_spaces.items():
            if space.scale is None or space.apply_method == "bypass":
                continue
            if space.type is TargetType.PARAMETER:
                with torch.no_grad():
                    params[f"{name}.{target}"] = wrapper._apply_quant_helper(
                        space.target.detach(), space).detach()
            else:
                side = "input" if space.type is TargetType.INPUT else "output"
                points[(name, side, int(target.rsplit("_", 1)[-1]))] = _activation_grid(
                    wrapper, target, space)
    _refuse_non_finite(wrapped, wrappers, params)
    deployed = deepcopy(model)   # (a wrapped model after training holds non-leaf tensors)
    modules = dict(wrapped.named_modules())
    with torch.no_grad():
        for name, tensor in [*deployed.named_parameters(), *deployed.named_buffers()]:
            owner, _, leaf = name.rpartition(".")
            value = params.get(name, getattr(modules.get(owner), leaf, None))
            if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
                raise ValueError(f"'{name}' of the float model is not in the wrapped model: "
                                 "pass the float model that the NNI quantizer wrapped a copy of")
            tensor.copy_(value)
    return pm.deployment_report(model, _with_points(deployed.eval(), points), x)


def _refuse_non_finite(wrapped: nn.Module, wrappers: dict, params: dict):
    """A ``ValueError`` naming the tensors of ``wrapped`` (and the quantized parameters
    ``params``) that hold NaN or infinite values: no certificate covers them."""
    tensors = {**dict(wrapped.named_parameters()), **dict(wrapped.named_buffers()), **params}
    bad = [name for name, t in tensors.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not bad:
        return
    dorefa = any(str(space.apply_method).startswith("dorefa") for w in wrappers.values()
                 for space in w.quantization_target_spaces.values())
    raise ValueError(
        f"the NNI-wrapped model holds NaN or infinite values in {bad[:4]}"
        + (f" and {len(bad) - 4} more" if len(bad) > 4 else "") + ": its quantizer's training "
        "wrote them"
        + (" (NNI 3.0's DoReFaQuantizer divides each sample's output gradient by its largest "
           "magnitude, 0/0 where that gradient is zero, and one optimizer step spreads the NaN "
           "to every parameter)" if dorefa else "")
        + "; no certificate covers them: certify the wrapped model while its tensors are finite "
        "(before such a step, or with a training whose gradients stay finite)")


def quantizer_wrapped(model: nn.Module) -> bool:
    """Whether an NNI quantizer wrapped ``model`` (a wrapper holding quantization targets)."""
    return any(getattr(getattr(module, "_nni_wrapper", None), "quantization_target_spaces", None)
               for module in model.modules())


# pm.output_bound(model, wrapped, x) and pm.deployment_report certify NNI's wrapped models
deployed.register_wrapped(quantizer_wrapped, deployment_report_from_wrapped)
