"""Reduced-precision TFLite files made from the fp32 flatbuffer with ai-edge-quantizer (AEQ),
the quantizer litert-torch itself builds on.

- fp16: weights stored as float16 and expanded by DEQUANTIZE ops at load time (weight-only).
- int8-dynamic: int8 weights per channel; activations quantized at run time.
- int8: int8 weights per channel and int8 activations whose ranges are the min/max seen on
  real calibration samples. Inputs and outputs stay float32 (a QUANTIZE op after the input and
  a DEQUANTIZE op before the output) unless `int8_io`, which leaves them int8.

AEQ's own `Quantizer.calibrate` merges per-sample ranges with a moving average, which suits
large calibration batches; at the batch of 1 these files are traced with, the average of
per-image ranges clips the logits of confident images (measured: 2.3 points of top-1 lost on
Fashion-MNIST). The calibrator is therefore run here with AEQ's `min_max_update`, the overall
min/max, as TFLite's converter and onnxruntime's MinMax calibration do.

litert-torch folds a per-channel scale that follows a Linear (ConvNeXt's layer scale) into the
FULLY_CONNECTED op and leaves its bias with the activation's rank, (1, 1, 1, C). AEQ quantizes
a bias per channel along dimension 0, which for that shape has one entry, so the interpreter
refuses the file ("num_scales must be 1 ... but got C"). `flatten_fc_biases` gives such
biases their canonical shape (C,) before quantizing; the values are unchanged.

XNNPACK refuses a whole file when one conv's output scale is too small for its inputs'
(`below_requantization_limit`): a layer whose outputs stayed ~1e-9 on every calibration
sample (torchvision ResNet-50 pruned to -50% MACs and exported without fine-tuning). Those
outputs get the smallest range XNNPACK accepts and the file is quantized again; the sidecar
lists them as `widened_ranges`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from edgeprune.export.base import ExportError, ExportOptions
from edgeprune.export.quiet import captured_stderr


def recipe(precision: str, int8_io: bool = False) -> list[dict[str, Any]]:
    """The AEQ recipe for `precision` (all supported ops of the whole model)."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    every = qtyping.TFLOperationName.ALL_SUPPORTED
    manager = recipe_manager.RecipeManager()
    if precision == "fp16":
        manager.add_weight_only_config(".*", every, num_bits=16,
                                       algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif precision == "int8-dynamic":
        manager.add_dynamic_config(".*", every, num_bits=8)
    elif precision == "int8":
        manager.add_static_config(".*", every, activation_num_bits=8, weight_num_bits=8)
        # DIV stays float: an int8 divisor that quantizes to its zero point stops the kernel
        # (timm EdgeNeXt's Fourier position encoding divides by constants 1..5623, and 1
        # fell on the zero point: "div.cc data[i] != zero_point was not true")
        manager.add_quantization_config(".*", qtyping.TFLOperationName.DIV, None,
                                        AlgorithmName.NO_QUANTIZE)
        if not int8_io:  # graph inputs and outputs stay float32
            for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                manager.add_quantization_config(".*", io, None, AlgorithmName.NO_QUANTIZE)
    else:
        raise ValueError(f"no TFLite recipe for {precision}")
    return manager.get_quantization_recipe()


def signature_feed(data: bytes, samples: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
    """AEQ's calibration data: {signature: [{input name: one sample}, ...]}."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=data).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    return {key: [{name: samples[i : i + 1]} for i in range(len(samples))]}


def calibrate(data: bytes, model_recipe: list[dict[str, Any]],
              samples: np.ndarray) -> dict[str, Any]:
    """Activation ranges: the overall min/max of every tensor over `samples`."""
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(model_recipe)
    threads = max(1, min(4, os.cpu_count() or 1))
    calib = calibrator.Calibrator(data, num_threads=threads,
                                  qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate(signature_feed(data, samples), manager)
    return calib.get_model_qsvs()


def fc_biases_to_flatten(data: bytes) -> list[tuple[int, int]]:
    """(subgraph, tensor) of each FULLY_CONNECTED bias whose rank is above 1 and which no
    other op reads."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    fc = schema.BuiltinOperator.FULLY_CONNECTED
    found = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        bias_of_fc, other = set(), set()
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            is_fc = max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == fc
            for k in range(op.InputsLength()):
                t = op.Inputs(k)
                (bias_of_fc if is_fc and k == 2 else other).add(t)
        for t in sorted(bias_of_fc - other - {-1}):
            if graph.Tensors(t).ShapeLength() > 1:
                found.append((s, t))
    return found


def flatten_fc_biases(data: bytes) -> bytes:
    """`data` with every FULLY_CONNECTED bias of shape (1, ..., 1, C) reshaped to (C,), so
    that per-channel quantization of the bias runs along its channels; `data` itself when
    there is none (the usual case, and then nothing is re-serialized)."""
    found = fc_biases_to_flatten(data)
    if not found:
        return data
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    for s, t in found:
        tensor = model.subgraphs[s].tensors[t]
        tensor.shape = [int(np.prod(tensor.shape))]
        if tensor.shapeSignature is not None:
            tensor.shapeSignature = list(tensor.shape)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(data: bytes, precision: str, calibration: np.ndarray | None,
             options: ExportOptions) -> tuple[bytes, dict[str, Any]]:
    """The flatbuffer at `precision` and facts for the sidecar. `calibration` is NCHW and
    transposed here when the file takes NHWC input."""
    data = flatten_fc_biases(data)
    model_recipe = recipe(precision, options.int8_io)
    facts: dict[str, Any] = {"quantization": DESCRIPTIONS[precision]}
    with captured_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental_preserve_all_tensors ... debugging"
        ranges = None
        if precision == "int8":
            if calibration is None:
                raise ValueError("int8 needs calibration samples")
            feed = calibration.transpose(0, 2, 3, 1) if options.nhwc else calibration
            ranges = calibrate(data, model_recipe, np.ascontiguousarray(feed))
            facts.update(calibration_samples=len(calibration), int8_io=options.int8_io)
        quantized = _quantized(data, model_recipe, ranges)
        if ranges is not None:
            quantized, widened = _within_requantization_limit(data, model_recipe, ranges,
                                                              quantized)
            if widened:
                facts["widened_ranges"] = widened
    if precision == "int8":
        _refuse_vanishing_activations(quantized)
    return quantized, facts


def _quantized(data: bytes, model_recipe: list[dict[str, Any]],
               ranges: dict[str, Any] | None) -> bytes:
    from ai_edge_quantizer import quantizer

    result = quantizer.Quantizer(data, model_recipe).quantize(ranges,
                                                              enable_progress_report=False)
    return bytes(result.quantized_model)


def _within_requantization_limit(data: bytes, model_recipe: list[dict[str, Any]],
                                 ranges: dict[str, Any], quantized: bytes,
                                 passes: int = 3) -> tuple[bytes, list[str]]:
    """`quantized` again, with the ranges of `below_requantization_limit`'s outputs widened
    to the smallest range XNNPACK accepts (with a factor 2 to spare), until none is left;
    and the names of the tensors widened."""
    widened: list[str] = []
    for _ in range(passes):
        narrow = below_requantization_limit(quantized)
        if not narrow:
            break
        for name, needed in narrow.items():
            low = float(np.min(ranges[name]["min"]))
            ranges[name]["max"] = np.maximum(ranges[name]["max"], low + 255 * 2 * needed)
            widened.append(_layer_name(name))
        quantized = _quantized(data, model_recipe, ranges)
    return quantized, list(dict.fromkeys(widened))


REQUANTIZATION_LIMIT = 256.0
"""XNNPACK refuses a quantized conv or fully connected op (and with it the whole file: "failed
to create XNNPACK runtime") whose input scale x filter scale / output scale is 256 or more."""
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def below_requantization_limit(data: bytes) -> dict[str, float]:
    """{output tensor name: smallest output scale XNNPACK accepts} for each int8 conv or
    fully connected op whose output scale is below it (`REQUANTIZATION_LIMIT`). The output
    of such an op never left a range smaller than one step of its own int32 accumulator on
    the calibration samples: a layer that carries no signal (a block pruned without
    fine-tuning, or an untrained one). Giving it the smallest accepted range loses nothing
    the integer kernel could have computed."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    found: dict[str, float] = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            kind = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            if kind not in WEIGHTED_OPS or len(op.inputs) < 2 or not op.outputs:
                continue
            scales = [_scales(graph.tensors[i]) for i in (op.inputs[0], op.inputs[1],
                                                          op.outputs[0])]
            if not all(scales):
                continue
            needed = scales[0][0] * max(scales[1]) / REQUANTIZATION_LIMIT
            if scales[2][0] < needed:
                name = graph.tensors[op.outputs[0]].name
                found[name.decode() if isinstance(name, bytes) else str(name)] = float(needed)
    return found


def _scales(tensor: Any) -> list[float]:
    """A flatbuffer tensor's quantization scales (none for a float tensor)."""
    q = tensor.quantization
    return [] if q is None or q.scale is None else [float(v) for v in q.scale]


FUSED_BOUNDS = {"RELU6": 6.0, "RELU_N1_TO_1": 1.0}
"""The bound TFLite's kernels quantize, at load time, for each clamping fused activation."""
INT32_MAX = 2**31 - 1


def vanishing_activations(data: bytes) -> list[tuple[str, float]]:
    """(name, scale) of each int8 output of an op with a fused ReLU6 (or ReLU-1..1) whose bound
    overflows int32 once quantized with that scale (round(6 / scale) > 2^31 - 1). TFLite's
    kernels check exactly that when they prepare the op (kernel_util `Quantize`,
    `no_integer_overflow_from_quantization`) and refuse the whole file: the scale comes from
    activations that never left ~1e-12 on the calibration samples, a model whose layers
    carry no signal (untrained, or a dead block). XNNPACK on x86 can take the op before the
    kernel's check runs, so the host may load a file an ARM board refuses."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if k.isupper()}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    found = []
    for graph in model.subgraphs:
        for op in graph.operators:
            act = getattr(op.builtinOptions, "fusedActivationFunction", None)
            bound = FUSED_BOUNDS.get(names.get(act, ""))
            if bound is None or not op.outputs:
                continue
            tensor = graph.tensors[op.outputs[0]]
            scales = _scales(tensor)
            if scales and min(scales) > 0 and round(bound / min(scales)) > INT32_MAX:
                found.append((_layer_name(tensor.name), float(min(scales))))
    return found


def _layer_name(name: bytes | str) -> str:
    """'ReLU6_1' of litert-torch's 'torch.nn.../torch.nn.modules.activation.ReLU6_1;;...'."""
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text.split(";")[0].split("/")[-1].split(".")[-1]


def _refuse_vanishing_activations(data: bytes) -> None:
    found = vanishing_activations(data)
    if found:
        name, scale = found[0]
        raise ExportError(
            f"tflite int8: {len(found)} layer output{'s' if len(found) > 1 else ''} never "
            f"left ~{scale * 255:.0e} on the calibration samples (first: {name}, "
            f"scale {scale:.1e}); TFLite on ARM refuses such a file "
            "(no_integer_overflow_from_quantization): train the model, or ship fp32/fp16")


DESCRIPTIONS = {
    "fp16": "float16 weights (weight-only), float32 compute",
    "int8-dynamic": "dynamic int8: per-channel int8 weights, activations quantized at run time",
    "int8": "static int8: per-channel int8 weights, int8 activations, min/max ranges",
}
