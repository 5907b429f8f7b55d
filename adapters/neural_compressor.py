"""Intel Neural Compressor 3.x (``neural-compressor-pt``) adapter.

Three bridges between INC's tuning loop and the path-metric engine:

* ``simulate_weights(model, config)`` returns, without touching ``model``, the weights INC will
  deploy for an ``RTNConfig``, ``INT8StaticQuantConfig`` or ``DynamicQuantConfig`` (per-layer
  ``set_local`` overrides and fp32 fallbacks included), computed by INC's own quantization routines;
  ``quantization_bound(model, example_inputs, config)`` is the certified bound
  ``d(theta, theta') = ||Phi(theta) - Phi(theta')||_1 >= sup_x ||R_theta(x) - R_theta'(x)||_1 / max(||x||_inf, 1)``
  between the float model and those weights (``pm.path_metric``).
* ``path_metric_sampler(model, example_inputs)`` is a sampler for ``TuningConfig(sampler=...)`` that
  walks a config set by increasing certified bound (static int8 configs by the full certificate
  of the model INC deploys, weights and activations: ``static_deployment_report``);
  ``path_metric_config_set`` builds a layer-wise fallback sequence from ``pm.layer_sensitivity``.
* ``PathMetricConfig`` is registered with INC (``register_config`` / ``register_algo`` under the name
  ``"path_metric"``), so ``quantize`` and ``autotune`` prune by path magnitude (``pm.prune``);
  ``PathMetricConfig(...) + RTNConfig(...)`` prunes then quantizes, as one config, with the
  certificate of the combined change.

The bound covers the weights (the fp16-stored biases of RTN layers, the fp16/bf16 casts of
layers a static config runs in half precision, read off the converted model, BatchNorm folded as
PT2E folds it for static configs); the deployed model's activation quantization, and the casts
and arithmetic of its half-precision layers, are certified by ``pm.deployment_report`` on the
converted model (docs/deployed.md).
"""
import copy
import dataclasses
import math
import re
import warnings
from collections import OrderedDict
from types import SimpleNamespace

import torch
from neural_compressor.common.base_config import ComposableConfig, register_config
from neural_compressor.common.base_tuning import Sampler
from neural_compressor.common.utils import DEFAULT_WHITE_LIST, RTN, Mode
from neural_compressor.torch.algorithms.pt2e_quant.utility import create_quant_spec_from_config
from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor, search_clip
from neural_compressor.torch.quantization import (
    DynamicQuantConfig,
    INT8StaticQuantConfig,
    RTNConfig,
    StaticQuantConfig,
)
from neural_compressor.torch.quantization.config import (
    FRAMEWORK_NAME,
    OperatorConfig,
    TorchBaseConfig,
)
from neural_compressor.torch.utils import algos_mapping, register_algo
from torch import nn

import pathmetric as pm

__all__ = ["simulate_weights", "quantization_bound", "quantization_bound_with_log", "storage_bits",
           "path_metric_sampler", "static_deployed", "static_deployment_report",
           "path_metric_config_set", "PathMetricConfig", "PrunedThenQuantizedConfig", "PATH_METRIC"]

