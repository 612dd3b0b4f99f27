"""CIFAR-10 from a local `cifar-10-batches-py` folder (the python-pickle release)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from edgeprune.data.bundle import DataBundle, bundle_from_arrays
from edgeprune.errors import EdgepruneError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def load_cifar10(data_dir: Path) -> DataBundle:
    """CIFAR-10 from a local 'cifar-10-batches-py' folder (or its parent)."""
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise EdgepruneError(
            f"CIFAR-10 batches missing in {root} ({', '.join(missing)}); pass --data-dir pointing "
            "at the extracted cifar-10-batches-py folder"
        )

    def read(name: str) -> dict:
        with open(root / name, "rb") as f:
            return pickle.load(f, encoding="bytes")  # noqa: S301 - the dataset's own format

    train = [read(n) for n in names[:5]]
    test = read("test_batch")
    labels = [f"class{i}" for i in range(10)]
    if (root / "batches.meta").exists():
        labels = [s.decode() for s in read("batches.meta")[b"label_names"]]
    arr = {
        "train_x": np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate([np.asarray(b[b"labels"]) for b in train]),
        "test_x": np.asarray(test[b"data"]).reshape(-1, 3, 32, 32),
        "test_y": np.asarray(test[b"labels"]),
    }
    return bundle_from_arrays("cifar10", arr, CIFAR10_MEAN, CIFAR10_STD, labels)

