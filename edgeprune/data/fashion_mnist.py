"""Fashion-MNIST from its IDX .gz files (Debian's dataset-fashion-mnist, a --data-dir, or the
official URL when the network allows), and the small subset shipped inside the package for the
no-argument demo."""

from __future__ import annotations

import gzip
import shutil
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np

from edgeprune.data.bundle import DataBundle, balanced_indices, bundle_from_arrays
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_writer

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
DEMO_SUBSET = "fashion_mnist_subset.npz"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise EdgepruneError(f"cannot read IDX file {path}: {e}; re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise EdgepruneError(f"{path} is not an unsigned-byte IDX file; re-download it")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise EdgepruneError(f"{path} is truncated ({body.size} of {np.prod(dims)} bytes)")
    return body.reshape(dims)


def download_fashion_mnist(data_dir: Path, base_url: str = FASHION_MNIST_URL,
                           timeout: float = 30.0) -> None:
    """Fetch the four official files into data_dir (each written atomically)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for fname in FASHION_MNIST_FILES.values():
        target = data_dir / fname
        if target.exists():
            continue
        try:
            with atomic_writer(target) as out, urllib.request.urlopen(base_url + fname,
                                                                      timeout=timeout) as r:
                shutil.copyfileobj(r, out)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise EdgepruneError(
                f"Fashion-MNIST is not in {data_dir} and downloading {base_url + fname} failed "
                f"({e}); install Debian's dataset-fashion-mnist or pass --data-dir"
            ) from None


def load_fashion_mnist(data_dir: Path | None = None, download: bool = True) -> DataBundle:
    """Fashion-MNIST from its IDX .gz files; downloads them if absent and allowed."""
    data_dir = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    missing = [f for f in FASHION_MNIST_FILES.values() if not (data_dir / f).exists()]
    if missing:
        if not download:
            raise EdgepruneError(
                f"Fashion-MNIST files missing in {data_dir} ({', '.join(missing)}); install "
                "Debian's dataset-fashion-mnist or pass --data-dir"
            )
        download_fashion_mnist(data_dir)
    arr = {k: read_idx(data_dir / f) for k, f in FASHION_MNIST_FILES.items()}
    return bundle_from_arrays("fashion-mnist", arr, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                               FASHION_MNIST_LABELS)


# ---------------------------------------------------------------- embedded demo subset

def demo_subset_path() -> Path:
    return Path(str(resources.files("edgeprune") / "assets" / DEMO_SUBSET))


def load_demo_subset() -> DataBundle:
    """The small Fashion-MNIST subset shipped inside the package (for the no-argument demo)."""
    with np.load(demo_subset_path()) as z:
        arr = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    return bundle_from_arrays("demo", arr, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                               FASHION_MNIST_LABELS)


def write_demo_subset(out: Path, full: DataBundle, n_train: int = 2000,
                      n_test: int = 5000) -> None:
    """Write a class-balanced subset of a Fashion-MNIST bundle as a compressed .npz.

    The shipped one (3.1 MB) holds 2,000 training and 5,000 held-out images: compress's
    level search decides on half of the held-out images and reports on the other half, and
    with 500 a half (one image = 0.2 points) a 1-point tolerance was at the level of noise."""
    tr = balanced_indices(full.train.labels, n_train, seed=0)
    te = balanced_indices(full.test.labels, n_test, seed=0)
    np.savez_compressed(
        out,
        train_x=full.train.images[tr, 0].numpy(), train_y=full.train.labels[tr].numpy()
        .astype(np.uint8),
        test_x=full.test.images[te, 0].numpy(), test_y=full.test.labels[te].numpy()
        .astype(np.uint8),
    )