PATH_METRIC = "path_metric"
_FLOAT_DTYPES = ("fp32", "fp16", "bf16")
_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Modules whose weights X86InductorQuantizer (INC's PT2E backend) quantizes.
_PT2E_WEIGHT_MODULES = (nn.Conv2d, nn.Linear)
# Static configs the sampler deploys with INC and ranks by the full (weight + activation) bound.
_STATIC = (INT8StaticQuantConfig, StaticQuantConfig)


# ----------------------------------------------------------------------------------------------
# What INC will deploy
# ----------------------------------------------------------------------------------------------
def simulate_weights(model, config):
    """The parameters INC changes when it quantizes ``model`` with ``config``: ``{name: tensor}``.

    Supported: ``RTNConfig`` with integer dtypes (``dtype="int"`` or ``"intN"``, any ``bits``,
    ``group_size`` (``-1`` = per output channel), ``use_sym``, ``use_full_range``,
    ``use_mse_search``, double quantization), ``group_dim=1``; ``INT8StaticQuantConfig`` and
    ``DynamicQuantConfig`` (PT2E path, weight side). ``set_local`` overrides and fp32 fallbacks are
    resolved the way INC resolves them. ``model`` is the float eager model; it is not modified.
    Parameters INC leaves in fp32 are absent from the result.
    """
    if isinstance(config, RTNConfig):
        return _rtn_weights(model, config)
    if isinstance(config, (INT8StaticQuantConfig, DynamicQuantConfig)):
        return _pt2e_weights(model, config)
    raise TypeError(f"simulate_weights: {type(config).__name__} is not supported; use RTNConfig, "
                    "INT8StaticQuantConfig or DynamicQuantConfig")


def quantization_bound(model, example_inputs, config):
    """Certified ``||Phi(theta) - Phi(theta')||_1`` with ``theta'`` = ``simulate_weights(model, config)``;
    for a ``PathMetricConfig``, ``theta'`` is the pruned model (``pm.prune(...).certified_bound``);
    for a ``PrunedThenQuantizedConfig``, the pruned model's weights quantized by its RTN config;
    for a static config with layers in fp16/bf16 (or a ``StaticQuantConfig``), the weights of the
    model INC converts (``static_deployment_report(...).weight_term``, ``example_inputs`` the
    calibration batch: the weights do not depend on it)."""
    return quantization_bound_with_log(model, example_inputs, config)[0]


def quantization_bound_with_log(model, example_inputs, config):
    """``(quantization_bound, its natural log)`` from one lifted pass; the log stays finite where
    the float bound overflows (``pm.path_metric_with_log``)."""
    _check_eager(model)
    if isinstance(config, PathMetricConfig):
        result = _prune(model, config, example_inputs, inplace=False)
        return result.certified_bound, result.log_certified_bound
    if isinstance(config, PrunedThenQuantizedConfig):
        prune, quant = config.config_list
        pruned = _prune(model, prune, example_inputs, inplace=False).model
        return _combined_bound(model, pruned, simulate_weights(pruned, quant), example_inputs)
    if isinstance(config, _STATIC) and (_half_layers(model, config)
                                        or not isinstance(config, INT8StaticQuantConfig)):
        report = static_deployment_report(model, config, example_inputs)
        return report.weight_term, report.log_weight_term
    if isinstance(config, INT8StaticQuantConfig):
        model = _batch_norm_folded(model, example_inputs)
    return pm.path_metric_with_log(model, simulate_weights(model, config), example_inputs)


def _batch_norm_folded(model, example_inputs):
    """``model``, or a copy of it with every frozen BatchNorm that directly follows a conv or
    linear layer folded into that layer (``W s``, ``b s + t``) and replaced by ``nn.Identity``,
    as PT2E's ``prepare`` folds it before quantizing the weight: the same function, with the
    parameters the backend quantizes. The weight side of the deployed model; the activations
    need the converted model (``pm.deployment_report``)."""
    pairs = pm.PathMasses(model, example_inputs).batch_norm_after
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for layer, norm in pairs.items():
        module, bn = folded.get_submodule(layer), folded.get_submodule(norm)
        fuse = (torch.nn.utils.fusion.fuse_linear_bn_weights if isinstance(module, nn.Linear)
                else torch.nn.utils.fusion.fuse_conv_bn_weights)
        weight, bias = fuse(module.weight, module.bias, bn.running_mean, bn.running_var,
                            bn.eps, bn.weight, bn.bias)
        module.weight, module.bias = weight, bias
        parent, _, name = norm.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, name, nn.Identity())
    return folded


def _combined_bound(model, pruned, quantized, example_inputs):
    """``pm.path_metric_with_log(model, theta')`` with ``theta'`` = ``pruned``'s parameters,
    ``quantized``'s replacing those it names: the certificate of pruning then quantizing."""
    replaced = {name: p.detach() for name, p in pruned.named_parameters()}
    replaced.update(quantized)
    return pm.path_metric_with_log(model, replaced, example_inputs)


