"""How an image file becomes a model input: decoded with Pillow, converted to the model's
channels (grayscale, RGB; alpha and palettes are flattened), resized so it covers the input
size and center-cropped to it, scaled to [0, 1] and normalized with the model's mean/std.

One implementation serves training data (`edgeprune.data.imagefolder`) and the `predict.py`
shipped to devices, which copies this file beside it: it imports only numpy and Pillow, so a
device needs neither torch nor edgeprune. The geometry is torchvision's `Resize(size)` then
`CenterCrop(size)` for a square input (the shorter side becomes `size`, the longer
`int(size * long / short)`, bilinear with Pillow's antialiasing); a non-square input is
covered the same way on both sides before the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODES = {1: "L", 3: "RGB"}
"""The Pillow mode a model with this many input channels reads."""


def open_image(path: str | Path) -> Any:
    """The decoded image at `path` (a Pillow Image, fully loaded). Raises OSError or
    ValueError when the file is not an image Pillow can read, or is truncated."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def to_mode(image: Any, channels: int) -> Any:
    """`image` with `channels` channels: 1 -> grayscale ("L"), 3 -> RGB. Transparent pixels
    are composited onto black; 16-bit and float grayscale are scaled to 8 bits."""
    from PIL import Image

    if channels not in MODES:
        raise ValueError(f"images can feed 1 or 3 input channels, not {channels}")
    mode = MODES[channels]
    if image.mode == mode:
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), "L")
    elif "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image.convert(mode)


def resized_size(width: int, height: int, out_h: int, out_w: int) -> tuple[int, int]:
    """(width, height) the image is resized to before the center crop."""
    if out_h == out_w:  # torchvision's Resize(int): shorter side to size, longer truncated
        short, long = sorted((width, height))
        new_short, new_long = out_h, int(out_h * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    scale = max(out_h / height, out_w / width)
    return max(out_w, round(width * scale)), max(out_h, round(height * scale))


def resize_and_crop(image: Any, out_h: int, out_w: int, nearest: bool = False) -> Any:
    """`image` resized to cover (out_h, out_w) and center-cropped to exactly that size
    (bilinear, or nearest-neighbour for masks)."""
    from PIL import Image

    size = resized_size(image.width, image.height, out_h, out_w)
    if size != (image.width, image.height):
        image = image.resize(size, Image.NEAREST if nearest else Image.BILINEAR)
    left = int(round((image.width - out_w) / 2.0))
    top = int(round((image.height - out_h) / 2.0))
    return image.crop((left, top, left + out_w, top + out_h))


def pixels(image: Any, channels: int, height: int, width: int) -> np.ndarray:
    """The (channels, height, width) uint8 array the model input is made of."""
    array = np.asarray(resize_and_crop(to_mode(image, channels), height, width), np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def normalize(array: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (C, H, W) or (N, C, H, W) pixels -> float32 (x / 255 - mean) / std per channel."""
    shape = (-1, 1, 1)
    m = np.asarray(mean, np.float32).reshape(shape)
    s = np.asarray(std, np.float32).reshape(shape)
    return ((array.astype(np.float32) / 255.0 - m) / s).astype(np.float32)


def model_input(path: str | Path, channels: int, height: int, width: int,
                mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The float32 (channels, height, width) input for the image file at `path`."""
    return normalize(pixels(open_image(path), channels, height, width), mean, std)
