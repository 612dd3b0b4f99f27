"""CIFAR-10 from a local `cifar-10-batches-py` folder (the python-pickle release).

The batches are pickles, so they are read with an unpickler that builds only what the release
holds (dicts, lists, bytes, numbers and numpy arrays) and refuses anything else: a file in
the folder cannot run code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.data.bundle import DataBundle, bundle_from_arrays
from edgeprune.errors import EdgepruneError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    import codecs

    return {("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler for data files: plain containers and numpy arrays, no other globals."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the file holds "
                                         "more than data") from None


def read_data_pickle(path: Path) -> Any:
    """The contents of pickle file `path` if it holds only data (see ArraysOnlyUnpickler);
    EdgepruneError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            return ArraysOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise EdgepruneError(f"cannot read CIFAR-10 batch {path}: {e}; replace it with the "
                             "file from the cifar-10-python.tar.gz release") from None


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
        return read_data_pickle(root / name)

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