def storage_bits(model, config):
    """Bits per conv/linear weight of ``model`` once ``config`` is applied (lower = smaller model).

    RTN layers: ``b`` bits per weight plus, per group, an fp16 scale and (asymmetric) a ``b``-bit
    zero point; PT2E int8 layers: 8 bits plus a float32 scale per output channel (per tensor:
    one); layers a config leaves in float: 32. ``PathMetricConfig``: 32 bits per weight left
    non-zero (sparse storage, indices not counted); combined with RTN: the RTN bits of the
    weights left. ``None`` for configs the adapter cannot simulate.
    """
    if isinstance(config, PathMetricConfig):
        return 32.0 * (1.0 - config.sparsity)
    if isinstance(config, PrunedThenQuantizedConfig):
        prune, quant = config.config_list
        return (1.0 - prune.sparsity) * storage_bits(model, quant)
    if not isinstance(config, (RTNConfig, INT8StaticQuantConfig, DynamicQuantConfig)):
        return None
    if isinstance(config, RTNConfig):
        mapping = copy.deepcopy(config).to_config_mapping(model_info=config.get_model_info(model))
        local = {name: c for (name, _), c in mapping.items() if c.name == RTN}
    else:
        local = _pt2e_layer_configs(model, config)
    total = bits = 0
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        rows, count = m.weight.shape[0], m.weight.numel()
        total += count
        c = local.get(name)
        if c is None or (isinstance(c, RTNConfig) and c.dtype == "fp32"):
            bits += 32 * count
        elif isinstance(c, RTNConfig):
            b = _dtype_bits(c)
            groups = 1 if c.group_size == -1 else -(-(count // rows) // c.group_size)
            bits += count * b + rows * groups * (16 + (0 if c.use_sym else b))
        elif c.w_dtype in _HALF:   # PT2E layer cast to fp16/bf16
            bits += 16 * count
        else:   # PT2E int8
            per_channel = "channel" in str(getattr(config, "w_granularity", ""))
            bits += 8 * count + 32 * (rows if per_channel else 1)
    return bits / total


def _dtype_bits(c):
    """Bits per weight of an RTN layer config: ``bits`` for ``dtype="int"``, else the width its
    dtype names (``"int4"``, ``"nf4"``, ``"fp4"``: 4)."""
    width = re.search(r"\d+$", c.dtype)
    return c.bits if c.dtype == "int" or width is None else int(width.group())


def _rtn_weights(model, config):
    """RTN exactly as ``RTNQuantizer.convert`` + ``INCWeightOnlyLinear.pack/recover``.

    INC computes integers ``q``, scales ``s`` (and zero-points ``z``) with ``quant_tensor`` in the
    weight's dtype, stores ``s`` and the bias in float16 (``use_optimum_format``), and recovers
    ``W = int8(q - z) * fp16(s)`` in float16, cast to float32 at inference on CPU.
    """
    config = copy.deepcopy(config)  # to_config_mapping adds the lm_head fallback to the config
    return _rtn_mapping_weights(model, config.to_config_mapping(model_info=config.get_model_info(model)))


def _rtn_mapping_weights(model, mapping):
    """:func:`_rtn_weights` for INC's per-op mapping ``{(name, type): RTNConfig}``."""
    modules = dict(model.named_modules())
    out = {}
    for (name, _), c in mapping.items():
        if c.name != RTN or c.dtype == "fp32":
            continue
        m = modules[name]
        if not re.fullmatch(r"int\d*", c.dtype):
            raise ValueError(f"simulate_weights: RTN dtype {c.dtype!r} of {name!r} is not supported "
                             "(integer dtypes only: 'int', 'int4', 'int8', ...)")
        if c.group_dim != 1 or type(m) is not nn.Linear:
            raise ValueError(f"simulate_weights: {name!r} ({type(m).__name__}, group_dim={c.group_dim}) "
                             "is not supported; RTN is simulated for nn.Linear with group_dim=1")
        bits = c.bits if c.dtype == "int" else int(c.dtype[3:])
        scheme = "sym" if c.use_sym else "asym"
        quantile = (search_clip(SimpleNamespace(weight=m.weight.detach().clone()), bits, c.group_size,
                                scheme, "int", c.use_full_range) if c.use_mse_search else 1.0)
        q, scale, zp = quant_tensor(
            m.weight.detach().clone(), dtype="int", bits=bits, group_size=c.group_size, scheme=scheme,
            quantile=quantile, return_int=True, full_range=c.use_full_range,
            double_quant=c.use_double_quant, double_quant_dtype=c.double_quant_dtype,
            double_quant_bits=c.double_quant_bits,
            double_quant_scheme="sym" if c.double_quant_use_sym else "asym",
            double_quant_group_size=c.double_quant_group_size)
        group = torch.arange(m.in_features) // (m.in_features if c.group_size == -1 else c.group_size)
        ints = q.to(torch.int32) if zp is None else q.to(torch.int32) - zp.to(torch.int32)[:, group]
        out[f"{name}.weight"] = (ints.to(torch.int8) * scale.to(torch.float16)[:, group]).float()
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias.detach().to(torch.float16).float()
    return out


def _pt2e_weights(model, config):
    """Weights of PT2E static/dynamic int8 as ``prepare`` + ``convert`` produce them.

    Per conv2d/linear module, the effective INC config (:func:`_pt2e_layer_configs`); the weight
    goes through the observer INC builds (``create_quant_spec_from_config``), then
    ``quantized_decomposed.quantize_*`` / ``dequantize_*`` with the observer's qparams.
    """
    if half := _half_layers(model, config):
        raise ValueError(f"simulate_weights: {half} run in fp16/bf16, as INC's half-precision "
                         "rewriter matches them (INC 3.10 runs its bf16 layers in float16 and "
                         "leaves in float32 the conv2d calls it does not match, such as padded "
                         "ones), which a simulation cannot tell: quantization_bound reads the "
                         "weights off the converted model for static configs "
                         "(static_deployment_report); for others certify the converted model "
                         "with pm.deployment_report")
    if isinstance(config, INT8StaticQuantConfig) and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("simulate_weights: PT2E static quantization folds BatchNorm into the preceding "
                         "conv before quantizing its weight, which a per-parameter dict cannot express; "
                         "quantization_bound folds it as PT2E does (or fold it first: "
                         "torch.nn.utils.fusion.fuse_conv_bn_eval) and pass that model")
    modules = dict(model.named_modules())
    return {f"{name}.weight": _observe_quantize_dequantize(modules[name].weight.detach(), c)
            for name, c in _pt2e_layer_configs(model, config).items()}


def _half_layers(model, config):
    """The conv2d/linear modules ``config`` sets to fp16/bf16 weights, sorted."""
    return sorted(name for name, c in _pt2e_layer_configs(model, config).items()
                  if c.w_dtype in _HALF)


def _pt2e_layer_configs(model, config):
    """``{module name: its INC config}`` of the conv2d/linear modules PT2E quantizes: resolved
    like X86InductorQuantizer, module-name override (the module or an ancestor), then module-type
    override, then global; a config with fp32 weights and float activations leaves the module in
    fp32 (absent here); fp16/bf16 weights are a change (a cast), present."""
    by_type, by_name = config._get_op_name_op_type_config()
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, _PT2E_WEIGHT_MODULES):
            continue
        owners = [n for n in by_name if n == name or name.startswith(n + ".")]
        c = by_name[owners[0]] if owners else by_type.get(type(m).__name__, config)
        if not (c.w_dtype == "fp32" and c.act_dtype in _FLOAT_DTYPES):
            out[name] = c
    return out


def _check_eager(model):
    if getattr(model, "_exported", False):
        raise TypeError("pass the eager model, not the one from neural_compressor.torch.export.export: "
                        "the engine captures eager modules, and the exported graph keeps the same "
                        "parameter names, so bounds computed on the eager model apply to it")


def _observe_quantize_dequantize(w, c):
    spec = create_quant_spec_from_config(c.w_dtype, c.w_sym, c.w_granularity, c.w_algo)
    kwargs = dataclasses.asdict(spec)
    observer_ctr = kwargs.pop("observer_or_fake_quant_ctr")
    if "PerChannel" not in observer_ctr.__name__:  # as torchao's prepare_pt2e builds it
        kwargs.pop("ch_axis")
    observer = observer_ctr.with_args(**kwargs)()
    observer(w)
    scale, zero_point = observer.calculate_qparams()
    ops = torch.ops.quantized_decomposed
    args = (spec.quant_min, spec.quant_max, spec.dtype)
    if "ch_axis" in kwargs:
        q = ops.quantize_per_channel.default(w, scale, zero_point, spec.ch_axis, *args)
        return ops.dequantize_per_channel.default(q, scale, zero_point, spec.ch_axis, *args)
    scale, zero_point = float(scale), int(zero_point)
    q = ops.quantize_per_tensor.default(w, scale, zero_point, *args)
    return ops.dequantize_per_tensor.default(q, scale, zero_point, *args)


# ----------------------------------------------------------------------------------------------
# Tuning: sampler and fallback sequence
# ----------------------------------------------------------------------------------------------
SAMPLER_ORDERS = ("bound", "size", "bound_per_saved_bit")


def _certified(config):
    """Whether the adapter simulates ``config`` exactly (RTN: integer or fp32 dtypes only, in the
    global config and every ``set_local`` one; nf4/fp4 RTN is not certified)."""
    if isinstance(config, RTNConfig):
        local = getattr(config, "local_config", {}) or {}
        return all(re.fullmatch(r"int\d*|fp32", c.dtype) for c in [config, *local.values()]
                   if isinstance(c, RTNConfig))
    return isinstance(config, (INT8StaticQuantConfig, DynamicQuantConfig,
                               PathMetricConfig, PrunedThenQuantizedConfig))


def static_deployed(model, config, calibration):
    """The model INC deploys for the static config ``config``: ``model`` (a copy) exported with
    ``neural_compressor.torch.export.export`` (batch dimension dynamic), ``prepare``-d, run on the
    ``calibration`` batch (its observers set every activation grid) and ``convert``-ed."""
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import convert, prepare

    inputs = calibration if isinstance(calibration, tuple) else (calibration,)
    batch = torch.export.Dim("batch")
    exported = export(copy.deepcopy(model), inputs,
                      dynamic_shapes=tuple({0: batch} for _ in inputs))
    prepared = prepare(exported, copy.deepcopy(config))
    with torch.no_grad():
        prepared(*inputs)
    return convert(prepared)


def static_deployment_report(model, config, calibration):
    """``pm.deployment_report(model, static_deployed(model, config, calibration), calibration)``:
    the certificate of the int8 model INC deploys (weights and activations, BatchNorm folded as
    INC folds it; ``inf`` on a calibration sample that saturates a point)."""
    _check_eager(model)
    if not isinstance(config, _STATIC):
        raise TypeError(f"static_deployment_report: {type(config).__name__} is not a static "
                        "config; use StaticQuantConfig / INT8StaticQuantConfig")
    return pm.deployment_report(model, static_deployed(model, config, calibration), calibration)


def _static_bound_with_log(report, calibration):
    """``(max(s, 1) * weight_term + activation_term + rounding, its log)`` of a static report,
    ``s`` the largest sup-norm of the calibration batch: the certified bound at the batch's
    largest input, for every input of that sup-norm that saturates no point (rounded up).
    ``rounding`` is the largest rounding term of the half-precision layers over the certified
    calibration samples (0 without such layers): the rounding depends on the values, so with it
    the bound is certified on the calibration batch."""
    inputs = calibration if isinstance(calibration, tuple) else (calibration,)
    sup = max(1.0, max(float(t.detach().abs().amax()) for t in inputs))
    certified = report.rounding_term[~report.saturated]
    rounding = float((certified if certified.numel() else report.rounding_term).max())
    weight = math.nextafter(sup * report.weight_term, math.inf)
    bound = math.nextafter(weight + report.activation_term, math.inf)
    parts = [math.log(sup) + report.log_weight_term, report.log_activation_term]
    if rounding > 0:
        bound = math.nextafter(bound + rounding, math.inf)
        parts.append(math.log(rounding))
    log_bound = float(torch.logsumexp(torch.tensor(parts, dtype=torch.float64), dim=0))
    return bound, math.nextafter(log_bound + 1e-12 * abs(log_bound), math.inf)


def path_metric_sampler(model, example_inputs, order="bound", max_bound=None, calibration=None):
    """A sampler class for ``TuningConfig(config_set=[...], sampler=...)``.

    INC builds it as ``sampler(config_set)``; it computes ``quantization_bound`` of every config
    it can certify (``.bounds``, in config-set order, ``None`` for the others; ``.log_bounds``
    their natural logs, which the orders compare so they stay right past float64) and
    ``storage_bits`` (``.bits``), and yields indices in the chosen ``order`` (ties keep the
    config-set order).

    A static int8 config (``StaticQuantConfig`` / ``INT8StaticQuantConfig``: W8A8 per tensor /
    per channel, layer fallbacks) is ranked by the full certificate of the model INC deploys: it is exported,
    prepared, calibrated on ``calibration`` (default ``example_inputs``, whose values then
    matter) and converted, and its bound is ``max(s, 1) * weight_term + activation_term`` of
    ``pm.deployment_report`` (``s`` the batch's largest sup-norm): ``.reports[i]`` holds the
    report (``None`` for other configs), whose ``saturated_count`` says how many calibration
    samples saturate a point (not certified there). The orders:

    - ``"bound"``: increasing certified bound, so the trial most likely to meet
      ``tolerable_loss`` runs first; on a grid of unequal cost this is the mildest config (the
      least compression). Put candidates of comparable cost in one set.
    - ``"size"``: the configs whose bound is at most ``max_bound`` (required), smallest model
      first, then the others by increasing bound: the smallest model the certificate trusts
      runs first.
    - ``"bound_per_saved_bit"``: increasing ``bound / (32 - bits)``, the certified error per bit
      saved per weight (configs that save nothing last).

    A static config with layers in fp16/bf16 is ranked the same way: the certificate of its
    converted model covers the casts of those layers' weights (the weight term), of their
    inputs and the rounding of the layers computing in half precision
    (``report.rounding_term``, per sample; its largest value over the batch is added).

    Configs without a certificate (AutoRound, GPTQ, AWQ, HQQ, ...) are tried after the
    certified ones, in config-set (INC's) order, with one warning naming them.
    """
    _check_eager(model)
    if order not in SAMPLER_ORDERS:
        raise ValueError(f"order must be one of {SAMPLER_ORDERS}, got {order!r}")
    if order == "size" and max_bound is None:
        raise ValueError("order='size' needs max_bound: the largest certified bound to trust")

    def key(bound, log_bound, bits):   # by log bounds: right where float bounds overflow to inf
        if order == "bound":
            return (log_bound,)
        if order == "size":   # a float bound of inf is past any max_bound
            return (0, bits, log_bound) if bound <= max_bound else (1, log_bound, bits)
        return (log_bound - math.log(32.0 - bits) if bits < 32.0 else math.inf, log_bound)

    data = example_inputs if calibration is None else calibration

    def certificate(c):
        """``((bound, log bound) or (None, None), report or None)``."""
        if isinstance(c, _STATIC):
            report = static_deployment_report(model, c, data)
            return _static_bound_with_log(report, data), report
        return (quantization_bound_with_log(model, example_inputs, c) if _certified(c)
                else (None, None)), None

    class PathMetricSampler(Sampler):
        def __init__(self, config_source):
            configs = [config_source[i] for i in range(len(config_source))]
            results = [certificate(c) for c in configs]
            pairs = [pair for pair, _ in results]
            self.reports = [report for _, report in results]
            self.bounds = [bound for bound, _ in pairs]
            self.log_bounds = [log_bound for _, log_bound in pairs]
            self.bits = [storage_bits(model, c) for c in configs]
            certified = [i for i, b in enumerate(self.bounds) if b is not None]
            others = [i for i, b in enumerate(self.bounds) if b is None]
            if others:
                warnings.warn("path_metric_sampler: no certificate for " + ", ".join(
                    f"#{i} {type(configs[i]).__name__}" for i in others) + "; they are tried "
                    "after the certified configs, in the config set's order", stacklevel=2)
            self.order = sorted(certified, key=lambda i: key(self.bounds[i], self.log_bounds[i],
                                                         self.bits[i])) \
                + others

        def __iter__(self):
            return iter(self.order)

        def __len__(self):
            return len(self.order)

    return PathMetricSampler


def path_metric_config_set(model, example_inputs, base_config, fallback=None, max_fallbacks=None):
    """Layer-wise fallback sequence ``[base, base + top-1 layer kept, base + top-2 kept, ...]``.

    Layers are the ones ``base_config`` quantizes, ranked by ``pm.layer_sensitivity`` (certified
    path-metric of quantizing that layer alone with the engine's round-to-nearest quantizer at the
    global bit-width, scheme and grouping of ``base_config``), most sensitive first; the k-th
    config sets the top-k layers to ``fallback`` (default: fp32), k = 0 .. ``max_fallbacks``
    (default: all). With INC's default sequential sampler, ``autotune`` stops at the first config
    of the sequence (fewest fallbacks) that meets ``tolerable_loss``.
    """
    _check_eager(model)
    quantized = sorted({name.rsplit(".", 1)[0] for name in simulate_weights(model, base_config)})
    engine_args = _engine_quantizer(base_config)
    sens = pm.layer_sensitivity(model, example_inputs, bits=(engine_args["bits"],), layers=quantized,
                                **{k: v for k, v in engine_args.items() if k != "bits"})
    ranked = sorted(quantized, key=lambda n: -sens[(n, engine_args["bits"])])
    fallback = fallback if fallback is not None else _fp32_config(base_config)
    steps = len(ranked) if max_fallbacks is None else min(max_fallbacks, len(ranked))
    configs = []
    for k in range(steps + 1):
        config = copy.deepcopy(base_config)
        for name in ranked[:k]:
            # RTN matches local names with re.match (a prefix); PT2E with exact module names.
            config.set_local(re.escape(name) + "$" if isinstance(config, RTNConfig) else name,
                             copy.deepcopy(fallback))
        configs.append(config)
    return configs


def _engine_quantizer(config):
    """The engine's round-to-nearest settings closest to ``config`` (global part)."""
    if isinstance(config, RTNConfig):
        bits = config.bits if config.dtype == "int" else int(config.dtype[3:])
        grouped = config.group_size != -1
        return dict(bits=bits, scheme="symmetric" if config.use_sym else "asymmetric",
                    granularity="per_group" if grouped else "per_channel",
                    group_size=config.group_size if grouped else None)
    return dict(bits=8, scheme="symmetric" if config.w_sym else "asymmetric",
                granularity=config.w_granularity, group_size=None)


def _fp32_config(config):
    if isinstance(config, RTNConfig):
        return RTNConfig(dtype="fp32")
    return type(config)(w_dtype="fp32", act_dtype="fp32")


# ----------------------------------------------------------------------------------------------
# path_metric: pruning inside INC's quantize / autotune
# ----------------------------------------------------------------------------------------------
@register_config(framework_name=FRAMEWORK_NAME, algo_name=PATH_METRIC)
class PathMetricConfig(TorchBaseConfig):
    """Path-magnitude pruning (``pm.prune``) as an INC algorithm.

    ``quantize(model, PathMetricConfig(sparsity=0.5), example_inputs=x)`` zeroes the weights (or
    channels, ``structured=True``) carrying the least path mass; a list of sparsities expands into
    one trial each under ``autotune``. The pruned model carries ``path_metric_bound`` (certified
    ``||Phi(theta) - Phi(theta_pruned)||_1``), ``path_metric_log_bound`` (its natural log),
    ``path_metric_head`` (the softmax head set aside, or None) and ``path_metric_masks``.
    """

    name = PATH_METRIC
    supported_configs = []

    def __init__(self, sparsity: float = 0.5, structured: bool = False, scope: str = "global",
                 max_layer_sparsity: float = 0.95, rounds: int = 1, white_list=DEFAULT_WHITE_LIST, **kwargs):
        # the annotations tell INC's ``expand`` which lists are tuning options
        super().__init__(white_list=white_list)
        self.sparsity = sparsity
        self.structured = structured
        self.scope = scope
        self.max_layer_sparsity = max_layer_sparsity
        self.rounds = rounds
        self._post_init()

    @classmethod
    def register_supported_configs(cls):
        cls.supported_configs = [OperatorConfig(config=cls(), operators=[nn.Linear, nn.Conv2d])]

    @staticmethod
    def get_model_info(model):
        return None

    def to_config_mapping(self, config_list=None, model_info=None):
        return OrderedDict({(self.name, self.name): self})   # (op name, op type) keys, as INC's

    def __add__(self, other):
        """``PathMetricConfig(...) + RTNConfig(...)``: prune, then quantize the pruned model."""
        if not isinstance(other, RTNConfig):
            raise TypeError(f"PathMetricConfig + {type(other).__name__}: pruning composes with "
                            "RTNConfig (weight-only, eager model) only")
        return PrunedThenQuantizedConfig([self, other])

    @classmethod
    def get_config_set_for_tuning(cls):
        return cls(sparsity=[0.25, 0.5, 0.75])


class PrunedThenQuantizedConfig(ComposableConfig):
    """``PathMetricConfig(...) + RTNConfig(...)``: path-magnitude pruning, then RTN of the pruned
    model, in one ``quantize`` / ``autotune`` trial.

    INC 3.10's own ``ComposableConfig`` maps only ``set_local`` entries (its global settings map
    to no op, and ``PathMetricConfig`` has no op list), so this subclass builds the mapping
    itself: ``{"path_metric": pruning config}`` and RTN's own mapping. The pruning entry runs
    first (it is registered ahead of INC's algorithms) and sets ``path_metric_bound`` to the
    certificate of the combined change, ``pm.path_metric(theta, theta')`` with ``theta'`` the
    pruned weights quantized as RTN will (:func:`simulate_weights`).
    """

    def __add__(self, other):
        raise TypeError("PrunedThenQuantizedConfig composes one PathMetricConfig and one RTNConfig")

    def to_config_mapping(self, config_list=None, model_info=None):
        prune, quant = self.config_list
        info = (model_info or {}).get(quant.name)
        mapping = prune.to_config_mapping()
        mapping.update(quant.to_config_mapping(model_info=info))
        return mapping


@register_algo(PATH_METRIC)
@torch.no_grad()
def path_metric_entry(model, configs_mapping, mode=Mode.QUANTIZE, *args, example_inputs=None, **kwargs):
    """INC algorithm entry for ``PathMetricConfig``: prunes ``model`` in place (nothing to prepare).

    When RTN follows in the same mapping (:class:`PrunedThenQuantizedConfig`), the bound it
    records is that of pruning then quantizing."""
    if mode == Mode.PREPARE:
        return model
    if example_inputs is None:
        raise ValueError("path_metric needs example_inputs: quantize(model, PathMetricConfig(...), "
                         "example_inputs=x) / autotune(..., example_inputs=x)")
    rtn = OrderedDict((key, c) for key, c in configs_mapping.items() if c.name == RTN)
    original = copy.deepcopy(model) if rtn else None
    key = next(k for k, c in configs_mapping.items() if c.name == PATH_METRIC)
    # done once applied; INC's RTN entry reads every config left in the mapping as an RTN one
    config = configs_mapping.pop(key) if rtn else configs_mapping[key]
    result = _prune(model, config, example_inputs, inplace=True)
    result.model.path_metric_bound, result.model.path_metric_log_bound = \
        (result.certified_bound, result.log_certified_bound) if not rtn else _combined_bound(
            original, result.model, _rtn_mapping_weights(result.model, rtn), example_inputs)
    result.model.path_metric_head = pm.output_head(result.model, example_inputs)
    result.model.path_metric_masks = result.masks
    return result.model


# quantize() applies algorithms in registration order: pruning must come before quantization
algos_mapping.update({name: algos_mapping.pop(name) for name in list(algos_mapping)
                      if name != PATH_METRIC})


def _prune(model, c, example_inputs, inplace):
    return pm.prune(model, c.sparsity, example_inputs, structured=c.structured, scope=c.scope,
                    max_layer_sparsity=c.max_layer_sparsity, rounds=c.rounds, inplace=inplace)
