"""Training and recovery fine-tuning, with optional knowledge distillation from the unpruned
model; checkpointed after every epoch and resumable."""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from edgeprune import accelerator, distributed
from edgeprune.console import info, progress_bar, warn
from edgeprune.data import DataBundle, iterate_batches
from edgeprune.files import atomic_write_bytes
from edgeprune.models.copying import clone


@dataclass
class TrainConfig:
    """Options of a training or fine-tuning run."""

    epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    augment: bool = True
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0
    label_smoothing: float = 0.0
    seed: int = 0
    train_limit: int | None = None
    monitor: bool = True
    """Evaluate on the test split after every epoch, for the history and the log only (no
    decision reads it); off where the test images must stay unseen, e.g. search trials."""


@dataclass
class TrainResult:
    """Per-epoch history (loss, test accuracy), the wall time, and the images trained on and
    the seconds the training steps took (evaluation excluded)."""

    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    images: int = 0
    train_s: float = 0.0

    @property
    def images_per_s(self) -> float | None:
        """Training throughput (forward, backward, step; data loading included)."""
        return self.images / self.train_s if self.train_s > 0 else None

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1]["test_acc"] if self.history else None


def default_device() -> torch.device:
    """CUDA when present and allowed (`--accelerator`; this process's GPU under torchrun),
    else the CPU."""
    return accelerator.device()


def random_crop_flip(x: torch.Tensor, pad: int = 2, generator=None) -> torch.Tensor:
    """Per-sample random translation (zero padding) and horizontal flip of a batch."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    i = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    j = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (i[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = xp[torch.arange(n, device=dev)[:, None, None, None],
             torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, split: str = "test", limit: int | None = None,
             batch_size: int = 512, description: str = "evaluating") -> float:
    """Top-1 accuracy (0-1) of `model` on a split."""
    loader = data.loader(split, batch_size=batch_size, limit=limit)
    with progress_bar(len(loader), description) as advance:
        return top1(model, iterate_batches(loader), advance)


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
         advance: Callable[[], Any] | None = None) -> float:
    """Top-1 accuracy (0-1) of `model`, in eval mode (its mode is restored), over batches of
    (images, labels); `advance` is called after each batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in batches:
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
            if advance is not None:
                advance()
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, t: float):
    """Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)."""
    kd = F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1),
                  reduction="batchmean") * (t * t)
    return alpha * kd + (1 - alpha) * F.cross_entropy(student_logits, labels)


def training_loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                  teacher: nn.Module | None) -> torch.Tensor:
    """Distillation from `teacher` when given, else cross-entropy with label smoothing."""
    if teacher is None:
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    with torch.no_grad():
        target = teacher(x)
    return distillation_loss(logits, target, y, cfg.kd_alpha, cfg.kd_temperature)


def optimize(loss: torch.Tensor, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler,
             scaler: torch.amp.GradScaler | None = None) -> None:
    """One optimizer and schedule step on `loss` (scaled by `scaler` under float16)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    sched.step()


def _save_state(path: Path, model, opt, sched, epoch: int, history: list) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch, "history": history}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path: Path, model, opt, sched, device) -> tuple[int, list]:
    """Load a saved training state. A state that is empty, corrupt or does not fit the model
    is discarded with a warning, leaving model, optimizer and schedule as they were, and
    training starts again."""
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
             copy.deepcopy(sched.state_dict()))
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if own != {k: tuple(v.shape) for k, v in state["model"].items()}:
            raise ValueError("saved for a model of another shape")
        epoch, history = int(state["epoch"]), list(state["history"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, the state is not used
        model.load_state_dict(saved[0])
        opt.load_state_dict(saved[1])
        sched.load_state_dict(saved[2])
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warn(f"discarding unusable training state {path} ({reason}); starting this stage "
             "again")
        return 0, []
    return epoch, history


def _train_epoch(net: nn.Module, loader: DataLoader, n_batches: int, cfg: TrainConfig,
                 teacher: nn.Module | None, device: torch.device, steppers: tuple,
                 generator: torch.Generator, advance: Callable[..., None]
                 ) -> tuple[float, int]:
    """One epoch's first `n_batches` steps; (summed loss, images seen)."""
    opt, sched, scaler = steppers
    total_loss, seen = 0.0, 0
    for b, (x, y) in enumerate(iterate_batches(loader)):
        if b >= n_batches:
            break
        if cfg.augment:
            x = random_crop_flip(x, generator=generator)
        x, y = x.to(device), y.to(device)
        if x.ndim == 4 and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast(device):
            loss = training_loss(net(x), x, y, cfg, teacher)
        optimize(loss, opt, sched, scaler)
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
        advance(status=f"loss {total_loss / seen:.3f}")
    return total_loss, seen


