"""What every exporter shares: the error type, the options, the exporter interface and the
runner it hands to the one validator."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.export.precision import DEFAULT_CHECKS, Check

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_REASON = 300


class ExportError(EdgepruneError):
    """An export that failed or whose output does not match PyTorch; one line, names the format."""


@dataclass(frozen=True)
class Runner:
    """One exported model file loaded in its runtime: call it with a float32 (1, C, H, W) array
    to get its (1, K) float logits, whatever the file's own input layout and types. The names
    are the file's own input/output tensor names."""

    run: Callable[[np.ndarray], np.ndarray]
    input_name: str
    output_name: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


@dataclass(frozen=True)
class ExportOptions:
    """Format options beyond format and precision, each used by the exporter it concerns.

    `opset`: ONNX operator set (None: the exporter's default, which suits onnxruntime >= 1.14;
    see `edgeprune.export.onnx.opset_for_onnxruntime`). `dynamic_batch`: ONNX files accept
    any batch size (the batch dimension is named 'batch'); TFLite files keep a batch of 1.
    `nhwc`: TFLite input in channels-last layout (N, H, W, C), as LiteRT kernels compute, so a
    device feeds camera frames without a transpose. `int8_io`: fully int8 TFLite files take
    and return int8 tensors (scale and zero point in the file and sidecar) instead of float.
    `quantizer`: for `int8-qat`, the PT2E quantizer the model was prepared with.
    """

    opset: int | None = None
    dynamic_batch: bool = False
    nhwc: bool = False
    int8_io: bool = False
    quantizer: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Converted:
    """A model file in memory and the facts about it that go into the sidecar."""

    data: bytes
    details: dict[str, Any]


class Exporter(ABC):
    """One output format, at each precision it supports.

    `convert` turns the PyTorch model into an fp32 file once; `derive` makes each reduced
    precision from that fp32 file (quantizers work on the format's own graph, so every
    precision shares one conversion); `runner` loads a file for verification. `checks` holds
    the thresholds per precision (a copy of DEFAULT_CHECKS; callers and tests may adjust one
    exporter's copy).
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self) -> None:
        self.checks: dict[str, Check] = dict(DEFAULT_CHECKS)

    def label(self, precision: str = "fp32") -> str:
        """How messages name this exporter at `precision`, e.g. 'onnx int8'."""
        return f"{self.name} {precision}"

    @abstractmethod
    def convert(self, model: torch.nn.Module, example: torch.Tensor,
                options: ExportOptions) -> Converted:
        """`model` traced at `example` (batch 1, NCHW) as an fp32 file with its details."""

    def convert_quantized(self, model: torch.nn.Module, example: torch.Tensor,
                          options: ExportOptions) -> Converted:
        """A model already quantized (see precision.PREQUANTIZED) as a file of this format."""
        raise NotImplementedError(f"{self.name} cannot convert a quantized model")

    def derive(self, fp32: Converted, precision: str, calibration: np.ndarray | None,
               options: ExportOptions) -> Converted:
        """The file at `precision`, made from the fp32 one; `calibration` holds real NCHW
        samples for precisions that need them (see precision.CALIBRATED)."""
        raise NotImplementedError(f"{self.name} has no {precision} export")

    def finish(self, data: bytes, metadata: dict[str, str]) -> bytes:
        """Embed `metadata` (string keys and values) in the file when the format has a place
        for it; by default the file is unchanged and the sidecar alone carries it."""
        return data

    @abstractmethod
    def runner(self, path: Path, layout: str = "NCHW") -> Runner:
        """Load the file at `path`, whose input has `layout`, in this format's runtime (CPU);
        the runner takes float32 NCHW arrays and returns float32 logits whatever the file's
        own input layout and types."""

    def layout(self, options: ExportOptions) -> str:
        """The input layout of this format's files under `options`."""
        return "NCHW"

    def describe(self, details: dict[str, Any]) -> str:
        """A short human summary of `details` for the one-line log (empty by default)."""
        return ""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of the innermost explicit cause of `exc`, without colour codes.

    Exporters wrap the real reason (e.g. "No ONNX function found for <OpOverload ...>") in
    generic "step 3/3" messages; the innermost cause is the line a user can act on.
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@contextmanager
def export_step(label: str, step: str) -> Iterator[None]:
    """Turn any failure inside into a one-line ExportError naming the format and the step;
    edgeprune's own errors pass through unchanged."""
    try:
        yield
    except EdgepruneError:
        raise
    except Exception as exc:
        raise ExportError(f"{label} {step} failed: {first_line(exc)}") from exc
