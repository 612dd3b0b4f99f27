"""ONNX export: torch.onnx's dynamo exporter (opset 18 and later; the TorchScript exporter for
older opsets, which dynamo cannot emit), simplified with onnxsim, checked with onnx.checker and
run with onnxruntime's CPU provider. fp16 and int8 files are made from the fp32 graph by
`onnx_quant`.

Files are saved from the in-memory ModelProto in one piece: `torch.onnx.export(..., f=path)`
defaults to `external_data=True` and writes a `.onnx.data` file beside even a 1 MB model,
which is one more file to copy to a device and to lose.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgeprune.devices.formats import format_named
from edgeprune.errors import EdgepruneError
from edgeprune.export.base import (
    Converted,
    Exporter,
    ExportError,
    ExportOptions,
    Runner,
    export_step,
)

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
DEFAULT_OPSET = 18
"""torch's dynamo exporter emits opset 18 natively; onnxruntime runs it from 1.14 (2023) on."""
MIN_OPSET = 13
"""Per-channel QuantizeLinear/DequantizeLinear (int8 QDQ files) need opset 13."""
ORT_OPSETS = ((1, 14, 18), (1, 13, 17), (1, 10, 15), (1, 8, 14), (1, 6, 13))
"""(major, minor, highest opset that onnxruntime release implements), newest first, from
onnxruntime's compatibility table; for 1.11 and 1.12 the lower figure of the published ones."""


def opset_for_onnxruntime(version: str) -> int:
    """The opset to export for a device running onnxruntime `version` ('1.12.1'): the default
    where that release runs it, else the highest opset it implements."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        raise EdgepruneError(f"onnxruntime version {version!r} is not like '1.16.3'") from None
    for ort_major, ort_minor, opset in ORT_OPSETS:
        if (major, minor) >= (ort_major, ort_minor):
            return min(opset, DEFAULT_OPSET)
    raise EdgepruneError(f"onnxruntime {version} is older than 1.6, which int8 QDQ files need "
                         f"(opset {MIN_OPSET}); update onnxruntime on the device")


def check_opset(opset: int) -> int:
    """`opset` if this onnx package can write it and quantized files can use it."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise EdgepruneError(f"ONNX opset {opset} is not supported: choose {MIN_OPSET} to "
                             f"{newest} (default {DEFAULT_OPSET})")
    return opset


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("ai.onnx") operator set the model imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def torch_to_onnx(model: torch.nn.Module, example: torch.Tensor, opset: int,
                  dynamic_batch: bool) -> tuple[onnx.ModelProto, str]:
    """The raw exported ModelProto and which torch exporter made it."""
    import onnx

    if dynamic_batch:  # a batch of 2 keeps torch.export from specialising the batch to 1
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
    if opset >= DEFAULT_OPSET:
        shapes = ({0: torch.export.Dim(BATCH_DIM)},) if dynamic_batch else None
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    verbose=False, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=shapes)
        return program.model_proto, "dynamo"
    axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # "legacy TorchScript-based ONNX export" deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue()), "torchscript"


def node_count(data: bytes) -> int:
    import onnx

    return len(onnx.load_from_string(data).graph.node)


class OnnxExporter(Exporter):
    """ONNX at a static batch of 1 (what devices benchmark) unless `dynamic_batch`."""

    name = "onnx"
    suffix = format_named("onnx").extension
    precisions = ("fp32", "fp16", "int8", "int8-dynamic")

    def convert(self, model: torch.nn.Module, example: torch.Tensor,
                options: ExportOptions) -> Converted:
        """Export, simplify, check; record the opset, exporter and node counts."""
        import onnx
        import onnxsim

        opset = check_opset(options.opset or DEFAULT_OPSET)
        with export_step(self.label(), "torch.onnx.export"):
            exported, exporter = torch_to_onnx(model, example, opset, options.dynamic_batch)
        with export_step(self.label(), "onnxsim"):
            simplified, ok = onnxsim.simplify(exported)
            if not ok:
                raise RuntimeError("onnxsim's check of the simplified model failed")
        with export_step(self.label(), "onnx.checker"):
            onnx.checker.check_model(simplified, full_check=True)
        if default_opset(simplified) != opset:
            raise ExportError(f"onnx fp32: torch exported opset {default_opset(simplified)} "
                                 f"when {opset} was asked for; choose --opset "
                                 f"{default_opset(simplified)} or another torch version")
        return Converted(simplified.SerializeToString(), {
            "opset": opset, "exporter": exporter, "nodes_before": len(exported.graph.node),
            "nodes_after": len(simplified.graph.node), "nodes": len(simplified.graph.node),
            "dynamic_batch": options.dynamic_batch, "external_data": False})

    def derive(self, fp32: Converted, precision: str, calibration: np.ndarray | None,
               options: ExportOptions) -> Converted:
        """fp16 or int8 from the fp32 graph (see onnx_quant)."""
        from edgeprune.export import onnx_quant

        with export_step(self.label(precision), "quantization"):
            data, facts = onnx_quant.QUANTIZERS[precision](fp32.data, calibration)
        details = {k: v for k, v in fp32.details.items() if k not in ("nodes_before",
                                                                       "nodes_after")}
        return Converted(data, {**details, "nodes": node_count(data), **facts})

    def finish(self, data: bytes, metadata: dict[str, str]) -> bytes:
        """Store `metadata` as the model's metadata_props (replacing any there)."""
        import onnx

        model = onnx.load_from_string(data)
        del model.metadata_props[:]
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model.SerializeToString()

    def runner(self, path: Path, layout: str = "NCHW") -> Runner:
        """An onnxruntime CPU session with one thread: verification is many batch-1 runs,
        and one thread neither fights other jobs for cores nor varies run to run."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp, out = session.get_inputs()[0].name, session.get_outputs()[0].name
        return Runner(lambda x: session.run([out], {inp: x})[0], inp, out)

    def describe(self, details: dict[str, Any]) -> str:
        text = f"opset {details['opset']}, {details['nodes']} nodes"
        if "nodes_before" in details:
            text += f" (onnxsim: {details['nodes_before']} -> {details['nodes_after']})"
        return text + (", dynamic batch" if details.get("dynamic_batch") else "")
