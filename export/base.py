"""What every exporter shares: the error type, the exporter interface and the runner it hands
to the one validator."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from edgeprune.errors import EdgepruneError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_REASON = 300


class ExportError(EdgepruneError):
    """An export that failed or whose output does not match PyTorch; one line, names the format."""


@dataclass(frozen=True)
class Runner:
    """One exported model file loaded in its runtime: call it with a float32 (1, C, H, W) array
    to get its (1, K) logits. The names are the file's own input/output tensor names."""

    run: Callable[[np.ndarray], np.ndarray]
    input_name: str
    output_name: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


class Exporter(ABC):
    """One output format at one precision.

    `export` writes the file and returns facts about it for the sidecar; `runner` loads a file
    for verification. Default tolerances live here so each format/precision states its own;
    tests and callers may override them on the instance.
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    precision: str = "fp32"
    atol: float = 1e-4
    rtol: float = 1e-4

    @property
    def label(self) -> str:
        """How messages name this exporter, e.g. 'onnx fp32'."""
        return f"{self.name} {self.precision}"

    @abstractmethod
    def export(self, model: torch.nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
        """Write `model` traced at `example` (batch 1) to `path`; return details for the sidecar."""

    @abstractmethod
    def runner(self, path: Path) -> Runner:
        """Load the file at `path` in this format's runtime (CPU)."""

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
