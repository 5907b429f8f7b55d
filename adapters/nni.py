"""NNI 3.0 adapter: a path-metric pruner, pruners chosen from a config file, quantization bounds.

The parts live in their own modules, and every public name is importable from here:
:mod:`.nni_compat` (the tracer patches), :mod:`.nni_pruner` (:class:`PathMetricPruner`),
:mod:`.nni_config` (config files, :func:`prune_from_config`), :mod:`.nni_quantization` (the
quantization bound and the deployed model's certificate).

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
  ``config_list`` before any calibration, :func:`deployment_report_from_config` the deployed
  model with its activation targets too, :func:`deployment_report_from_wrapped` the model an NNI
  quantizer wrapped, from its wrappers' scales.
- :func:`apply_compat_patches` (applied on import) / :func:`revert_compat_patches` /
  :func:`compat_patches` fix NNI 3.0's tracer (used by ``ModelSpeedup`` and dependency
  detection) for recent torch.

See docs/nni.md.
"""
from __future__ import annotations

from .nni_compat import apply_compat_patches, compat_patches, revert_compat_patches
from .nni_config import (
                         CONFIG_KEYS,
                         PRUNERS,
                         NNIPruneResult,
                         SpeedupError,
                         load_config,
                         prune_from_config,
                         pruner_from_config,
                         removed_channels,
)
from .nni_pruner import PathMetricPruner
from .nni_quantization import (
                         deployment_report_from_config,
                         deployment_report_from_wrapped,
                         quantization_bound_from_config,
                         quantized_parameters,
)

__all__ = ["PathMetricPruner", "PRUNERS", "CONFIG_KEYS", "load_config", "pruner_from_config",
           "prune_from_config", "NNIPruneResult", "SpeedupError", "removed_channels",
           "quantized_parameters", "quantization_bound_from_config",
           "deployment_report_from_config", "deployment_report_from_wrapped",
           "apply_compat_patches", "revert_compat_patches", "compat_patches"]