def train(model: nn.Module, data: DataBundle, config: TrainConfig | None = None,
          teacher: nn.Module | None = None, state_path: Path | None = None,
          description: str = "training", across_processes: bool = False) -> TrainResult:
    """Train `model` on `data.train` (SGD + cosine schedule, evaluated on `data.test` after
    every epoch). With `teacher`, the loss is knowledge distillation from it. With
    `state_path`, progress is saved there after each epoch and resumed from it if present.
    Fractional `epochs` (e.g. 0.5) train on that share of one epoch's batches.

    With `across_processes` inside a torchrun group, every process trains the same model
    under DistributedDataParallel on its share of each epoch (a DistributedSampler), with
    batch_size / processes images a step each, so a step sees `batch_size` images in all as
    in one process; only rank 0 writes `state_path`, every process resumes from it."""
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    spread = across_processes and distributed.active()
    device = default_device()
    model.to(device)
    if teacher is not None:
        teacher = clone(teacher).to(device).eval()
    sampler = DistributedSampler(data.split_of("train", cfg.train_limit, cfg.seed),
                                 shuffle=True, seed=cfg.seed) if spread else None
    batch_size = max(1, cfg.batch_size // distributed.world_size()) if spread else cfg.batch_size
    loader = data.loader("train", batch_size, shuffle=True, limit=cfg.train_limit,
                         seed=cfg.seed, sampler=sampler)
    n_epochs = max(1, math.ceil(cfg.epochs))
    steps_total = max(1, round(cfg.epochs * len(loader)))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps_total,
                                                pct_start=0.15 if cfg.epochs >= 3 else 0.05)
    result, start_epoch = TrainResult(), 0
    if state_path is not None and Path(state_path).exists():
        start_epoch, result.history = _resume(Path(state_path), model, opt, sched, device)
        if start_epoch:
            info(f"resuming {description} from {state_path} at epoch {start_epoch}")
    g = torch.Generator().manual_seed(cfg.seed + start_epoch + 1000 * distributed.rank())
    t0, step = time.perf_counter(), start_epoch * len(loader)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None) if spread else model
    scaler = torch.amp.GradScaler("cuda", enabled=accelerator.training_dtype(device)
                                  == torch.float16)
    with accelerator.channels_last(model, device):
        for epoch in range(start_epoch, n_epochs):
            model.train()
            if sampler is not None:
                sampler.set_epoch(epoch)
            n_batches = min(len(loader), steps_total - step)
            t_epoch = time.perf_counter()
            label = f"{description} epoch {epoch + 1}/{n_epochs}" + (
                f" ({cfg.epochs:g} epochs: {n_batches} of its {len(loader)} batches)"
                if n_batches < len(loader) else "")
            with progress_bar(n_batches, label) as bar:
                total_loss, seen = _train_epoch(net, loader, n_batches, cfg, teacher, device,
                                                (opt, sched, scaler), g, bar)
            step += n_batches
            result.train_s += time.perf_counter() - t_epoch
            result.images += int(distributed.all_reduce(torch.tensor(seen)).item()) if spread \
                else int(seen)
            acc = evaluate(model, data, "test", description="  test accuracy") \
                if cfg.monitor else None
            result.history.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1),
                                   "test_acc": acc})
            shown = f", test top-1 {acc * 100:.2f}%" if acc is not None else ""
            info(f"{label}: loss {total_loss / max(seen, 1):.4f}{shown}")
            if state_path is not None and distributed.is_main():
                _save_state(Path(state_path), model, opt, sched, epoch + 1, result.history)
    result.wall_s = time.perf_counter() - t0
    model.eval()
    return result


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
