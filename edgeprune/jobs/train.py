"""`edgeprune train`: train a model on a dataset and save it as an edgeprune checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune import accelerator
from edgeprune.console import info
from edgeprune.jobs.checks import check_options, check_output_file
from edgeprune.jobs.loading import load_model_and_data
from edgeprune.models.checkpoint import save_checkpoint
from edgeprune.training import TrainConfig, train


def train_model(model: str = "democnn", out: Path = Path("model.pt"), weights: Path | None = None,
                dataset: str = "fashion-mnist", epochs: float = 20, lr: float = 0.1,
                batch_size: int = 128, seed: int = 0, overwrite: bool = False,
                accelerator_choice: str = "auto", **data: Any) -> dict:
    """Train `model` on `dataset` and write an edgeprune checkpoint to `out` (atomically).
    `data`: the other data options of `jobs.loading.load_data` (data_dir, input_size, ...).

    Training state is kept beside `out` (`<out>.state`) after every epoch, so an interrupted
    run continues where it stopped when the same command is run again."""
    out = Path(out)
    check_output_file(out, overwrite)
    accelerator.use(accelerator_choice)
    check_options(("--epochs", epochs, epochs > 0, "a positive number of epochs, e.g. 20"),
                  ("--lr", lr, lr > 0, "a positive learning rate, e.g. 0.1"),
                  ("--batch-size", batch_size, batch_size >= 1, "at least 1"))
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      label_smoothing=0.1)
    md = load_model_and_data(model, weights, dataset, seed=seed, **data)
    loaded = md.loaded
    state_path = out.with_name(out.name + ".state")
    result = train(loaded.model, md.data, cfg, state_path=state_path)
    meta = {"trained_on": md.data.name, "test_acc": result.final_accuracy, "epochs": epochs,
            "history": result.history, "train_config": cfg.__dict__}
    save_checkpoint(out, loaded.model.cpu(), loaded.arch, md.spec, meta)
    state_path.unlink(missing_ok=True)
    info(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return {"out": str(out), "test_acc": result.final_accuracy, "epochs": epochs,
            "wall_s": result.wall_s, "history": result.history}
