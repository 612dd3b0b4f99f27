"""A learnable synthetic task for tests and examples (no files needed)."""

from __future__ import annotations

import torch

from edgeprune.data.bundle import ArrayImageDataset, DataBundle
from edgeprune.spec import InputSpec


def make_synthetic(num_classes: int = 4, shape: tuple[int, int, int] = (1, 16, 16),
                   n_train: int = 512, n_test: int = 256, seed: int = 0) -> DataBundle:
    """A learnable synthetic task: each class is a fixed smooth random pattern plus noise.

    Patterns are low-frequency and mirror-symmetric, so the training augmentation (small
    shifts, horizontal flips) keeps an image's class."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((num_classes, shape[0], 4, 4), generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear",
                                                align_corners=False)
    templates = (templates + templates.flip(-1)) / 2
    templates = (templates - templates.amin()) / (templates.amax() - templates.amin())

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        x = torch.empty((n, *shape), dtype=torch.uint8)
        for start in range(0, n, 64):  # float32 a chunk at a time (the same random stream)
            noise = torch.rand((len(y[start:start + 64]), *shape), generator=g)
            image = (0.6 * templates[y[start:start + 64]] + 0.4 * noise) * 255
            x[start:start + 64] = image.round().clamp(0, 255).to(torch.uint8)
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    labels = tuple(f"class{i}" for i in range(num_classes))
    return DataBundle("synthetic", ArrayImageDataset(xtr, ytr, mean, std),
                      ArrayImageDataset(xte, yte, mean, std), InputSpec(*shape, mean, std, labels))

