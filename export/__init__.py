"""Export stage: ONNX and TFLite files verified against PyTorch on real inputs.

`export_model` is the entry point; `EXPORTERS` maps format names to exporters, all checked by
one validator (`validate.validate_outputs`). Heavy converters are imported only when used.
"""

from edgeprune.export.api import ExportResult, export_model
from edgeprune.export.base import Exporter, ExportError, Runner
from edgeprune.export.registry import EXPORTERS, select_exporters
from edgeprune.export.validate import Metrics, validate_outputs

__all__ = ["EXPORTERS", "ExportError", "ExportResult", "Exporter", "Metrics", "Runner",
           "export_model", "select_exporters", "validate_outputs"]
