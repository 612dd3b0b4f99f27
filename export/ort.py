"""The ORT format (`.ort`) that ONNX Runtime Mobile loads, made from a verified `.onnx` file with
onnxruntime's own converter (`onnxruntime.tools.convert_onnx_models_to_ort`, Fixed optimization
style, no hardware-specific kernels so the file runs on any CPU) and verified like every
exported file: the same samples through both files, parity figures and top-1 accuracy, with
a sidecar beside it. The converter's own output is captured; its exit status is not trusted,
the produced file is checked instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export.base import ExportError
from edgeprune.export.onnx import OnnxExporter
from edgeprune.export.validate import EvalSet, Metrics, validate_outputs
from edgeprune.files import atomic_write_bytes, atomic_write_text, sha256_file


def convert_to_ort(onnx_path: Path) -> bytes:
    """The .ort flatbuffer of the ONNX file at `onnx_path`."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as tmp:
        source = Path(tmp) / onnx_path.name
        shutil.copyfile(onnx_path, source)
        try:
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                from onnxruntime.tools.convert_onnx_models_to_ort import (
                    OptimizationStyle,
                    convert_onnx_models_to_ort,
                )

                convert_onnx_models_to_ort(source, output_dir=Path(tmp) / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # noqa: BLE001 - the converter raises many types
            raise ExportError(f"ORT conversion of {onnx_path.name} failed: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None
        finally:
            root.handlers[:] = handlers  # the tool calls logging.basicConfig on import
        made = Path(tmp) / "out" / (onnx_path.stem + ".ort")
        if not made.is_file():
            raise ExportError(f"ORT conversion of {onnx_path.name} produced no .ort file")
        return made.read_bytes()


def export_ort(onnx_path: Path, samples: np.ndarray, eval_set: EvalSet | None = None,
               strict: bool = True) -> tuple[Path, Metrics]:
    """Write `<stem>.ort` and its sidecar beside a verified `.onnx` file: every sample (and
    the labelled eval set) run through both files must agree within the ONNX file's own
    fp32 tolerance. Returns the .ort path and its figures against the .onnx file."""
    sidecar = onnx_path.with_name(onnx_path.name + ".json")
    if not sidecar.is_file():
        raise EdgepruneError(f"{onnx_path} has no sidecar; export it with edgeprune first")
    meta = json.loads(sidecar.read_text())
    out = onnx_path.with_suffix(".ort")
    atomic_write_bytes(out, convert_to_ort(onnx_path))
    exporter = OnnxExporter()
    layout = meta.get("layout", "NCHW")
    reference = np.concatenate([exporter.runner(onnx_path, layout)(samples[i:i + 1])
                                for i in range(len(samples))])
    ort_eval = None
    if eval_set is not None:
        onnx_run = exporter.runner(onnx_path, layout)
        onnx_correct = np.concatenate([
            onnx_run(eval_set.x[i:i + 1]) for i in range(len(eval_set))]).argmax(1) == eval_set.y
        ort_eval = EvalSet(eval_set.x, eval_set.y, float(np.mean(onnx_correct)), onnx_correct)
    try:
        metrics = validate_outputs(reference, exporter.runner(out, layout), samples,
                                   exporter.checks["fp32"], label=f"ort {meta['precision']}",
                                   strict=strict, eval_set=ort_eval)
    except ExportError:
        out.unlink(missing_ok=True)
        raise
    meta.update(format="ort", file=out.name, sha256=sha256_file(out),
                size_bytes=out.stat().st_size, converted_from=onnx_path.name,
                ort_verification={"samples": metrics.num_samples,
                                  "max_abs_diff": metrics.max_abs_diff,
                                  "top1_agreement": metrics.top1_agreement,
                                  "accuracy": metrics.accuracy,
                                  "onnx_accuracy": metrics.reference_accuracy,
                                  "passed": metrics.passed})
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(meta, indent=2) + "\n")
    return out, metrics
