"""`edgeprune train`: train a model on a dataset and save it as an edgeprune checkpoint."""

from __future__ import annotations

from pathlib import Path

from edgeprune.console import info
from edgeprune.data import load_dataset
from edgeprune.errors import EdgepruneError
from edgeprune.models import load_model
from edgeprune.models.checkpoint import save_checkpoint
from edgeprune.spec import parse_input_size
from edgeprune.training import TrainConfig, train


def train_model(model: str = "democnn", out: Path = Path("model.pt"), weights: Path | None = None,
                dataset: str = "fashion-mnist", data_dir: Path | None = None,
                input_size: str | None = None, epochs: float = 20, lr: float = 0.1,
                batch_size: int = 128, seed: int = 0, overwrite: bool = False) -> dict:
    """Train `model` on `dataset` and write an edgeprune checkpoint to `out` (atomically).

    Training state is kept beside `out` (`<out>.state`) after every epoch, so an interrupted
    run continues where it stopped when the same command is run again."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgepruneError(f"{out} already exists; pass --overwrite or choose another --out")
    size = parse_input_size(input_size) if input_size else None
    data = load_dataset(dataset, data_dir, size)
    loaded = load_model(model, weights, in_channels=data.spec.channels,
                        num_classes=data.spec.num_classes)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      label_smoothing=0.1)
    state_path = out.with_name(out.name + ".state")
    result = train(loaded.model, data, cfg, state_path=state_path)
    meta = {"trained_on": data.name, "test_acc": result.final_accuracy, "epochs": epochs,
            "history": result.history, "train_config": cfg.__dict__}
    save_checkpoint(out, loaded.model.cpu(), loaded.arch, data.spec, meta)
    state_path.unlink(missing_ok=True)
    info(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return {"out": str(out), "test_acc": result.final_accuracy, "epochs": epochs,
            "wall_s": result.wall_s, "history": result.history}
