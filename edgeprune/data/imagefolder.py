"""A user's own images: an ImageFolder tree of class folders.

Layouts: `root/train/<class>/...` plus `root/val/` (or `root/test/`) with the same classes; or
class folders directly under `root` (or only `root/train/`), split into train and val per class
with a seed, the split recorded. Class folders may nest: every image below a class folder
belongs to it. Images of any mode (grayscale, RGB, RGBA, palette, 16-bit) are converted to the
model's channels, resized to cover the input size and center-cropped (`preprocess`). The
normalization is `mean`/`std` when given, else the per-channel statistics of up to
`STATS_IMAGES` training images.

Every file's header is read when the tree is loaded, so a file that is not an image fails
before any work starts; `skip_bad_images` decodes every file instead and leaves out (and
records) the ones that fail. An image that fails later, while decoding, is one
EdgepruneError naming the file. Two kinds of hostile input are named as such: a symlink that
leads back to a folder above it (a loop, which would make the walk endless), and a
decompression bomb, a small file whose header declares more than `MAX_IMAGE_PIXELS` pixels;
`skip_bad_images` leaves both out and counts them with the unreadable files.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeprune.console import info, progress_bar
from edgeprune.data.bundle import DataBundle, check_normalization, worker_start
from edgeprune.data.preprocess import normalize, open_image, pixels
from edgeprune.errors import EdgepruneError
from edgeprune.spec import InputSpec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm",
                            ".tif", ".tiff", ".webp"})
STATS_IMAGES = 1000
"""Training images the default mean/std are computed from (a seeded sample)."""
VAL_FRACTION = 0.1
"""Share of each class held out for validation when the tree has no val/ or test/ folder."""
RESERVED = frozenset({"masks"})
"""Top-level folders that are never classes (`masks/` holds concept masks)."""
MAX_IMAGE_PIXELS = 89_478_485
"""Pixels an image's header may declare (Pillow's own default limit, about 0.25 GB of RGB):
more is refused as a decompression bomb before it is decoded."""


@dataclass
class ImageFolderDataset(Dataset):
    """Image files and their class indices, decoded and preprocessed on access."""

    samples: list[tuple[str, int]]
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized: bool = True

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({len(self.samples)} images, shape={self.shape}, "
                f"mean={self.mean}, std={self.std})")

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        array = read_pixels(path, self.shape)
        if not self.normalized:
            return torch.from_numpy(array.astype(np.float32) / 255.0), label
        return torch.from_numpy(normalize(array, self.mean, self.std)), label

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]
                           ) -> ImageFolderDataset:
        return ImageFolderDataset(self.samples, self.shape, tuple(mean), tuple(std))


def bad_image(path: str | Path, error: BaseException) -> EdgepruneError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return EdgepruneError(f"cannot read image {path}: {reason}; replace or remove the file, or "
                          "pass --skip-bad-images")


def bomb(path: str | Path, declared: str) -> EdgepruneError:
    """The error for a file whose header declares (`declared`, e.g. '30000x30000') more than
    MAX_IMAGE_PIXELS pixels."""
    return EdgepruneError(f"image {path} declares {declared} pixels, more than the "
                          f"{MAX_IMAGE_PIXELS:,} allowed: a decompression bomb or a corrupt "
                          "header; replace or remove the file, or pass --skip-bad-images")


def check_size(path: str | Path, image: Any) -> None:
    """EdgepruneError (`bomb`) when opened `image` declares more than MAX_IMAGE_PIXELS."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise bomb(path, f"{width}x{height}")


def open_checked(path: str | Path) -> Any:
    """Pillow's lazily opened image at `path` (header read, pixels not yet decoded), its
    declared size checked against MAX_IMAGE_PIXELS; the caller closes it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow warns up to twice its limit: refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as e:  # over twice Pillow's limit: no .size to read
        raise bomb(path, _declared(e)) from None
    try:
        check_size(path, image)
    except EdgepruneError:
        image.close()
        raise
    return image


def _declared(error: Exception) -> str:
    """The pixel count in Pillow's DecompressionBombError ('Image size (N pixels) exceeds')."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)):,}" if found else "too many"


