"""The quantization snippet of docs/nni.md: certify an NNI quantization config list's weights.

The config list is NNI's usual one, activation targets (``_input_``) included: they are outside
the certificate and are ignored. Run: ``python examples/nni_quantization_bound.py``.
"""
import torch
import torchvision

from pathmetric.adapters.nni import quantization_bound_from_config

model = torchvision.models.resnet18(weights=None).eval()
config_list = [{"op_types": ["Conv2d", "Linear"], "target_names": ["_input_", "weight"],
                "quant_dtype": "int8", "quant_scheme": "symmetric", "granularity": "out_channel"}]
bound = quantization_bound_from_config(model, config_list, torch.zeros(1, 3, 64, 64))
print(f"certified: ||R(x) - R_int8(x)||_1 <= max(||x||_inf, 1) * {bound:.4e}")
