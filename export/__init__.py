"""Export stage: ONNX and TFLite files in fp32, fp16 and int8, verified against PyTorch on real
inputs and published with their metadata.

`export_model` is the entry point (a model in memory; `edgeprune.jobs.export.export_files` loads
one by reference for the `edgeprune export` command); `EXPORTERS` maps format names to
exporters, all checked by one validator (`validate.validate_outputs`). Heavy converters and
quantizers are imported only when used.
"""

from edgeprune.export.api import ExportResult, export_model
from edgeprune.export.base import Exporter, ExportError, ExportOptions, Runner
from edgeprune.export.precision import DEFAULT_CHECKS, PRECISIONS, Check
from edgeprune.export.registry import EXPORTERS, select_exporters
from edgeprune.export.validate import EvalSet, Metrics, validate_outputs

__all__ = ["DEFAULT_CHECKS", "EXPORTERS", "PRECISIONS", "Check", "EvalSet", "ExportError",
           "ExportOptions", "ExportResult", "Exporter", "Metrics", "Runner", "export_model",
           "select_exporters", "validate_outputs"]

