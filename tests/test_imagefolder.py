"""A user's own images: ImageFolder trees of mixed PNG/JPEG files in every mode, nested class
folders, one folder or train/ + val/, bad files, and the whole `compress` on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli, sha
from imagetree import CLASSES, make_tree

from edgeprune.data import load_dataset
from edgeprune.data.bundle import iterate_batches
from edgeprune.data.preprocess import model_input, resize_and_crop
from edgeprune.errors import EdgepruneError

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("photos"), per_class=9)


def test_train_and_val_trees_load_with_nested_folders_and_mixed_files(tree):
    data = load_dataset("imagefolder", tree, (3, 32, 32))
    assert data.spec.labels == CLASSES and data.spec.shape == (3, 32, 32)
    assert len(data.train) == len(data.test) == 27  # nested batch2/ folders included
    suffixes = {Path(p).suffix for p, _ in data.train.samples}
    assert suffixes == {".png", ".jpg"}
    x, y = next(iterate_batches(data.loader("train", batch_size=8)))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long
    assert data.record["layout"] == "train/ and val/" and "split" not in data.record


def test_mean_and_std_are_computed_from_the_training_images(tree):
    data = load_dataset("imagefolder", tree, (3, 32, 32))
    pixels = torch.stack([data.train[i][0] for i in range(len(data.train))])
    # normalized with the statistics computed from them: mean 0, std 1 per channel
    assert pixels.mean((0, 2, 3)).abs().max() < 1e-3
    assert (pixels.std((0, 2, 3)) - 1).abs().max() < 1e-2
    assert data.record["normalization"].startswith("mean/std of 27 training images")
    given = load_dataset("imagefolder", tree, (3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert given.spec.mean == (0.5,) * 3 and given.record["normalization"] == "given"


def test_every_mode_becomes_the_models_channels_resized_and_center_cropped(tree):
    """Grayscale, RGB, RGBA and palette files feed 1- and 3-channel models; the dataset's
    tensor equals the shipped preprocessing of the same file."""
    from PIL import Image

    for channels in (1, 3):
        data = load_dataset("imagefolder", tree, (channels, 24, 20))
        modes = set()
        for i, (path, _) in enumerate(data.train.samples[:8]):
            with Image.open(path) as im:
                modes.add(im.mode)
            x, _ = data.train[i]
            expect = model_input(path, channels, 24, 20, data.spec.mean, data.spec.std)
            assert x.shape == (channels, 24, 20)
            np.testing.assert_allclose(x.numpy(), expect, atol=1e-6)
        assert {"L", "RGB", "RGBA", "P"} <= modes
    wide = Image.new("RGB", (100, 50), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 50))  # a blue band the center crop cuts away
    cropped = np.asarray(resize_and_crop(wide, 32, 32))
    assert cropped.shape == (32, 32, 3) and (cropped[..., 0] > 200).all()


def test_one_folder_is_split_with_a_seed_and_the_split_is_recorded(tmp_path):
    root = make_tree(tmp_path / "flat", per_class=10, splits=())
    (root / "masks").mkdir()  # concept masks are never a class
    a = load_dataset("imagefolder", root, (3, 16, 16), seed=3)
    b = load_dataset("imagefolder", root, (3, 16, 16), seed=3)
    c = load_dataset("imagefolder", root, (3, 16, 16), seed=4)
    assert a.spec.labels == CLASSES
    assert len(a.train) == 27 and len(a.test) == 3 * round(0.1 * 10)
    split = a.record["split"]
    assert split["seed"] == 3 and split["val_fraction"] == 0.1
    assert split["val_files"] == b.record["split"]["val_files"] != c.record["split"]["val_files"]
    assert {p for p, _ in a.test.samples} == {str(root / f) for f in split["val_files"]}
    assert not {p for p, _ in a.train.samples} & {p for p, _ in a.test.samples}


def test_train_and_val_with_other_classes_are_refused_by_name(tmp_path):
    root = make_tree(tmp_path / "t", per_class=2)
    (root / "val" / "disc").rename(root / "val" / "circle")
    with pytest.raises(EdgepruneError, match=r"only in train/: disc; only in val/: circle"):
        load_dataset("imagefolder", root, (3, 16, 16))


def test_a_data_dir_that_is_a_file_or_missing_says_which(tmp_path):
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(EdgepruneError, match="labels.csv is a file; pass the folder that holds "
                       "one folder per class as --data-dir"):
        load_dataset("imagefolder", tmp_path / "labels.csv", (3, 16, 16))
    with pytest.raises(EdgepruneError, match="nope does not exist; pass --data-dir"):
        load_dataset("imagefolder", tmp_path / "nope", (3, 16, 16))


@pytest.mark.parametrize(("layout", "message"), [
    ("val-only", "has val/ but no train/"),
    ("one-class", "at least two"),
    ("empty-class", "holds no images"),
])
def test_tree_mistakes_are_one_line(tmp_path, layout, message):
    root = make_tree(tmp_path / "t", per_class=2, splits=("val",) if layout == "val-only"
                     else ("train", "val"))
    if layout == "one-class":
        root = tmp_path / "one"
        make_tree(root, per_class=2, splits=())
        for cls in CLASSES[1:]:
            for f in sorted((root / cls).rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
            (root / cls).rmdir()
    if layout == "empty-class":
        (root / "train" / "empty").mkdir()
        (root / "val" / "empty").mkdir()
    with pytest.raises(EdgepruneError, match=message):
        load_dataset("imagefolder", root, (3, 16, 16))


def _break(path: Path, how: str) -> None:
    if how == "not-an-image":
        path.write_bytes(b"this is not a picture")
    else:  # a valid header, then the data stops
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def broken(tmp_path) -> tuple[Path, Path, Path]:
    root = make_tree(tmp_path / "b", per_class=6)
    garbage = root / "train" / "disc" / "disc_000.png"
    truncated = root / "train" / "square" / "square_001.jpg"
    _break(garbage, "not-an-image")
    _break(truncated, "truncated")
    return root, garbage, truncated


def test_a_file_that_is_not_an_image_fails_before_any_work(broken):
    root, garbage, _ = broken
    with pytest.raises(EdgepruneError, match=rf"cannot read image {garbage}.*--skip-bad-images"):
        load_dataset("imagefolder", root, (3, 16, 16))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_image_is_one_line_naming_it_even_from_a_worker(broken, workers):
    root, garbage, truncated = broken
    garbage.unlink()
    with pytest.raises(EdgepruneError, match=f"cannot read image {truncated}"):
        load_dataset("imagefolder", root, (3, 16, 16))  # the statistics decode it first
    data = load_dataset("imagefolder", root, (3, 16, 16), workers=workers, mean=(0.5,) * 3,
                        std=(0.25,) * 3)  # nothing decoded at load: found while training
    with pytest.raises(EdgepruneError) as err:
        list(iterate_batches(data.loader("train", batch_size=4)))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"cannot read image {truncated}")


def test_skip_bad_images_leaves_them_out_and_records_them(broken):
    root, garbage, truncated = broken
    data = load_dataset("imagefolder", root, (3, 16, 16), skip_bad_images=True, workers=2)
    assert sorted(data.record["skipped_images"]) == sorted(
        str(p.relative_to(root)) for p in (garbage, truncated))
    assert len(data.train) == 16
    assert len(list(iterate_batches(data.loader("train", batch_size=4)))) == 4


# ---------------------------------------------------------------- through compress

COMPRESS = ["--flops-reduction", "0.5",
        "--model", "imagetree:tiny_net", "--dataset", "imagefolder", "--criterion", "l1",
            "--epochs", "1", "--formats", "tflite", "--bench-runs", "2", "--bench-seconds", "0",
            "--quiet", "--json"]


@pytest.mark.parametrize("size", ["3x64x64", "3x224x224"])
def test_compress_runs_on_a_users_tree(tree, tmp_path, capsys, monkeypatch, size):
    """The user's own factory (imagetree:tiny_net, found in the working directory) and their
    photo tree, end to end; the shipped sidecar carries the tree's classes and statistics."""
    monkeypatch.chdir(Path(__file__).parent)
    before = {p: sha(p) for p in tree.rglob("*") if p.is_file()}
    code, out, err = run_cli(capsys, "compress", *COMPRESS, "--data-dir", str(tree),
                             "--input-size", size, "--out", str(tmp_path / "run"))
    assert code == 0, err
    run = tmp_path / "run"
    summary = json.loads(out)
    assert summary["pruned"]["macs"] < summary["dense"]["macs"]
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["classes"] == list(CLASSES) and dataset["train_images"] == 27
    sidecar = json.loads((run / "models" / "pruned.tflite.json").read_text())
    assert sidecar["labels"] == list(CLASSES)
    assert sidecar["mean"] == dataset["spec"]["mean"] and sidecar["std"] == dataset["spec"]["std"]
    assert sidecar["input_shape"][1:] == [int(v) for v in size.split("x")]
    manifest = json.loads((run / "manifest.json").read_text())
    assert "dataset.json" in {a["path"] for a in manifest["artefacts"]}
    assert {p: sha(p) for p in tree.rglob("*") if p.is_file()} == before  # input untouched


