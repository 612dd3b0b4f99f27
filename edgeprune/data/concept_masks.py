"""Real concept masks for `concept`, read from beside an ImageFolder dataset.

Convention: for an image at ROOT/<relative path> (ROOT is the `--data-dir` folder, e.g.
ROOT/train/cat/001.jpg), its mask is ROOT/masks/<relative path with the suffix .png>
(ROOT/masks/train/cat/001.png): a grayscale PNG of any size where non-zero pixels mark the
concept (object part or segmentation). Masks are resized and center-cropped exactly like
their image (nearest-neighbour sampling). Either every sampled image has a mask or none does
(then `concept` falls back to Grad-CAM masks). A top-level masks/ folder is never read as a
class, so both the flat and the train/ + val/ layouts can carry masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from edgeprune.data.preprocess import resize_and_crop
from edgeprune.errors import EdgepruneError


def mask_path(root: Path, image: Path) -> Path:
    """Where the mask of `image` (a path under `root`) lives."""
    relative = Path(image).resolve().relative_to(Path(root).resolve())
    return Path(root) / "masks" / relative.with_suffix(".png")


def load_mask(path: Path, size: tuple[int, int]) -> Tensor:
    """A mask PNG as a (H, W) bool tensor of the given size, resized and cropped exactly as
    its image is (nearest-neighbour)."""
    from PIL import Image

    with Image.open(path) as im:
        im = resize_and_crop(im.convert("L"), size[0], size[1], nearest=True)
        return torch.from_numpy(np.asarray(im) > 0)


def _image_paths(dataset: Dataset) -> tuple[Dataset, list[str]]:
    """(the dataset, the file path of each of its samples) for ImageFolder or a Subset of it."""
    if isinstance(dataset, Subset):
        _, paths = _image_paths(dataset.dataset)
        return dataset, [paths[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise EdgepruneError("concept masks need an ImageFolder dataset (one with file paths)")
    return dataset, [p for p, _ in samples]


def mask_batches(dataset: Dataset, root: Path, n: int, batch_size: int = 64,
                 seed: int = 0) -> list[tuple[Tensor, Tensor, Tensor]] | None:
    """(images, labels, masks) batches of `n` seeded random samples of an ImageFolder dataset
    under `root`, or None when `root` has no masks/ folder."""
    if not (Path(root) / "masks").is_dir():
        return None
    dataset, paths = _image_paths(dataset)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:n]
    missing = [paths[i] for i in order.tolist() if not mask_path(root, Path(paths[i])).exists()]
    if missing:
        raise EdgepruneError(f"{root}/masks exists but has no mask for {missing[0]} (and "
                             f"{len(missing) - 1} more); expected {mask_path(root, missing[0])}")
    batches = []
    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size].tolist()]
        x = torch.stack([im for im, _ in items])
        y = torch.tensor([label for _, label in items])
        m = torch.stack([load_mask(mask_path(root, Path(paths[i])), tuple(x.shape[-2:]))
                         for i in order[start:start + batch_size].tolist()])
        batches.append((x, y, m))
    return batches
