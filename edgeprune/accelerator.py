"""Where the PyTorch work runs (`--accelerator auto|cpu|cuda`): scoring and fine-tuning use
CUDA when it is present and allowed; export, its verification against PyTorch and the
measurements stay on the CPU (the files run on CPU devices). On CUDA, training runs under
autocast (bfloat16 where the GPU supports it, else float16 with loss scaling) and convolution
networks in channels_last; both are undone before the model leaves the GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from edgeprune.errors import EdgepruneError

CHOICES = ("auto", "cpu", "cuda")
_state = {"choice": "auto"}


def use(choice: str) -> torch.device:
    """Select the accelerator for this process; an error when CUDA is asked for and absent."""
    if choice not in CHOICES:
        raise EdgepruneError(f"--accelerator {choice!r}: choose one of {', '.join(CHOICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise EdgepruneError("--accelerator cuda: this PyTorch sees no CUDA device "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is "
                             "False); install a CUDA build of torch or pass --accelerator cpu")
    _state["choice"] = choice
    return device()


def device() -> torch.device:
    """The device work runs on: CUDA (this process's GPU) when present and not turned off."""
    if _state["choice"] == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def training_dtype(on: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on `on`: None on the CPU (float32)."""
    if on.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(on: torch.device) -> AbstractContextManager[object]:
    """Mixed precision on CUDA (see `training_dtype`), nothing on the CPU."""
    dtype = training_dtype(on)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def channels_last(model: torch.nn.Module, on: torch.device) -> Iterator[torch.nn.Module]:
    """`model` in channels_last memory format while on CUDA with convolutions (faster there),
    back in the default format on exit, so exporters see ordinary tensors."""
    convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if on.type != "cuda" or not convs:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)

