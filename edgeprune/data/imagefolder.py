"""ImageFolder trees: `root/train/<class>/*` plus `root/val/` (or `test/`), or class folders
directly under `root` with 10% of each class held out."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.data.bundle import DataBundle, balanced_indices
from edgeprune.errors import EdgepruneError
from edgeprune.spec import InputSpec


def load_imagefolder(root: Path, input_size: tuple[int, int, int] | None = None) -> DataBundle:
    """An ImageFolder tree: root/train/<class>/*.png and root/val/ (or test/); with no split
    folders the class folders sit at root and 10% of each class is held out for testing."""
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise EdgepruneError(f"image folder {root} does not exist; pass --data-dir")
    c, h, w = input_size or (3, 224, 224)
    imagenet = c == 3  # ImageNet statistics for RGB, a neutral 0.5/0.5 otherwise
    mean = (0.485, 0.456, 0.406) if imagenet else (0.5,) * c
    std = (0.229, 0.224, 0.225) if imagenet else (0.5,) * c
    tf = transforms.Compose([
        transforms.Grayscale(c) if c == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize((h, w)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    try:
        if (root / "train").is_dir() and test_dir is not None:
            train = datasets.ImageFolder(root / "train", tf)
            test = datasets.ImageFolder(test_dir, tf)
            classes = train.classes
        else:
            full = datasets.ImageFolder(root, tf)
            classes = full.classes
            targets = torch.tensor(full.targets)
            test_idx = balanced_indices(targets, max(len(classes), len(full) // 10), seed=0)
            mask = torch.ones(len(full), dtype=torch.bool)
            mask[test_idx] = False
            train = torch.utils.data.Subset(full, torch.nonzero(mask).flatten().tolist())
            test = torch.utils.data.Subset(full, test_idx.tolist())
    except (FileNotFoundError, RuntimeError) as e:
        raise EdgepruneError(f"{root} is not an ImageFolder tree ({e})") from None
    return DataBundle("imagefolder", train, test, InputSpec(c, h, w, mean, std, tuple(classes)))

