"""pathmetric: path-metrics of ReLU networks for pruning and quantization (see docs/design.md)."""
from .calibration import Calibration, Estimate, adversarial_gap, calibrate, estimate
from .core.ir import Layer
from .core.support import check_support, output_head
from .deployed import DeploymentReport, deployment_report, downstream_masses
from .errors import ModelCaptureError, SupportReport, UnsupportedModelError
from .metric import (
                     head_factor,
                     head_output_bound,
                     log_output_bound,
                     log_path_metric,
                     log_quantization_bound,
                     output_bound,
                     path_metric,
                     path_metric_with_log,
                     quantization_bound,
)
from .norms import log_path_norm, path_norm
from .prune import PruneResult, protect_top, prune
from .quantize import ActivationGrid, activation_grid, observer_ranges, quantize_weights, quantizer
from .rescale import random_rescale
from .scores import (
                     Member,
                     PathMasses,
                     channel_scores,
                     group_mass,
                     layer_input_shapes,
                     prunable_layers,
                     weight_scores,
                     zeroed_members,
)
from .sensitivity import Plan, Sensitivity, certify_plan, layer_sensitivity, mixed_precision_plan

__all__ = [
    # path-norms and support
    "path_norm", "log_path_norm", "check_support", "SupportReport", "UnsupportedModelError",
    "ModelCaptureError", "Layer", "output_head",
    # certificates
    "path_metric", "log_path_metric", "path_metric_with_log", "output_bound", "log_output_bound",
    "quantization_bound", "log_quantization_bound", "head_factor", "head_output_bound",
    # deployed (integer) models: weights and activations
    "deployment_report", "DeploymentReport", "downstream_masses",
    # quantizers, scores, sensitivity, pruning, rescaling
    "quantize_weights", "quantizer", "weight_scores", "channel_scores", "group_mass",
    "zeroed_members", "Member", "PathMasses", "prunable_layers", "layer_input_shapes",
    "layer_sensitivity", "Sensitivity", "mixed_precision_plan", "Plan", "prune", "PruneResult",
    "protect_top", "random_rescale",
    "certify_plan", "activation_grid", "ActivationGrid", "observer_ranges",   # W/A plans
    # calibrated estimates (not bounds)
    "calibrate", "estimate", "Calibration", "Estimate", "adversarial_gap",
]
