"""TFLite (LiteRT) export with litert-torch, verified with ai-edge-litert's Interpreter.

litert-torch keeps the PyTorch NCHW input and inserts layout changes itself; the number of
TRANSPOSE ops left in the file is recorded because each one costs time on a device.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from edgeprune.export.base import Exporter, Runner, export_step
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


class TFLiteExporter(Exporter):
    """fp32 TFLite at a static batch of 1, NCHW input as in PyTorch."""

    name = "tflite"
    suffix = ".tflite"

    def export(self, model: torch.nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
        """Convert with litert-torch, write the flatbuffer, count its ops and transposes."""
        with export_step(self.label, "litert_torch.convert"):
            litert_torch = import_litert_torch()
            with captured_stderr():
                edge_model = litert_torch.convert(model, (example,))
        edge_model.export(str(path))
        ops = count_ops(path.read_bytes())
        return {"ops": ops, "transposes": ops.get("TRANSPOSE", 0),
                "converter": f"litert-torch {litert_torch.__version__}"}

    def runner(self, path: Path) -> Runner:
        """A one-thread LiteRT Interpreter with its default delegate (XNNPACK), as devices
        run it."""
        from ai_edge_litert.interpreter import Interpreter

        with captured_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(x: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"]).copy()

        return Runner(run, inp["name"], out["name"])

    def describe(self, details: dict[str, Any]) -> str:
        n = sum(details["ops"].values())
        return f"{n} ops, {details['transposes']} transposes"
