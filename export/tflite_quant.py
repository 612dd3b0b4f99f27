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
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from edgeprune.export.base import ExportOptions
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


def quantize(data: bytes, precision: str, calibration: np.ndarray | None,
             options: ExportOptions) -> tuple[bytes, dict[str, Any]]:
    """The flatbuffer at `precision` and facts for the sidecar. `calibration` is NCHW and
    transposed here when the file takes NHWC input."""
    from ai_edge_quantizer import quantizer

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
        result = quantizer.Quantizer(data, model_recipe).quantize(
            ranges, enable_progress_report=False)
    return bytes(result.quantized_model), facts


DESCRIPTIONS = {
    "fp16": "float16 weights (weight-only), float32 compute",
    "int8-dynamic": "dynamic int8: per-channel int8 weights, activations quantized at run time",
    "int8": "static int8: per-channel int8 weights, int8 activations, min/max ranges",
}
