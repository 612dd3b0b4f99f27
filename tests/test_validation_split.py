"""A validation split carved from the training images: seeded, class-balanced, disjoint from
what stays in train, for in-memory and file-backed datasets, carried through normalization and
recorded in describe() only when it exists."""

from __future__ import annotations

import json

import pytest
import torch
from imagetree import make_tree
from torch.utils.data import Dataset

from edgeprune.data import load_dataset
from edgeprune.data.bundle import (
    ArrayImageDataset,
    DataBundle,
    LabelledSubset,
    held_out_size,
    iterate_batches,
    validation_size,
)
from edgeprune.errors import EdgepruneError
from edgeprune.spec import InputSpec

CLASSES = 4


def indexed_images(n: int) -> ArrayImageDataset:
    """n images whose first two pixels spell their index, labels cycling over the classes."""
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) // 256
    images[:, 0, 0, 1] = torch.arange(n) % 256
    return ArrayImageDataset(images, torch.arange(n) % CLASSES, (0.5,), (0.25,))


def image_ids(ds: ArrayImageDataset) -> set[int]:
    return set((ds.images[:, 0, 0, 0].long() * 256 + ds.images[:, 0, 0, 1].long()).tolist())


def bundle(train: Dataset, test: Dataset | None = None) -> DataBundle:
    spec = InputSpec(1, 4, 4, (0.5,), (0.25,), tuple(str(c) for c in range(CLASSES)))
    return DataBundle("toy", train, test if test is not None else indexed_images(40), spec,
                      record={"source": "test"})


class FileLike(Dataset):
    """A stand-in for a file-backed dataset: item i is (a tensor holding i, its label)."""

    def __init__(self, n: int, with_targets: bool = True, scale: float = 1.0) -> None:
        self.n, self.with_targets, self.scale = n, with_targets, scale

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 4, 4), float(i) * self.scale), i % CLASSES

    def __getattr__(self, name: str):
        if name == "targets" and self.__dict__.get("with_targets"):
            return [i % CLASSES for i in range(self.n)]
        raise AttributeError(name)

    def with_normalization(self, mean, std) -> FileLike:
        return FileLike(self.n, self.with_targets, scale=1.0 / std[0])


def test_in_memory_split_is_balanced_disjoint_and_complete():
    data = bundle(indexed_images(400)).with_validation(100, seed=3)
    assert isinstance(data.val, ArrayImageDataset) and isinstance(data.train, ArrayImageDataset)
    assert len(data.val) == 100 and len(data.train) == 300
    assert torch.bincount(data.val.labels).tolist() == [25] * CLASSES
    assert not image_ids(data.val) & image_ids(data.train)
    assert image_ids(data.val) | image_ids(data.train) == set(range(400))
    assert data.val.mean.flatten().tolist() == [0.5] and data.val.std.flatten().tolist() == [0.25]


def test_split_is_seeded():
    base = bundle(indexed_images(400))
    a, b = base.with_validation(60, seed=1), base.with_validation(60, seed=1)
    assert image_ids(a.val) == image_ids(b.val)
    assert image_ids(base.with_validation(60, seed=2).val) != image_ids(a.val)
    assert len(base.train) == 400 and base.val is None  # the original is left alone


def test_val_is_read_by_split_of_and_loader():
    data = bundle(indexed_images(400)).with_validation(80, seed=0)
    assert data.split_of("val") is data.val
    assert len(data.split_of("val", limit=20)) == 20
    seen = sum(len(y) for _, y in iterate_batches(data.loader("val", batch_size=32)))
    assert seen == 80


def test_without_a_validation_split_val_is_an_error_naming_the_fix():
    data = bundle(indexed_images(40))
    with pytest.raises(EdgepruneError, match="with_validation"):
        data.split_of("val")
    with pytest.raises(EdgepruneError, match="no validation split"):
        data.loader("val")


@pytest.mark.parametrize("n", [0, -1, 40, 41])
def test_sizes_that_leave_no_training_image_are_refused(n):
    with pytest.raises(EdgepruneError, match="40 training images") as e:
        bundle(indexed_images(40)).with_validation(n, seed=0)
    assert "\n" not in str(e.value)


def test_a_second_split_is_refused():
    data = bundle(indexed_images(40)).with_validation(8, seed=0)
    with pytest.raises(EdgepruneError, match="already has a validation split"):
        data.with_validation(8, seed=0)


