"""Reduced-precision ONNX files made from the fp32 graph with onnxruntime's own tools.

- fp16: `onnxruntime.transformers.float16` casts weights and compute to half precision and
  keeps float32 inputs and outputs, so callers feed the same arrays as for fp32.
- int8: static quantization in QDQ format (QuantizeLinear/DequantizeLinear pairs that
  runtimes fuse into int8 kernels), int8 weights per output channel, int8 activations whose
  ranges are the min/max observed on real calibration samples; after onnxruntime's
  pre-processing (shape inference, BatchNorm folding), as its documentation asks.
- int8-dynamic: int8 weights per channel; activations quantized at run time.

Each function takes and returns serialized models; onnxruntime's quantizers work on files,
so they run in a private temporary folder.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's root-logger notices and the float16 converter's
    truncation warnings while inside."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def to_fp16(data: bytes, calibration: np.ndarray | None = None) -> tuple[bytes, dict[str, Any]]:
    """Half-precision weights and compute, float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        model = convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True)
    return model.SerializeToString(), {"quantization": "fp16 weights and activations, "
                                                       "float32 inputs and outputs"}


def calibration_reader(samples: np.ndarray, input_name: str) -> Any:
    """An onnxruntime CalibrationDataReader that feeds `samples` to input `input_name` one at
    a time (batch 1, the shape the file was exported with)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(range(len(samples)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.rows, None)
            return None if i is None else {input_name: samples[i : i + 1]}

        def rewind(self) -> None:
            self.rows = iter(range(len(samples)))

    return Reader()


def to_int8(data: bytes, calibration: np.ndarray | None) -> tuple[bytes, dict[str, Any]]:
    """Static QDQ int8, per-channel weights, min/max activation ranges from `calibration`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:
        raise ValueError("int8 needs calibration samples")
    with tempfile.TemporaryDirectory(prefix="edgeprune-onnx-int8-") as tmp, quiet():
        fp32, prepared, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        quantize_static(str(prepared), str(out), calibration_reader(calibration, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
        return out.read_bytes(), {
            "quantization": "static int8 QDQ, per-channel weights, min/max activation ranges",
            "calibration_samples": len(calibration)}


def to_int8_dynamic(data: bytes,
                    calibration: np.ndarray | None = None) -> tuple[bytes, dict[str, Any]]:
    """Per-channel int8 weights; activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgeprune-onnx-dyn-") as tmp, quiet():
        fp32, prepared, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "dyn.onnx"))
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=QuantType.QInt8)
        return out.read_bytes(), {"quantization": "dynamic int8: per-channel int8 weights, "
                                                  "activations quantized at run time"}


QUANTIZERS: dict[str, Callable[[bytes, np.ndarray | None], tuple[bytes, dict[str, Any]]]] = {
    "fp16": to_fp16, "int8": to_int8, "int8-dynamic": to_int8_dynamic}
