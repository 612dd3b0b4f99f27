"""The dataset container every stage takes: train and test splits of normalized images plus the
InputSpec a model trained on them carries, with seeded class-balanced sampling.

A bundle may also hold a validation split carved from the training images
(`DataBundle.with_validation`): seeded, class-balanced and disjoint from what stays in `train`,
so choices made on it (a schedule, a stopping point) never see the test images."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from edgeprune.errors import EdgepruneError
from edgeprune.spec import InputSpec


class ArrayImageDataset(Dataset):
    """uint8 images (N, C, H, W) held in memory, normalized on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._normalize(self.images[i : i + 1])[0], int(self.labels[i])

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched access: DataLoader calls this with a whole batch of indices."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return self._normalize(self.images[idx_t]), self.labels[idx_t]

    def subset(self, n: int, seed: int = 0, balanced: bool = True) -> ArrayImageDataset:
        """First-come class-balanced subset of n samples (deterministic for a seed)."""
        idx = balanced_indices(self.labels, n, seed) if balanced else torch.arange(n)
        return ArrayImageDataset(self.images[idx], self.labels[idx], self.mean.flatten().tolist(),
                                 self.std.flatten().tolist())

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]
                           ) -> ArrayImageDataset:
        """The same images normalized with another mean/std."""
        return ArrayImageDataset(self.images, self.labels, mean, std)


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of n samples spread evenly over classes, in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [p[torch.randperm(len(p), generator=g)] for p in per_class]
    take, k = [], 0
    while len(take) < min(n, len(labels)):
        for p in per_class:
            if k < len(p) and len(take) < n:
                take.append(int(p[k]))
        k += 1
    return torch.tensor(take, dtype=torch.long)