def test_normalization_carries_the_validation_split():
    data = bundle(indexed_images(400)).with_validation(40, seed=0)
    renormed = data.with_normalization((0.0,), (1.0,))
    assert image_ids(renormed.val) == image_ids(data.val)
    assert renormed.val.std.flatten().tolist() == [1.0]
    x_old, _ = data.val.__getitems__([0])
    x_new, _ = renormed.val.__getitems__([0])
    assert torch.allclose(x_new, x_old * 0.25 + 0.5)


def test_describe_is_unchanged_without_a_split_and_records_one_when_made():
    data = bundle(indexed_images(400))
    before = data.describe()
    assert json.dumps(before) == json.dumps(
        {"name": "toy", "train_images": 400, "test_images": 40, "spec": data.spec.to_dict(),
         "source": "test"})
    after = data.with_validation(100, seed=7).describe()
    assert after["train_images"] == 300
    assert after["validation_images"] == 100 and after["validation_seed"] == 7
    assert list(after)[:len(before)] == list(before)


def test_file_backed_split_keeps_targets_for_later_sampling():
    data = bundle(FileLike(200)).with_validation(40, seed=5)
    assert isinstance(data.train, LabelledSubset) and isinstance(data.val, LabelledSubset)
    assert not set(data.train.indices) & set(data.val.indices)
    assert len(data.train) + len(data.val) == 200
    assert torch.bincount(torch.tensor(data.val.targets)).tolist() == [10] * CLASSES
    assert data.train.targets == [i % CLASSES for i in data.train.indices]
    limited = data.split_of("train", limit=20, seed=1)  # class-balanced again, from .targets
    labels = [limited[i][1] for i in range(len(limited))]
    assert sorted(labels) == sorted([0, 1, 2, 3] * 5)
    assert set(limited.indices) <= set(range(len(data.train)))


def test_file_backed_split_renormalizes_through_the_subset():
    data = bundle(FileLike(100)).with_validation(20, seed=0).with_normalization((0.0,), (0.5,))
    x, _ = data.val[0]
    assert float(x[0, 0, 0]) == pytest.approx(data.val.indices[0] * 2.0)


def test_file_backed_split_without_targets_is_a_seeded_draw():
    base = bundle(FileLike(100, with_targets=False))
    data = base.with_validation(30, seed=2)
    assert not hasattr(data.val, "targets")
    assert not set(data.train.indices) & set(data.val.indices)
    assert set(data.train.indices) | set(data.val.indices) == set(range(100))
    assert data.val.indices == base.with_validation(30, seed=2).val.indices


def test_imagefolder_split(tmp_path):
    data = load_dataset("imagefolder", make_tree(tmp_path / "photos", per_class=6), (3, 16, 16))
    split = data.with_validation(6, seed=0)
    train_files = {data.train.samples[i][0] for i in split.train.indices}
    val_files = {data.train.samples[i][0] for i in split.val.indices}
    assert len(val_files) == 6 and not train_files & val_files
    assert sorted(split.val.targets) == [0, 0, 1, 1, 2, 2]
    x, y = next(iterate_batches(split.loader("val", batch_size=6)))
    assert x.shape == (6, 3, 16, 16) and len(y) == 6
    record = split.describe()
    assert record["train_images"] == 12 and record["validation_images"] == 6


@pytest.mark.parametrize(("train_images", "expected"), [
    (0, 0), (3, 0), (4, 1), (100, 25), (800, 200), (2000, 500), (3000, 600),
    (20_000, 4000), (60_000, 5000), (1_000_000, 5000),
])
def test_validation_size(train_images, expected):
    assert validation_size(train_images) == expected


def test_a_split_of_the_held_out_images_leaves_training_alone_and_says_so():
    data = bundle(indexed_images(400), indexed_images(40)).with_validation(
        held_out_size(40), seed=1, source="test")
    assert len(data.train) == 400 and len(data.val) == 20 and len(data.test) == 20
    assert not image_ids(data.val) & image_ids(data.test)
    assert image_ids(data.val) | image_ids(data.test) == set(range(40))
    record = data.describe()
    assert record["test_images"] == 20 and record["validation_from"].startswith("test")
    assert held_out_size(10_000) == 5000 and held_out_size(100_000) == 5000
