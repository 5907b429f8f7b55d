"""NNI 3.0 adapter: a path-metric pruner, pruners chosen from a config file, a quantization bound.

The parts live in their own modules, and every public name is importable from here:
:mod:`.nni_compat` (the tracer patches), :mod:`.nni_pruner` (:class:`PathMetricPruner`),
:mod:`.nni_config` (config files, :func:`prune_from_config`); the quantization bound is below.

**Importing this module patches NNI 3.0's tracer for recent torch** (:func:`apply_compat_patches`:
three fixes, idempotent; :func:`revert_compat_patches` undoes them exactly), so that
``ModelSpeedup`` and NNI's dependency detection work right after ``PathMetricPruner`` as in NNI's
own tutorials, with no call from the user.

- :class:`PathMetricPruner` is an NNI ``Pruner``: NNI parses the ``config_list``, builds the target
  spaces and turns metrics into masks (ratio, threshold, global and dependency groups, bias
  alignment); only the metrics come from the engine, as shares of the L1 path-norm ``N``, so they
  are comparable across layers and invariant under neuron-wise rescaling.
- :func:`pruner_from_config` / :func:`prune_from_config` select a pruner by name from a YAML/JSON
  file or a dict (``pruner: path_metric``, ``config_list``, ``speedup: true``); the CLI's
  ``pathmetric nni prune`` calls :func:`prune_from_config`.
- :func:`quantization_bound_from_config` certifies the weight quantization of an NNI quantization
  ``config_list`` before any calibration.
- :func:`apply_compat_patches` (applied on import) / :func:`revert_compat_patches` /
  :func:`compat_patches` fix NNI 3.0's tracer (used by ``ModelSpeedup`` and dependency
  detection) for recent torch.

See docs/nni.md.
"""
from __future__ import annotations

from copy import deepcopy

from nni.compression.base.apply_method import ClampRound
from nni.compression.base.compressor import register_scalers
from nni.compression.base.config import trans_legacy_config_list
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import register_wrappers
from nni.compression.quantization.ptq_quantizer import compute_scale_zp
from torch import nn

import pathmetric as pm

from .nni_compat import apply_compat_patches, compat_patches, revert_compat_patches
from .nni_config import (CONFIG_KEYS, PRUNERS, NNIPruneResult, SpeedupError, load_config,
                         prune_from_config, pruner_from_config, removed_channels)
from .nni_pruner import PathMetricPruner

__all__ = ["PathMetricPruner", "PRUNERS", "CONFIG_KEYS", "load_config", "pruner_from_config",
           "prune_from_config", "NNIPruneResult", "SpeedupError", "removed_channels",
           "quantized_parameters", "quantization_bound_from_config",
           "apply_compat_patches", "revert_compat_patches", "compat_patches"]


# --------------------------------------------------------------------------- quantization

def quantized_parameters(model: nn.Module, config_list: list) -> dict:
    """``{parameter name: weight as NNI would quantize it}`` for an NNI quantization config.

    NNI's own machinery does it: its config parsing and target settings, its granularity
    scalers, ``compute_scale_zp`` on the exact min/max of the weight (no calibration is needed
    for weights) and its ``ClampRound``. Only parameter targets (``weight``, ``bias``) count;
    ``_input_`` / ``_output_`` (activation) targets are ignored. ``model`` is not modified.
    """
    _, spaces = register_wrappers(model, trans_legacy_config_list(deepcopy(config_list)),
                                  "quantization")
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

    Activation quantization (``_input_`` / ``_output_`` targets) is **not** covered: the bound
    is that of quantizing the weights (and biases, when targeted) alone.
    """
    replaced = quantized_parameters(model, config_list)
    if not replaced:
        raise ValueError("the config list quantizes no parameter (weight or bias) of the model")
    return pm.path_metric(model, replaced, example_inputs)
