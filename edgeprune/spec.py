"""The input/preprocessing description saved with every model and artefact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeprune.errors import EdgepruneError


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: image shape, normalization and class labels.

    Stored in checkpoints, export sidecars and read by the on-device runner, so every
    artefact carries the preprocessing it was trained with.
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...] = field(default_factory=tuple)
    layout: str = "NCHW"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.height, self.width)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"], d["labels"] = list(self.mean), list(self.std), list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(
            channels=int(d["channels"]),
            height=int(d["height"]),
            width=int(d["width"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            labels=tuple(str(v) for v in d.get("labels", ())),
            layout=str(d.get("layout", "NCHW")),
        )


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Parse 'CxHxW' (e.g. '3x32x32') into a shape tuple."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise EdgepruneError(
            f"--input-size {text!r} is not CxHxW; write it like 3x224x224"
        ) from None
    if min(c, h, w) <= 0:
        raise EdgepruneError(f"--input-size {text!r} has a non-positive dimension")
    return c, h, w


def parse_floats(text: str | tuple | list, what: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' (or a sequence of numbers) -> (0.5, 0.5, 0.5); an error naming `what`."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise EdgepruneError(f"{what} {text!r} is not a comma-separated list of numbers, e.g. "
                             "0.485,0.456,0.406") from None
    if not values or not all(v == v and abs(v) != float("inf") for v in values):
        raise EdgepruneError(f"{what} {text!r} needs finite numbers, one per input channel")
    return values
