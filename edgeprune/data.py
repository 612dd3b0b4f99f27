"""Datasets: Fashion-MNIST (IDX), CIFAR-10 (python pickles), ImageFolder trees, the embedded
demo subset and a synthetic set for tests, all behind one `load_dataset` call."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeprune.errors import EdgepruneError
from edgeprune.spec import InputSpec

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
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEMO_SUBSET = "fashion_mnist_subset.npz"
DATASETS = ("auto", "fashion-mnist", "demo", "cifar10", "imagefolder", "synthetic")


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


def _identity_collate(batch):
    return batch


@dataclass
class DataBundle:
    """A dataset's train and test splits plus the InputSpec models trained on it carry."""

    name: str
    train: Dataset
    test: Dataset
    spec: InputSpec

    def loader(self, split: str, batch_size: int = 256, shuffle: bool = False,
               limit: int | None = None, seed: int = 0) -> DataLoader:
        """A DataLoader over `split` ('train' or 'test'), optionally the first `limit` samples
        of a seeded class-balanced subset."""
        ds = self.train if split == "train" else self.test
        if limit is not None and limit < len(ds):
            ds = _limited(ds, limit, seed)
        g = torch.Generator().manual_seed(seed)
        batched = hasattr(ds, "__getitems__")
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                          collate_fn=_identity_collate if batched else None)

    def reference(self, samples: int, per_class: int | None = None, seed: int = 0,
                  batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def iterate_batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) whatever collate the loader uses."""
    for batch in loader:
        x, y = batch
        yield x, torch.as_tensor(y)


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

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
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{fname}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + fname,
                                                                     timeout=timeout) as r:
                shutil.copyfileobj(r, out)
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            Path(tmp).unlink(missing_ok=True)
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
    return _bundle_from_arrays("fashion-mnist", arr, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                               FASHION_MNIST_LABELS)


def _bundle_from_arrays(name: str, arr: dict[str, np.ndarray], mean, std, labels) -> DataBundle:
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


# ---------------------------------------------------------------- embedded demo subset

def demo_subset_path() -> Path:
    return Path(str(resources.files("edgeprune") / "assets" / DEMO_SUBSET))


def load_demo_subset() -> DataBundle:
    """The small Fashion-MNIST subset shipped inside the package (for the no-argument demo)."""
    with np.load(demo_subset_path()) as z:
        arr = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    return _bundle_from_arrays("demo", arr, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                               FASHION_MNIST_LABELS)


def write_demo_subset(out: Path, full: DataBundle, n_train: int = 2000,
                      n_test: int = 1000) -> None:
    """Write a class-balanced subset of a Fashion-MNIST bundle as a compressed .npz."""
    tr = balanced_indices(full.train.labels, n_train, seed=0)
    te = balanced_indices(full.test.labels, n_test, seed=0)
    np.savez_compressed(
        out,
        train_x=full.train.images[tr, 0].numpy(), train_y=full.train.labels[tr].numpy()
        .astype(np.uint8),
        test_x=full.test.images[te, 0].numpy(), test_y=full.test.labels[te].numpy()
        .astype(np.uint8),
    )


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

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
    return _bundle_from_arrays("cifar10", arr, CIFAR10_MEAN, CIFAR10_STD, labels)


# ---------------------------------------------------------------- ImageFolder trees

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


# ---------------------------------------------------------------- synthetic

def make_synthetic(num_classes: int = 4, shape: tuple[int, int, int] = (1, 16, 16),
                   n_train: int = 512, n_test: int = 256, seed: int = 0) -> DataBundle:
    """A learnable synthetic task: each class is a fixed smooth random pattern plus noise.

    Patterns are low-frequency and mirror-symmetric, so the training augmentation (small
    shifts, horizontal flips) keeps an image's class."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((num_classes, shape[0], 4, 4), generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear",
                                                align_corners=False)
    templates = (templates + templates.flip(-1)) / 2
    templates = (templates - templates.amin()) / (templates.amax() - templates.amin())

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        noise = torch.rand((n, *shape), generator=g)
        x = (0.6 * templates[y] + 0.4 * noise) * 255
        return x.round().clamp(0, 255).to(torch.uint8), y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    labels = tuple(f"class{i}" for i in range(num_classes))
    return DataBundle("synthetic", ArrayImageDataset(xtr, ytr, mean, std),
                      ArrayImageDataset(xte, yte, mean, std), InputSpec(*shape, mean, std, labels))


# ---------------------------------------------------------------- one entry point

def load_dataset(name: str = "auto", data_dir: Path | str | None = None,
                 input_size: tuple[int, int, int] | None = None,
                 download: bool = True) -> DataBundle:
    """Load a dataset by name.

    'auto' is the full Fashion-MNIST when its files are found (data_dir or the Debian
    location) and otherwise the embedded demo subset; it never downloads.
    """
    data_dir = Path(data_dir) if data_dir else None
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
    if name in ("cifar10", "imagefolder") and data_dir is None:
        raise EdgepruneError(f"dataset {name!r} needs --data-dir pointing at its files")
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "imagefolder":
        return load_imagefolder(data_dir, input_size)
    raise EdgepruneError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
