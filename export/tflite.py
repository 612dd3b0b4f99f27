"""TFLite (LiteRT) export with litert-torch, verified with ai-edge-litert's Interpreter; fp16
and int8 files are made from the fp32 flatbuffer by `tflite_quant`.

litert-torch keeps the PyTorch NCHW input and inserts layout changes itself (a TRANSPOSE after
an input with more than one channel); with `nhwc` the input is channels-last and that
transpose is gone. The number of TRANSPOSE ops left is recorded because each costs time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from edgeprune.devices.formats import format_named
from edgeprune.export.base import (
    Converted,
    Exporter,
    ExportError,
    ExportOptions,
    Runner,
    export_step,
)
from edgeprune.export.quiet import captured_stderr, quiet_loggers, set_quiet_env


def import_litert_torch() -> ModuleType:
    """Import litert-torch quietly: its import loads the MLIR converter, which logs absl
    INFO lines (oneDNN notice) and a torch deprecation warning at load time."""
    set_quiet_env()
    with quiet_loggers(), captured_stderr():
        import litert_torch
    return litert_torch


def count_ops(model_bytes: bytes) -> dict[str, int]:
    """Operator counts by name over all subgraphs, read from the flatbuffer itself (so a
    runtime's delegate nodes do not appear); custom ops count under their custom name."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                counts[code.CustomCode().decode()] += 1
            else:
                counts[names.get(builtin, str(builtin))] += 1
    return dict(sorted(counts.items()))


def op_facts(data: bytes) -> dict[str, Any]:
    ops = count_ops(data)
    return {"ops": ops, "transposes": ops.get("TRANSPOSE", 0)}


def to_float(detail: dict[str, Any]):
    """A function turning the tensor `detail` describes into float32 (dequantized when it is
    an integer tensor with a scale)."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return lambda y: y.astype(np.float32)
    return lambda y: (y.astype(np.float32) - zero_point) * scale


def from_float(detail: dict[str, Any]):
    """A function turning float32 into the tensor's type (quantized for integer tensors)."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind == "f" or not scale:
        return lambda x: x.astype(dtype)
    info = np.iinfo(dtype)
    return lambda x: np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


class TFLiteExporter(Exporter):
    """TFLite at a static batch of 1; NCHW input as in PyTorch, or NHWC with `nhwc`."""

    name = "tflite"
    suffix = format_named("tflite").extension
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "int8-qat")

    def convert(self, model: torch.nn.Module, example: torch.Tensor,
                options: ExportOptions) -> Converted:
        """Convert with litert-torch; count ops and transposes."""
        with export_step(self.label(), "litert_torch.convert"):
            litert_torch = import_litert_torch()
            if options.nhwc:
                model = litert_torch.to_channel_last_io(model, args=[0]).eval()
                example = example.permute(0, 2, 3, 1).contiguous()
            with captured_stderr():
                edge_model = litert_torch.convert(model, (example,))
            data = bytes(edge_model.model_content())
        return Converted(data, {**op_facts(data), "layout": self.layout(options),
                                "converter": f"litert-torch {litert_torch.__version__}"})

    def convert_quantized(self, model: torch.nn.Module, example: torch.Tensor,
                          options: ExportOptions) -> Converted:
        """A PT2E-quantized model (quantization-aware training) as a fully int8 file, with
        the quantizer it was prepared with; its inputs and outputs are int8."""
        from litert_torch.quantize.quant_config import QuantConfig

        if options.quantizer is None:
            raise ExportError("an int8-qat export needs the PT2E quantizer the model was "
                              "prepared with (ExportOptions.quantizer)")
        with export_step(self.label("int8-qat"), "litert_torch.convert"):
            litert_torch = import_litert_torch()
            config = QuantConfig(pt2e_quantizer=options.quantizer)
            with captured_stderr():
                edge = litert_torch.convert(model, (example,), quant_config=config)
            data = bytes(edge.model_content())
        return Converted(data, {**op_facts(data), "layout": "NCHW",
                                "converter": f"litert-torch {litert_torch.__version__}",
                                "quantization": "int8 from quantization-aware training (PT2E)",
                                "int8_io": True})

    def derive(self, fp32: Converted, precision: str, calibration: np.ndarray | None,
               options: ExportOptions) -> Converted:
        """fp16 or int8 from the fp32 flatbuffer (see tflite_quant)."""
        from edgeprune.export import tflite_quant

        with export_step(self.label(precision), "ai-edge-quantizer"):
            data, facts = tflite_quant.quantize(fp32.data, precision, calibration, options)
        return Converted(data, {**fp32.details, **op_facts(data), **facts})

    def runner(self, path: Path, layout: str = "NCHW") -> Runner:
        """A one-thread LiteRT Interpreter with its default delegate (XNNPACK), as devices
        run it; it takes NCHW float32 and handles the file's layout and integer I/O."""
        from ai_edge_litert.interpreter import Interpreter

        with captured_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        feed, fetch = from_float(inp), to_float(out)
        nhwc = layout == "NHWC"

        def run(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x
            interpreter.set_tensor(inp["index"], feed(x))
            interpreter.invoke()
            return fetch(interpreter.get_tensor(out["index"]))

        return Runner(run, inp["name"], out["name"])

    def layout(self, options: ExportOptions) -> str:
        return "NHWC" if options.nhwc else "NCHW"

    def describe(self, details: dict[str, Any]) -> str:
        n = sum(details["ops"].values())
        return f"{n} ops, {details['transposes']} transposes, {details['layout']} input"
