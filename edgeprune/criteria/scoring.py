"""Scoring a model by reference (the library side of `edgeprune score` and `explain`): load the
model and its reference data the way `compress` does, run a criterion, time it."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from edgeprune.criteria.base import get_criterion
from edgeprune.data import DataBundle
from edgeprune.errors import EdgepruneError
from edgeprune.spec import InputSpec, parse_input_size


@dataclass
class Loaded:
    """A model ready to score, its input description and the reference batches."""

    model: nn.Module
    spec: InputSpec
    batches: list[tuple[Tensor, ...]] = field(default_factory=list)


def load_reference(model: str = "demo", weights: Path | str | None = None,
                   dataset: str = "auto", data_dir: Path | str | None = None,
                   input_size: str | None = None, samples: int = 500, seed: int = 0,
                   batch_size: int = 64, samples_per_class: int | None = None) -> Loaded:
    """The model and `samples` class-balanced training images (or `samples_per_class` of
    each class) in batches, with real concept masks when an ImageFolder `data_dir` has a
    masks/ folder (see `concept_masks`)."""
    from edgeprune.data import load_dataset
    from edgeprune.models import load_model_for

    size = parse_input_size(input_size) if input_size else None
    data = load_dataset(dataset, data_dir, input_size=size)
    loaded, spec = load_model_for(model, weights, data, size)
    batches = reference_batches(data, data_dir, samples, samples_per_class, seed, batch_size)
    return Loaded(loaded.model.eval(), spec, batches)


def reference_batches(data: DataBundle, data_dir: Path | str | None, samples: int,
                      samples_per_class: int | None = None, seed: int = 0,
                      batch_size: int = 64) -> list[tuple[Tensor, ...]]:
    """The criterion's reference batches: `data.reference(...)`, or, for an ImageFolder
    `data_dir` with a masks/ folder, (images, labels, masks) batches for `concept`."""
    from edgeprune.criteria.concept_masks import mask_batches
    from edgeprune.data import first_per_class

    if data.name == "imagefolder" and data_dir is not None:
        batches = mask_batches(data.train, Path(data_dir), samples, batch_size, seed)
        if batches is not None:
            return first_per_class(batches, samples_per_class) if samples_per_class else batches
    return data.reference(samples, samples_per_class, seed, batch_size)


@dataclass
class ScoreResult:
    """Per-layer scores (higher = keep), redundancy groups where the criterion has them,
    and the scoring time."""

    criterion: str
    scores: dict[str, Tensor]
    wall_s: float
    samples: int
    redundancy: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "wall_s": round(self.wall_s, 3),
                "samples": self.samples,
                "layers": {n: [round(float(v), 8) for v in s] for n, s in self.scores.items()},
                "order": {n: r.order.tolist() for n, r in self.redundancy.items()},
                "invalid": {n: r.invalid.nonzero().flatten().tolist()
                            for n, r in self.redundancy.items()}}

    def save(self, path: Path | str) -> Path:
        """JSON (or, for a .pt path, a torch file of the score tensors)."""
        from edgeprune.checkpoint import atomic_write_bytes, atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            buf = io.BytesIO()
            torch.save({n: v.cpu() for n, v in self.scores.items()}, buf)
            atomic_write_bytes(path, buf.getvalue())
        else:
            atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path


def score_loaded(loaded: Loaded, criterion: str, **options: object) -> ScoreResult:
    """Run `criterion` on an already loaded model and its reference batches."""
    crit = get_criterion(criterion, **options)
    if hasattr(crit, "input_shape") and crit.input_shape is None:
        crit.input_shape = loaded.spec.shape
    if crit.needs_data and not loaded.batches and not hasattr(crit, "input_shape"):
        raise EdgepruneError(f"criterion {criterion!r} needs reference samples (--samples > 0)")
    t0 = time.perf_counter()
    scores = crit.score(loaded.model, loaded.batches if crit.needs_data else None)
    wall = time.perf_counter() - t0
    samples = sum(len(b[0]) for b in loaded.batches) if crit.needs_data else 0
    return ScoreResult(criterion, scores, wall, samples, dict(getattr(crit, "redundancy", {})))


def score_model(model: str = "demo", criterion: str = "lrp", weights: Path | str | None = None,
                dataset: str = "auto", data_dir: Path | str | None = None,
                input_size: str | None = None, samples: int = 500, seed: int = 0,
                samples_per_class: int | None = None, **options: object) -> ScoreResult:
    """Load `model` with its reference data and score it with `criterion`."""
    get_criterion(criterion, **options)  # an unknown name or option fails before loading
    loaded = load_reference(model, weights, dataset, data_dir, input_size, samples, seed,
                            samples_per_class=samples_per_class)
    return score_loaded(loaded, criterion, **options)
