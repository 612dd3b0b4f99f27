"""Datasets: IDX parsing, the local download path, CIFAR pickles, ImageFolder, demo subset."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    balanced_indices,
    download_fashion_mnist,
    load_dataset,
    load_demo_subset,
    read_idx,
)
from edgeprune.errors import EdgepruneError

HAVE_FMNIST = all((FASHION_MNIST_DIR / f).exists() for f in FASHION_MNIST_FILES.values())


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder: Path, n: int = 20) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for key, fname in FASHION_MNIST_FILES.items():
        shape = (n, 28, 28) if key.endswith("_x") else (n,)
        hi = 256 if key.endswith("_x") else 10
        write_idx(folder / fname, rng.integers(0, hi, shape))


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
    with pytest.raises(EdgepruneError, match="truncated"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "txt.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(EdgepruneError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "txt.gz")


def test_fashion_mnist_from_custom_folder(tmp_path):
    fake_fashion_mnist(tmp_path)
    data = load_dataset("fashion-mnist", tmp_path)
    x, y = data.train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
    assert data.spec.shape == (1, 28, 28) and data.spec.num_classes == 10


def test_download_uses_url_and_writes_atomically(tmp_path):
    src = tmp_path / "mirror"
    fake_fashion_mnist(src)
    dst = tmp_path / "data"
    download_fashion_mnist(dst, base_url=src.as_uri() + "/")
    assert sorted(p.name for p in dst.iterdir()) == sorted(FASHION_MNIST_FILES.values())
    np.testing.assert_array_equal(read_idx(dst / FASHION_MNIST_FILES["train_x"]),
                                  read_idx(src / FASHION_MNIST_FILES["train_x"]))


def test_failed_download_is_one_clear_error_and_leaves_nothing(tmp_path):
    dst = tmp_path / "data"
    with pytest.raises(EdgepruneError, match="dataset-fashion-mnist or pass --data-dir"):
        download_fashion_mnist(dst, base_url=(tmp_path / "nowhere").as_uri() + "/")
    assert list(dst.iterdir()) == []


def test_missing_dataset_without_download_names_the_fix(tmp_path):
    with pytest.raises(EdgepruneError, match="missing in"):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_cifar10_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": [0, 1, 2, 9]}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [
        f"c{i}".encode() for i in range(10)]}))
    data = load_dataset("cifar10", tmp_path)
    assert len(data.train) == 20 and len(data.test) == 4
    assert data.spec.shape == (3, 32, 32) and data.spec.labels[9] == "c9"
    raw = np.frombuffer(pickle.loads((root / "test_batch").read_bytes())[b"data"][0].tobytes(),
                        np.uint8).reshape(3, 32, 32)
    x, _ = data.test[0]
    expect = (raw / 255.0 - np.array(data.spec.mean)[:, None, None]) / np.array(
        data.spec.std)[:, None, None]
    np.testing.assert_allclose(x.numpy(), expect, atol=1e-5)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(tmp_path / split / cls /
                                                                   f"{i}.png")
    data = load_dataset("imagefolder", tmp_path, input_size=(3, 32, 32))
    assert data.spec.labels == ("cat", "dog") and data.spec.shape == (3, 32, 32)
    x, y = next(iter(data.loader("train", batch_size=4)))
    assert x.shape == (4, 3, 32, 32)


def test_demo_subset_is_balanced_fashion_mnist():
    data = load_demo_subset()
    assert len(data.train) == 2000 and len(data.test) == 5000
    assert torch.bincount(data.test.labels).tolist() == [500] * 10
    assert data.spec.labels[0] == "T-shirt/top"


def test_auto_falls_back_to_demo_subset(tmp_path):
    assert load_dataset("auto", tmp_path).name == "demo"


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian's dataset-fashion-mnist not installed")
def test_full_fashion_mnist_is_found_by_default():
    data = load_dataset("auto")
    assert data.name == "fashion-mnist" and len(data.train) == 60000 and len(data.test) == 10000


def test_balanced_indices_and_loader_limit(synthetic):
    idx = balanced_indices(synthetic.train.labels, 40, seed=1)
    assert torch.bincount(synthetic.train.labels[idx]).tolist() == [10] * 4
    batches = list(synthetic.loader("train", batch_size=16, limit=40))
    assert sum(len(b[1]) for b in batches) == 40


def test_unknown_dataset_lists_choices():
    with pytest.raises(EdgepruneError, match="choose one of"):
        load_dataset("mnist-fashion")