def check_normalization(mean: Sequence[float], std: Sequence[float], channels: int
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) as float tuples, or an error unless each has one value per channel and
    std is positive."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != channels or len(std) != channels:
        raise EdgepruneError(f"--mean/--std need {channels} values (one per input channel), "
                             f"got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise EdgepruneError(f"--std {','.join(map(str, std))} must be positive")
    return mean, std


def worker_start(workers: int) -> str | None:
    """How DataLoader worker processes start: forked (fast) unless JAX is loaded (the TFLite
    converter imports it), whose threads make a fork unsafe; then from a fresh server."""
    return "forkserver" if workers > 0 and "jax" in sys.modules else None


def _identity_collate(batch):
    return batch


VALIDATION_FRACTION = 0.20
"""Share of the training images `validation_size` sets aside, before its bounds."""
VALIDATION_MIN, VALIDATION_MAX = 500, 5000
"""Bounds on `validation_size`: enough images for a usable estimate, no more than it needs."""


def held_out_size(test_images: int) -> int:
    """Half the held-out images, at most VALIDATION_MAX: the decision half when the
    validation split comes from the test split (0 when there are fewer than 2)."""
    return min(test_images // 2, VALIDATION_MAX)


def validation_size(train_images: int) -> int:
    """How many of `train_images` to hold out for validation: 20% of them, at least 500 and at
    most 5000, but never more than a quarter (so a small training set stays mostly training);
    0 when there are fewer than 4 images. With a 1-point tolerance, 200 images (one image =
    0.5 points) would judge noise; the embedded demo's 2,000 give 500, full Fashion-MNIST's
    60,000 give 5,000."""
    share = max(int(train_images * VALIDATION_FRACTION), VALIDATION_MIN)
    return min(share, VALIDATION_MAX, train_images // 4)


class LabelledSubset(torch.utils.data.Subset):
    """A `Subset` that keeps its base's `.targets` (for class-balanced sampling later) and
    re-normalizes like its base."""

    @property
    def targets(self) -> list[int]:
        base = self.dataset.targets
        return [int(base[i]) for i in self.indices]

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]
                           ) -> LabelledSubset:
        """The same images of the base re-normalized with another mean/std."""
        return LabelledSubset(self.dataset.with_normalization(mean, std), self.indices)


def _split_off(ds: Dataset, n: int, seed: int) -> tuple[Dataset, Dataset]:
    """(the rest, `n` held-out samples) of `ds`: the held-out ones seeded and class-balanced
    (from `.targets` when a file-backed dataset has them, else a seeded draw), disjoint from
    the rest, which keeps its original order."""
    if isinstance(ds, ArrayImageDataset):
        held = balanced_indices(ds.labels, n, seed)
    elif getattr(ds, "targets", None) is not None:
        held = balanced_indices(torch.as_tensor(ds.targets), n, seed)
    else:
        g = torch.Generator().manual_seed(seed)
        held = torch.randperm(len(ds), generator=g)[:n]
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[held] = False
    rest = torch.nonzero(keep).flatten()
    if isinstance(ds, ArrayImageDataset):
        mean, std = ds.mean.flatten().tolist(), ds.std.flatten().tolist()
        return (ArrayImageDataset(ds.images[rest], ds.labels[rest], mean, std),
                ArrayImageDataset(ds.images[held], ds.labels[held], mean, std))
    subset = LabelledSubset if getattr(ds, "targets", None) is not None \
        else torch.utils.data.Subset
    return subset(ds, rest.tolist()), subset(ds, held.tolist())


@dataclass
class DataBundle:
    """A dataset's train and test splits plus the InputSpec models trained on it carry.

    `record` says what the dataset is made of (written to a run folder as dataset.json);
    `workers` DataLoader processes decode files-backed datasets (in-memory ones need none);
    `val`, when set by `with_validation`, holds training images kept out of `train`, drawn
    with `validation_seed`."""

    name: str
    train: Dataset
    test: Dataset
    spec: InputSpec
    record: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    val: Dataset | None = None
    validation_seed: int | None = None

    def loader(self, split: str, batch_size: int = 256, shuffle: bool = False,
               limit: int | None = None, seed: int = 0,
               sampler: Sampler | None = None) -> DataLoader:
        """A DataLoader over `split` ('train', 'val' or 'test'), optionally the first `limit`
        samples of a seeded class-balanced subset; `sampler` (e.g. a DistributedSampler over
        `self.split_of(...)`) replaces `shuffle`."""
        ds = self.split_of(split, limit, seed)
        g = torch.Generator().manual_seed(seed)
        order = {"sampler": sampler} if sampler is not None else {"shuffle": shuffle,
                                                                   "generator": g}
        if isinstance(ds, ArrayImageDataset):  # whole batches at once, in memory
            return DataLoader(ds, batch_size=batch_size, collate_fn=_identity_collate, **order)
        return DataLoader(ds, batch_size=batch_size, num_workers=self.workers,
                          pin_memory=torch.cuda.is_available(),
                          multiprocessing_context=worker_start(self.workers), **order)

    def split_of(self, split: str, limit: int | None = None, seed: int = 0) -> Dataset:
        """The dataset `loader` reads: `split`, or the first `limit` samples of a seeded
        class-balanced subset of it."""
        ds = self._split(split)
        return _limited(ds, limit, seed) if limit is not None and limit < len(ds) else ds

    def _split(self, split: str) -> Dataset:
        if split == "train":
            return self.train
        if split != "val":
            return self.test
        if self.val is None:
            raise EdgepruneError(f"dataset {self.name} has no validation split; carve one from "
                                 "the training images with DataBundle.with_validation(n, seed)")
        return self.val

    def with_validation(self, n: int, seed: int, source: str = "train") -> DataBundle:
        """A copy whose `val` is `n` seeded, class-balanced images of `source` ('train' or
        'test') and whose `source` split is the rest of them (no image in both); see
        `validation_size` and `held_out_size` for a default `n`."""
        if self.val is not None:
            raise EdgepruneError(f"dataset {self.name} already has a validation split of "
                                 f"{len(self.val)} images; carve it once")
        pool = self.train if source == "train" else self.test
        if not 1 <= n < len(pool):
            raise EdgepruneError(f"a validation split of {n} images needs 1 to "
                                 f"{len(pool) - 1}: dataset {self.name} has "
                                 f"{len(pool)} {'training' if source == 'train' else 'test'} "
                                 "images")
        rest, val = _split_off(pool, n, seed)
        record = self.record if source == "train" else self.record | {
            "validation_from": "test: the held-out images, split into a decision half "
                               "(validation) and a report half (test)"}
        return dataclasses.replace(self, **{source: rest}, val=val, validation_seed=seed,
                                   record=record)

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]
                           ) -> DataBundle:
        """The same data normalized with another mean/std (a model's own), spec updated."""
        mean, std = check_normalization(mean, std, self.spec.channels)
        if (mean, std) == (self.spec.mean, self.spec.std):
            return self
        spec = dataclasses.replace(self.spec, mean=mean, std=std)
        val = self.val.with_normalization(mean, std) if self.val is not None else None
        return dataclasses.replace(self, train=self.train.with_normalization(mean, std),
                                   test=self.test.with_normalization(mean, std), val=val,
                                   spec=spec)

    def describe(self) -> dict[str, Any]:
        """What the data is: name, split sizes, input spec, and the loader's record; with a
        validation split, its size and seed, and `train_images` counting what is left."""
        info = {"name": self.name, "train_images": len(self.train),
                "test_images": len(self.test), "spec": self.spec.to_dict(), **self.record}
        if self.val is None:
            return info
        # the loader's record counted the training images before the split
        return {**info, "train_images": len(self.train), "validation_images": len(self.val),
                "validation_seed": self.validation_seed}

    def reference(self, samples: int, per_class: int | None = None, seed: int = 0,
                  batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The reference images a criterion sees, in batches: `samples` class-balanced
        training images, or, with `per_class`, at most that many of each class (exactly that
        many when every class has them)."""
        if per_class is not None and per_class < 1:
            raise EdgepruneError(f"--samples-per-class {per_class} must be at least 1")
        n = per_class * self.spec.num_classes if per_class is not None else samples
        if n <= 0:
            return []
        batches = list(iterate_batches(self.loader("train", batch_size, limit=n, seed=seed)))
        if per_class is None or not batches:
            return batches
        x, y = first_per_class(batches, per_class)[0]
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def first_per_class(batches: list[tuple[torch.Tensor, ...]], n: int
                    ) -> list[tuple[torch.Tensor, ...]]:
    """The first `n` samples of every class found in the batches (labels second in each
    batch, any further fields kept alongside), as one batch in their original order."""
    fields = [torch.cat([b[i] for b in batches]) for i in range(len(batches[0]))]
    labels = fields[1]
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:n] for c in torch.unique(labels)])
    keep = keep.sort().values
    return [tuple(f[keep] for f in fields)]


def _limited(ds: Dataset, n: int, seed: int) -> Dataset:
    if isinstance(ds, ArrayImageDataset):
        return ds.subset(n, seed)
    targets = getattr(ds, "targets", None)
    if targets is not None:  # class-balanced, like the in-memory datasets
        return torch.utils.data.Subset(ds, balanced_indices(torch.as_tensor(targets), n,
                                                            seed).tolist())
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def iterate_batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) whatever collate the loader uses. A user error raised in a
    worker process (an unreadable image) arrives as its own one line, not the worker's
    traceback."""
    batches = iter(loader)
    while True:
        try:
            x, y = next(batches)
        except StopIteration:
            return
        except EdgepruneError as e:
            raise EdgepruneError(_worker_message(str(e))) from None
        yield x, torch.as_tensor(y)


def _worker_message(text: str) -> str:
    """The original message inside a DataLoader worker's re-raised traceback text."""
    last = text.strip().splitlines()[-1] if text.strip() else text
    return last.split("EdgepruneError: ", 1)[-1]


def bundle_from_arrays(name: str, arr: dict[str, np.ndarray], mean, std, labels) -> DataBundle:
    """A bundle from uint8 arrays `train_x`, `train_y`, `test_x`, `test_y` ((N, H, W) images
    get a channel axis). EdgepruneError when a split is empty, its images and labels differ
    in number, or a label is outside the classes."""
    for split in ("train", "test"):
        n_x, n_y = len(arr[f"{split}_x"]), len(arr[f"{split}_y"])
        if n_x != n_y:
            raise EdgepruneError(f"dataset {name}: the {split} split has {n_x} images but {n_y} "
                                 "labels; the files do not belong together")
        if n_x == 0:
            raise EdgepruneError(f"dataset {name}: the {split} split is empty")
        y = np.asarray(arr[f"{split}_y"])
        if y.min() < 0 or y.max() >= len(labels):
            raise EdgepruneError(f"dataset {name}: {split} labels run from {y.min()} to "
                                 f"{y.max()}, outside its {len(labels)} classes")

    def images(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(a, copy=True))
        return t.unsqueeze(1) if t.ndim == 3 else t

    train = ArrayImageDataset(images(arr["train_x"]), torch.from_numpy(arr["train_y"].astype(
        np.int64)), mean, std)
    test = ArrayImageDataset(images(arr["test_x"]), torch.from_numpy(arr["test_y"].astype(
        np.int64)), mean, std)
    c, h, w = train.images.shape[1:]
    spec = InputSpec(c, h, w, tuple(mean), tuple(std), tuple(labels))
    return DataBundle(name, train, test, spec)

