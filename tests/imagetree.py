"""Generated ImageFolder trees for the tests: what a user's own photo folders look like.

Each class is a shape (disc, square, bars) in a class colour on a noisy background, so a
small network can learn it; files mix PNG and JPEG, the modes grayscale, RGB, RGBA and
palette, odd sizes and aspect ratios, and class folders with nested subfolders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("bars", "disc", "square")
MODES = ("RGB", "L", "RGBA", "P")
COLOURS = {"bars": (220, 60, 40), "disc": (40, 200, 60), "square": (50, 80, 230)}


def draw(cls: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """One (height, width, 3) uint8 picture of class `cls`."""
    image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height / 2 + rng.uniform(-0.1, 0.1) * height, width / 2
    r = min(height, width) * rng.uniform(0.25, 0.35)
    if cls == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    elif cls == "square":
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    else:
        mask = (xx // max(2, width // 8)) % 2 == 0
    image[mask] = COLOURS[cls]
    return image


def save(array: np.ndarray, path: Path, mode: str) -> None:
    from PIL import Image

    image = Image.fromarray(array, "RGB")
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(255)
    elif mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=64)
    if path.suffix == ".jpg" and image.mode in ("RGBA", "P"):
        path = path.with_suffix(".png")  # JPEG holds neither alpha nor a palette
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_tree(root: Path, per_class: int = 12, splits: tuple[str, ...] = ("train", "val"),
              size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """Write a tree under `root`: `root/<split>/<class>/...` for each split, or the class
    folders directly under `root` when `splits` is empty."""
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for cls in CLASSES:
            for i in range(per_class):
                w = size[0] + int(rng.integers(-8, 9))
                h = size[1] + int(rng.integers(-8, 9))
                nested = "batch2/" if i % 3 == 2 else ""  # subfolders inside a class folder
                suffix = ".jpg" if i % 2 else ".png"
                path = root / split / cls / f"{nested}{cls}_{i:03d}{suffix}"
                save(draw(cls, w, h, rng), path, MODES[i % len(MODES)])
    return root


def tiny_net():
    """A small classifier for the generated trees at any input size (a user's own factory,
    given as --model imagetree:tiny_net)."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> list:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16, 4), *block(16, 32, 2), *block(32, 32, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(CLASSES)))
