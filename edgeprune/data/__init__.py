"""Datasets: Fashion-MNIST (IDX), CIFAR-10 (python pickles), ImageFolder trees, the embedded
demo subset and a synthetic set for tests, all behind one `load_dataset` call that returns a
`DataBundle` (train and test splits plus the InputSpec)."""

from __future__ import annotations

from pathlib import Path

from edgeprune.data.bundle import (
    ArrayImageDataset,
    DataBundle,
    balanced_indices,
    bundle_from_arrays,
    first_per_class,
    iterate_batches,
)
from edgeprune.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from edgeprune.data.fashion_mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_LABELS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FASHION_MNIST_URL,
    demo_subset_path,
    download_fashion_mnist,
    load_demo_subset,
    load_fashion_mnist,
    read_idx,
    write_demo_subset,
)
from edgeprune.data.imagefolder import load_imagefolder
from edgeprune.data.synthetic import make_synthetic
from edgeprune.errors import EdgepruneError

DATASETS = ("auto", "fashion-mnist", "demo", "cifar10", "imagefolder", "synthetic")

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "DATASETS", "FASHION_MNIST_DIR", "FASHION_MNIST_FILES",
    "FASHION_MNIST_LABELS", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_URL",
    "ArrayImageDataset", "DataBundle", "balanced_indices", "bundle_from_arrays",
    "demo_subset_path", "download_fashion_mnist", "first_per_class", "iterate_batches",
    "load_cifar10", "load_dataset", "load_demo_subset", "load_fashion_mnist", "load_imagefolder",
    "make_synthetic", "read_idx", "write_demo_subset",
]


def load_dataset(name: str = "auto", data_dir: Path | str | None = None,
                 input_size: tuple[int, int, int] | None = None, download: bool = True, *,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 skip_bad_images: bool = False, workers: int = 0, seed: int = 0) -> DataBundle:
    """Load a dataset by name.

    'auto' is the full Fashion-MNIST when its files are found (data_dir or the Debian
    location) and otherwise the embedded demo subset; it never downloads. `mean`/`std`
    replace the dataset's normalization (an ImageFolder tree's default is computed from its
    training images); `skip_bad_images`, `workers` and `seed` (the split of a tree without
    val/) apply to ImageFolder trees, which are read from files.
    """
    data_dir = Path(data_dir) if data_dir else None
    if name == "imagefolder":
        if data_dir is None:
            raise EdgepruneError("dataset 'imagefolder' needs --data-dir pointing at its files")
        return load_imagefolder(data_dir, input_size, mean, std, skip_bad_images, seed, workers)
    data = _in_memory(name, data_dir, input_size, download)
    return data.with_normalization(mean, std) if mean is not None and std is not None else data


def _in_memory(name: str, data_dir: Path | None, input_size: tuple[int, int, int] | None,
               download: bool) -> DataBundle:
    if name == "auto":
        fm_dir = data_dir or FASHION_MNIST_DIR
        if all((fm_dir / f).exists() for f in FASHION_MNIST_FILES.values()):
            return load_fashion_mnist(fm_dir, download=False)
        return load_demo_subset()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, download=download)
    if name == "demo":
        return load_demo_subset()
    if name == "synthetic":
        return make_synthetic(shape=input_size or (1, 16, 16))
    if name == "cifar10":
        if data_dir is None:
            raise EdgepruneError("dataset 'cifar10' needs --data-dir pointing at its files")
        return load_cifar10(data_dir)
    raise EdgepruneError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