def test_compress_with_skip_bad_images_records_the_count(broken, tmp_path, capsys, monkeypatch):
    root, garbage, truncated = broken
    monkeypatch.chdir(Path(__file__).parent)
    code, _, err = run_cli(capsys, "compress", *COMPRESS, "--data-dir", str(root),
                           "--input-size", "3x32x32", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, f"cannot read image {garbage}")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "compress", *COMPRESS, "--data-dir", str(root),
                           "--input-size", "3x32x32", "--out", str(tmp_path / "run"),
                           "--skip-bad-images")
    assert code == 0, err
    dataset = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert len(dataset["skipped_images"]) == 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--mean", "0.5,0.5,0.5"], "--mean and --std together"),
    (["--mean", "0.5,0.5", "--std", "0.2,0.2"], "need 3 values"),
    (["--mean", "a,b,c", "--std", "1,1,1"], "not a comma-separated list of numbers"),
    (["--workers", "-1"], "--workers -1"),
    (["--input-size", "4x32x32"], "1 (grayscale) or 3 (RGB)"),
])
def test_bad_data_options_are_one_line_and_leave_nothing(tree, tmp_path, capsys, monkeypatch,
                                                         extra, message):
    monkeypatch.chdir(Path(__file__).parent)
    args = ["--input-size", "3x32x32", *extra] if "--input-size" not in extra else extra
    code, _, err = run_cli(capsys, "compress", *COMPRESS, "--data-dir", str(tree),
                           "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- hostile trees


def _bomb(path: Path, side: int = 30000) -> Path:
    """A PNG of a few hundred bytes whose header declares `side` x `side` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def looped(tmp_path) -> Path:
    """A tree whose class folder holds two symlinks back to itself: a walk that follows
    them never ends (2 ** 40 paths before the kernel's link limit)."""
    root = make_tree(tmp_path / "l", per_class=6)
    folder = root / "train" / "disc"
    (folder / "again").symlink_to(".", target_is_directory=True)
    (folder / "parent").symlink_to("..", target_is_directory=True)
    return root


def test_a_symlink_loop_is_named_and_skipped_with_skip_bad_images(looped):
    with pytest.raises(EdgepruneError, match=r"disc/again is a symlink loop.*--skip-bad-images"):
        load_dataset("imagefolder", looped, (3, 16, 16))
    data = load_dataset("imagefolder", looped, (3, 16, 16), skip_bad_images=True)
    assert sorted(data.record["symlink_loops"]) == ["train/disc/again", "train/disc/parent"]
    assert set(data.record["skipped_images"]) >= {"train/disc/again", "train/disc/parent"}
    assert len(data.train) == 18  # every image once, none through the links


def test_a_symlinked_folder_that_is_no_loop_is_read(tmp_path):
    root = make_tree(tmp_path / "s", per_class=6)
    shared = tmp_path / "more_squares"
    (root / "train" / "square").rename(shared)
    (root / "train" / "square").symlink_to(shared, target_is_directory=True)
    assert len(load_dataset("imagefolder", root, (3, 16, 16)).train) == 18


def test_a_decompression_bomb_is_named_and_skipped_with_skip_bad_images(tmp_path, capsys,
                                                                        monkeypatch):
    root = make_tree(tmp_path / "b", per_class=6)
    bomb = _bomb(root / "train" / "bars" / "huge.png")
    with pytest.raises(EdgepruneError, match=rf"image {bomb} declares 900,000,000 pixels.*"
                       "decompression bomb"):
        load_dataset("imagefolder", root, (3, 16, 16))
    data = load_dataset("imagefolder", root, (3, 16, 16), skip_bad_images=True)
    assert data.record["skipped_images"] == ["train/bars/huge.png"]
    assert len(data.train) == 18
    monkeypatch.chdir(Path(__file__).parent)
    code, _, err = run_cli(capsys, "score", "imagetree:tiny_net", "--dataset",
                           "imagefolder", "--data-dir", str(root), "--input-size", "3x32x32",
                           "--criterion", "l1", "--score-samples", "8")
    assert_one_line_error(code, err, "declares 900,000,000 pixels")
    assert "unexpected" not in err


def test_an_image_just_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    from edgeprune.data.imagefolder import MAX_IMAGE_PIXELS, check_headers

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1  # within Pillow's warning band, not its error
    bomb = _bomb(tmp_path / "big.png", side)
    with pytest.raises(EdgepruneError, match=f"declares {side}x{side} pixels"):
        check_headers([(str(bomb), 0)])
