"""The small evaluation batch shipped beside an exported model for `runner.py --eval`.

`<stem>.samples.npz` holds `x` (float32, N x C x H x W, already normalized with the model's
mean/std) and `y` (int64 labels). One file serves every format of the same stem
(`dense.onnx` and `dense.tflite` both read `dense.samples.npz`). numpy only, so the export
stage can call it without pulling in anything else.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgeprune.devices.runner import (
    RunnerError,
    default_samples_path,
    load_samples,
    sidecar_path,
)
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_bytes

__all__ = ["default_samples_path", "read_eval_samples", "sidecar_path", "write_eval_samples"]


def write_eval_samples(path: Path | str, x: np.ndarray, y: np.ndarray) -> Path:
    """Write the eval batch atomically (temporary file + rename) and return its path.

    `path` is the .npz file itself, usually `default_samples_path(model_file)`. `x` may be a
    torch tensor or any array-like; it is stored as float32, `y` as int64.
    """
    path = Path(path)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise EdgepruneError(f"eval samples need x (N, C, H, W) and y (N,) with N > 0, got x "
                             f"{x.shape} and y {y.shape}")
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_eval_samples(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) of an eval batch, checked exactly as the runner checks it."""
    try:
        return load_samples(Path(path))
    except RunnerError as e:
        raise EdgepruneError(str(e)) from None
