"""What travels with every exported file: class labels, input shape and layout, mean/std,
precision and the compression summary. ONNX files carry it in `metadata_props` (string
values, JSON for lists and objects); every file also gets a JSON sidecar `<file>.json`, which
the on-device runner reads."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from edgeprune import __version__
from edgeprune.spec import InputSpec


def input_shape(spec: InputSpec, layout: str, dynamic_batch: bool = False) -> list[int]:
    """The file's input shape; -1 marks a dynamic batch dimension."""
    c, h, w = spec.shape
    batch = -1 if dynamic_batch else 1
    return [batch, h, w, c] if layout == "NHWC" else [batch, c, h, w]


def file_metadata(spec: InputSpec, precision: str, layout: str, dynamic_batch: bool,
                  summary: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata of one file; `input_spec.layout` is the file's own input layout."""
    return {
        "precision": precision,
        "labels": list(spec.labels),
        "layout": layout,
        "input_shape": input_shape(spec, layout, dynamic_batch),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input_spec": dataclasses.replace(spec, layout=layout).to_dict(),
        "compression": summary,
        "edgeprune": __version__,
    }


def as_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """`metadata` with every value a string (JSON for anything but a string), for formats
    whose metadata is string pairs; empty values are left out."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            for k, v in metadata.items() if v is not None}
