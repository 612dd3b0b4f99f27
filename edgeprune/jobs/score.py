"""`score_model`: what `edgeprune score` does: load a model and its reference data the way
`compress` does, run a criterion, time it; `ScoreResult` saves the scores as JSON or tensors."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edgeprune import accelerator
from edgeprune.criteria import get_criterion
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_bytes, atomic_write_text
from edgeprune.jobs.loading import Reference, load_reference


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            buf = io.BytesIO()
            torch.save({n: v.cpu() for n, v in self.scores.items()}, buf)
            atomic_write_bytes(path, buf.getvalue())
        else:
            atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path


def score_loaded(loaded: Reference, criterion: str, **options: object) -> ScoreResult:
    """Run `criterion` on an already loaded model and its reference batches, on the
    accelerator (`edgeprune.accelerator`)."""
    crit = get_criterion(criterion, **options)
    if hasattr(crit, "input_shape") and crit.input_shape is None:
        crit.input_shape = loaded.spec.shape
    if crit.needs_data and not loaded.batches and not hasattr(crit, "input_shape"):
        raise EdgepruneError(f"criterion {criterion!r} needs reference samples (--samples > 0)")
    t0 = time.perf_counter()
    scores = crit.score(loaded.model.to(accelerator.device()),
                        loaded.batches if crit.needs_data else None)
    scores = {name: values.cpu() for name, values in scores.items()}
    wall = time.perf_counter() - t0
    samples = sum(len(b[0]) for b in loaded.batches) if crit.needs_data else 0
    return ScoreResult(criterion, scores, wall, samples, dict(getattr(crit, "redundancy", {})))


def score_model(model: str = "demo", criterion: str = "lrp", weights: Path | str | None = None,
                samples: int = 500, seed: int = 0, samples_per_class: int | None = None,
                score_batch: int | None = None, criterion_options: dict[str, object] | None = None,
                accelerator_choice: str = "auto", **data: Any) -> ScoreResult:
    """Load `model` with its reference data (`score_batch` images a batch; None: auto) and
    score it with `criterion` (built with `criterion_options`). `data`: the data options of
    `jobs.loading.load_data`."""
    options = criterion_options or {}
    accelerator.use(accelerator_choice)
    get_criterion(criterion, **options)  # an unknown name or option fails before loading
    loaded = load_reference(model, weights, samples, seed, score_batch,
                            samples_per_class=samples_per_class, **data)
    return score_loaded(loaded, criterion, **options)
