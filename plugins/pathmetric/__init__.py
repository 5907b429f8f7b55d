"""pathmetric: path-metrics of ReLU networks for pruning and quantization (see DESIGN.md)."""
from .capture import check_support
from .errors import ModelCaptureError, SupportReport, UnsupportedModelError
from .norms import log_path_norm, path_norm

__all__ = ["path_norm", "log_path_norm", "check_support", "UnsupportedModelError",
           "ModelCaptureError", "SupportReport"]
