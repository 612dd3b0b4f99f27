"""ONNX export: torch.onnx's dynamo exporter, simplified with onnxsim, checked with
onnx.checker and run with onnxruntime's CPU provider.

The file is saved from the in-memory ModelProto in one piece: `torch.onnx.export(..., f=path)`
defaults to `external_data=True` and writes a `.onnx.data` file beside even a 1 MB model,
which is one more file to copy to a device and to lose.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgeprune.export.base import Exporter, Runner, export_step

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("ai.onnx") operator set the model imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class OnnxExporter(Exporter):
    """fp32 ONNX at a static batch of 1 (what devices benchmark), opset 18 by default."""

    name = "onnx"
    suffix = ".onnx"

    def __init__(self, opset: int = 18) -> None:
        self.opset = opset

    def export(self, model: torch.nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
        """Export, simplify, check, save as one self-contained file; record node counts."""
        import onnx
        import onnxsim

        with export_step(self.label, "torch.onnx.export"):
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=self.opset, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
            exported = program.model_proto
        with export_step(self.label, "onnxsim"):
            simplified, ok = onnxsim.simplify(exported)
            if not ok:
                raise RuntimeError("onnxsim's check of the simplified model failed")
        with export_step(self.label, "onnx.checker"):
            onnx.checker.check_model(simplified, full_check=True)
        onnx.save_model(simplified, str(path), save_as_external_data=False)
        return {"opset": default_opset(simplified), "nodes_before": len(exported.graph.node),
                "nodes_after": len(simplified.graph.node), "external_data": False}

    def runner(self, path: Path) -> Runner:
        """An onnxruntime CPU session with one thread: verification is a few dozen batch-1
        runs, and one thread neither fights other jobs for cores nor varies run to run."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp, out = session.get_inputs()[0].name, session.get_outputs()[0].name
        return Runner(lambda x: session.run([out], {inp: x})[0], inp, out)

    def describe(self, details: dict[str, Any]) -> str:
        return f"{details['nodes_before']} -> {details['nodes_after']} nodes"