def read_pixels(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The (C, H, W) uint8 pixels of one file, or one EdgepruneError naming it. The tree's
    files had their declared size checked when it was loaded (`check_headers`)."""
    from PIL import Image

    try:
        return pixels(open_image(path), *shape)
    except Image.DecompressionBombError as e:
        raise bomb(path, _declared(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # what Pillow raises on bad data
        raise bad_image(path, e) from None


@dataclass
class Tree:
    """What was found on disk: the class names and the (file, class) samples of each split."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    layout: str
    record: dict[str, Any] = field(default_factory=dict)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _class_folders(folder: Path, top_level: bool) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [n for n in names if not (top_level and n in RESERVED)]


def _folder_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows links: the folder a link leads to
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _images_below(folder: Path, loops: list[str] | None = None) -> list[str]:
    """Every image file below `folder`, nested folders and linked folders included, in a
    stable order (os.walk's, top-down). A symlink that leads back to a folder above it (one
    it was reached through, or one holding `folder`) is a loop: an EdgepruneError naming it
    or, when `loops` is given, left out and appended there. A folder reached twice through
    links is read once."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    holding = tuple(filter(None, map(_folder_id, map(str, Path(folder).resolve().parents))))
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(str(folder), holding)]
    while stack:
        path, above = stack.pop()
        here = _folder_id(path)
        if here is None or here in seen:
            continue
        seen.add(here)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue  # unreadable folders are skipped, as os.walk does
        children = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if not _is_folder(entry):
                if _is_image(entry.name):
                    found.append(entry.path)
            elif _folder_id(entry.path) in (*above, here):
                _loop(entry.path, loops)
            else:
                children.append((entry.path, (*above, here)))
        stack += reversed(children)
    return found


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; False for a link that loops on itself
    except OSError:
        return False


def _loop(path: str, loops: list[str] | None) -> None:
    if loops is None:
        raise EdgepruneError(f"{path} is a symlink loop: it leads back to a folder above it; "
                             "remove the link, or pass --skip-bad-images")
    loops.append(path)


def _samples(folder: Path, classes: list[str], loops: list[str] | None = None
             ) -> list[tuple[str, int]]:
    samples = []
    for index, name in enumerate(classes):
        files = _images_below(folder / name, loops)
        if not files:
            raise EdgepruneError(f"class folder {folder / name} holds no images ("
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove it")
        samples += [(f, index) for f in files]
    return samples


def _check_same_classes(train: Path, val: Path, a: list[str], b: list[str]) -> None:
    if a == b:
        return
    only_train, only_val = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    parts = [f"only in {train.name}/: {', '.join(only_train)}" if only_train else "",
             f"only in {val.name}/: {', '.join(only_val)}" if only_val else ""]
    raise EdgepruneError(f"{train} and {val} have different classes "
                         f"({'; '.join(p for p in parts if p)}); give both the same class "
                         "folders")


def _split(samples: list[tuple[str, int]], fraction: float, seed: int
           ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """A seeded per-class split: `fraction` of each class (at least one image of a class
    with two or more) goes to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({lab for _, lab in samples}):
        members = [s for s in samples if s[1] == label]
        order = rng.permutation(len(members))
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        held = set(order[:n_val].tolist())
        for i, s in enumerate(members):
            (val if i in held else train).append(s)
    return train, val


def find_tree(root: Path, val_fraction: float = VAL_FRACTION, seed: int = 0,
              skip_loops: bool = False) -> Tree:
    """The classes and the train/val samples of the tree at `root` (see the module doc).
    A symlink loop is an error, or with `skip_loops` left out and listed in
    `record["symlink_loops"]`."""
    loops: list[str] | None = [] if skip_loops else None
    if root.is_file():
        raise EdgepruneError(f"image folder {root} is a file; pass the folder that holds one "
                             "folder per class as --data-dir")
    if not root.is_dir():
        raise EdgepruneError(f"image folder {root} does not exist; pass --data-dir")
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    train_dir = root / "train"
    if val_dir is not None and not train_dir.is_dir():
        raise EdgepruneError(f"{root} has {val_dir.name}/ but no train/; add train/<class>/ "
                             "folders, or put the class folders directly in it")
    if val_dir is not None:
        classes = _class_folders(train_dir, False)
        _check_same_classes(train_dir, val_dir, classes, _class_folders(val_dir, False))
        layout = f"train/ and {val_dir.name}/"
        tree = Tree(classes, [], [], layout)
        tree.train, tree.val = _samples(train_dir, classes, loops), _samples(val_dir, classes,
                                                                             loops)
    else:
        folder = train_dir if train_dir.is_dir() else root
        classes = _class_folders(folder, folder == root)
        if len(classes) < 2:
            raise EdgepruneError(f"{folder} needs one folder per class (at least two), e.g. "
                                 f"{folder}/cat/*.jpg and {folder}/dog/*.jpg")
        tree = Tree(classes, [], [], f"{'train/' if folder == train_dir else 'class folders'}"
                    f" split {1 - val_fraction:.0%}/{val_fraction:.0%} with seed {seed}")
        tree.train, tree.val = _split(_samples(folder, classes, loops), val_fraction, seed)
        tree.record["split"] = {"seed": seed, "val_fraction": val_fraction,
                                "val_files": [os.path.relpath(p, root) for p, _ in tree.val]}
    if len(tree.classes) < 2:
        raise EdgepruneError(f"{root} has {len(tree.classes)} class folder; a classifier needs "
                             "at least two")
    if loops:
        tree.record["symlink_loops"] = [os.path.relpath(p, root) for p in loops]
    return tree


def check_headers(samples: list[tuple[str, int]]) -> None:
    """Open every file and read its header: what is not an image fails here, before any
    work, with one error naming the file."""
    for path, _ in samples:
        try:
            with open_checked(path):
                pass  # reading the header and its declared size is the check
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise bad_image(path, e) from None


class _Decoded(Dataset):
    """Whether each file decodes (for --skip-bad-images), one file per item."""

    def __init__(self, samples: list[tuple[str, int]], shape: tuple[int, int, int]) -> None:
        self.samples, self.shape = samples, shape

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> bool:
        try:
            check_headers([self.samples[i]])  # a decompression bomb is refused undecoded
            read_pixels(self.samples[i][0], self.shape)
            return True
        except EdgepruneError:
            return False


def without_bad_images(samples: list[tuple[str, int]], shape: tuple[int, int, int],
                       workers: int, what: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(the samples that decode, the files that do not), decoding every file once."""
    loader = DataLoader(_Decoded(samples, shape), batch_size=32, num_workers=workers,
                        collate_fn=list, multiprocessing_context=worker_start(workers))
    ok: list[bool] = []
    with progress_bar(len(samples), f"checking {what} images") as advance:
        for batch in loader:
            ok += batch
            advance(len(batch))
    return [s for s, good in zip(samples, ok, strict=True) if good], \
        [p for (p, _), good in zip(samples, ok, strict=True) if not good]


def channel_stats(dataset: ImageFolderDataset, limit: int, seed: int, workers: int
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the [0, 1] pixels of `limit` seeded training images."""
    raw = ImageFolderDataset(dataset.samples, dataset.shape, dataset.mean, dataset.std,
                             normalized=False)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(raw), generator=g)[:limit].tolist()
    loader = DataLoader(torch.utils.data.Subset(raw, pick), batch_size=32, num_workers=workers,
                        multiprocessing_context=worker_start(workers))
    total = torch.zeros(dataset.shape[0], dtype=torch.float64)
    squares, count = torch.zeros_like(total), 0
    with progress_bar(len(pick), "image statistics") as advance:
        for x, _ in loader:
            x = x.double()
            total += x.sum((0, 2, 3))
            squares += (x * x).sum((0, 2, 3))
            count += x.numel() // x.shape[1]
            advance(len(x))
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt().clamp(min=1 / 255)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def load_imagefolder(root: Path | str, input_size: tuple[int, int, int] | None = None,
                     mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                     skip_bad_images: bool = False, seed: int = 0, workers: int = 0,
                     val_fraction: float = VAL_FRACTION) -> DataBundle:
    """The ImageFolder tree at `root` as a DataBundle (see the module doc); `input_size`
    (C, H, W) defaults to 3x224x224; `workers` DataLoader processes decode the images."""
    root = Path(root)
    shape = input_size or (3, 224, 224)
    if shape[0] not in (1, 3):
        raise EdgepruneError(f"--input-size {'x'.join(map(str, shape))}: images feed 1 "
                             "(grayscale) or 3 (RGB) channels")
    if mean is not None and std is not None:
        mean, std = check_normalization(mean, std, shape[0])
    tree = find_tree(root, val_fraction, seed, skip_loops=skip_bad_images)
    skipped: list[str] = []
    if skip_bad_images:
        tree.train, bad_train = without_bad_images(tree.train, shape, workers, "training")
        tree.val, bad_val = without_bad_images(tree.val, shape, workers, "validation")
        skipped = [os.path.relpath(p, root) for p in bad_train + bad_val]
        skipped += tree.record.get("symlink_loops", [])
        if skipped:
            info(f"data: skipped {len(skipped)} unreadable image"
                 f"{'s' if len(skipped) > 1 else ''} (e.g. {skipped[0]})")
        if not tree.train or not tree.val:
            raise EdgepruneError(f"{root}: no readable images left in "
                                 f"{'train' if not tree.train else 'val'}")
    else:
        check_headers(tree.train + tree.val)
    neutral = (0.0,) * shape[0], (1.0,) * shape[0]
    train = ImageFolderDataset(tree.train, shape, *neutral)
    computed = mean is None or std is None
    if computed:
        mean, std = channel_stats(train, STATS_IMAGES, seed, workers)
    spec = InputSpec(*shape, tuple(mean), tuple(std), tuple(tree.classes))
    record = {"root": str(root), "layout": tree.layout, "classes": tree.classes,
              "train_images": len(tree.train), "val_images": len(tree.val),
              "normalization": (f"mean/std of {min(STATS_IMAGES, len(train))} training images"
                                if computed else "given"),
              "skipped_images": skipped, **tree.record}
    return DataBundle("imagefolder", train.with_normalization(spec.mean, spec.std),
                      ImageFolderDataset(tree.val, shape, spec.mean, spec.std), spec,
                      record=record, workers=workers)
