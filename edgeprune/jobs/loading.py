"""The one place that turns names and paths into a model and its data: every job loads what the
user named through these functions, and hands modules, tensors and batches to the stages,
which never see a name or a path."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgeprune.criteria.feature_maps import images_per_batch
from edgeprune.data import DataBundle, first_per_class, iterate_batches, load_dataset
from edgeprune.data.concept_masks import mask_batches
from edgeprune.errors import EdgepruneError
from edgeprune.models import LoadedModel, load_model
from edgeprune.spec import InputSpec, parse_floats, parse_input_size


@dataclass
class ModelAndData:
    """A model loaded by reference, the dataset it is used with, and the input spec both
    agree on (the checkpoint's, else the dataset's, shaped by --input-size)."""

    loaded: LoadedModel
    data: DataBundle
    spec: InputSpec

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


def default_workers() -> int:
    """DataLoader processes for file-backed data: enough to keep image decoding off the
    critical path on a small machine, never more than its cores."""
    return max(1, min(4, os.cpu_count() or 1))


def load_data(dataset: str = "auto", data_dir: Path | str | None = None,
              input_size: str | None = None, mean: str | Sequence[float] | None = None,
              std: str | Sequence[float] | None = None, skip_bad_images: bool = False,
              workers: int | None = None, seed: int = 0) -> DataBundle:
    """Dataset `dataset` as the data options name it (--input-size 'CxHxW', --mean/--std
    'a,b,c', --skip-bad-images, --workers; `seed` splits a tree without val/)."""
    size = parse_input_size(input_size) if input_size else None
    if (mean is None) != (std is None):
        raise EdgepruneError("pass --mean and --std together (one value per input channel)")
    norm = (parse_floats(mean, "--mean"), parse_floats(std, "--std")) if mean is not None \
        else (None, None)
    if workers is not None and workers < 0:
        raise EdgepruneError(f"--workers {workers} must be 0 (decode in the main process) or "
                             "more")
    return load_dataset(dataset, data_dir, size, mean=norm[0], std=norm[1],
                        skip_bad_images=skip_bad_images,
                        workers=default_workers() if workers is None else workers, seed=seed)


def load_model_and_data(model: str | None = "demo", weights: Path | str | None = None,
                        dataset: str = "auto", data_dir: Path | str | None = None,
                        input_size: str | None = None, mean: str | Sequence[float] | None = None,
                        std: str | Sequence[float] | None = None, skip_bad_images: bool = False,
                        workers: int | None = None, seed: int = 0, *, trust_code: bool = False
                        ) -> ModelAndData:
    """The data (see `load_data`) and the model `model` (any --model reference, with
    `weights`) sized for it, checked to agree on the input shape. A checkpoint that carries
    its own normalization gets its data normalized that way, unless --mean/--std are given.
    `trust_code`: see `edgeprune.models.load_model`. A model built without weights is
    initialised from `seed` (the caller's random state is left as it was)."""
    data = load_data(dataset, data_dir, input_size, mean, std, skip_bad_images, workers, seed)
    size = parse_input_size(input_size) if input_size else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded, spec = load_model_for(model, weights, data, size, trust_code=trust_code,
                                      check=False)
    if size is None and spec.shape != data.spec.shape and data.name == "imagefolder":
        # an image folder is resized to what the checkpoint was trained at, as --input-size
        data = load_data(dataset, data_dir, "x".join(map(str, spec.shape)), mean, std,
                         skip_bad_images, workers, seed)
    check_shape(spec, data)
    if loaded.spec is not None and mean is None:
        data = data.with_normalization(spec.mean, spec.std)
    elif loaded.spec is not None:
        spec = dataclasses.replace(spec, mean=data.spec.mean, std=data.spec.std)
    check_inputs(loaded.model, spec, model, weights)
    check_outputs(loaded.model, spec, data.spec.num_classes, model, weights)
    return ModelAndData(loaded, data, spec)


def _route_fix(ref: str | None, weights: Path | str | None, what: str, value: int) -> str:
    """How a user fixes a model/data mismatch by the route they took: a factory or hub name
    takes keyword arguments (`?num_classes=10`), a checkpoint needs other weights."""
    kwarg = {"classes": "num_classes", "channels": "in_chans"}[what]
    if ref and ":" in ref and Path(ref).suffix not in (".pt", ".pth") and weights is None:
        base = ref.split("?", 1)[0]
        hint = ("in_channels" if what == "channels" and not base.startswith("timm:")
                else kwarg)
        return (f"build it with {value} {what}: --model '{base}?{hint}={value}' (the "
                "factory's keyword argument)")
    return (f"pass a checkpoint or --weights made for {value} {what}, or data with as many")


def check_inputs(model: nn.Module, spec: InputSpec, ref: str | None = None,
                 weights: Path | str | None = None) -> None:
    """EdgepruneError when the model's first convolution takes other channels than the
    inputs have (a 3-channel model on --input-size 1x64x64), naming the layer and the fix."""
    first = next(((name, m) for name, m in model.named_modules()
                  if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d)), None)
    if first is not None and first[1].in_channels != spec.channels:
        name, conv = first
        raise EdgepruneError(
            f"the model's first layer {name} takes {conv.in_channels}-channel inputs but the "
            f"inputs have {spec.channels} ({'x'.join(map(str, spec.shape))}); pass "
            f"--input-size {conv.in_channels}x{spec.height}x{spec.width}, or "
            + _route_fix(ref, weights, "channels", spec.channels))


def load_model_for(ref: str | None, weights: Path | str | None, data: DataBundle,
                   size: tuple[int, int, int] | None = None, *, trust_code: bool = False,
                   check: bool = True) -> tuple[LoadedModel, InputSpec]:
    """Load `ref` (any --model reference) sized for `data`'s channels and classes, with its
    input spec: the checkpoint's, else the dataset's, `size` (--input-size) overriding the
    shape. EdgepruneError when the dataset's images do not have that shape (unless `check` is
    False: see `check_shape`)."""
    loaded = load_model(ref, weights, in_channels=data.spec.channels,
                        num_classes=data.spec.num_classes, trust_code=trust_code)
    spec = loaded.spec or data.spec
    if _labels_from_data(loaded, spec, data):
        spec = dataclasses.replace(spec, labels=data.spec.labels)
    if size is not None and size != spec.shape:
        spec = InputSpec(*size, spec.mean, spec.std, spec.labels)
    if check:
        check_shape(spec, data)
    return loaded, spec


def _labels_from_data(loaded: LoadedModel, spec: InputSpec, data: DataBundle) -> bool:
    """Whether the model's spec should carry the dataset's class names: a spec taken from a
    timm model's pretrained config whose class count is not the config's (its names are then
    placeholders), or any spec of placeholder names ('0', '1', ...), when the counts agree."""
    if len(data.spec.labels) != len(spec.labels):
        return False
    placeholders = spec.labels == tuple(str(i) for i in range(len(spec.labels)))
    from_config = (loaded.meta or {}).get("input_spec_from") == "timm pretrained_cfg"
    return placeholders or (from_config and _config_classes(loaded) != len(spec.labels))


def _config_classes(loaded: LoadedModel) -> int | None:
    """The class count of a timm model's pretrained config, None when it has none."""
    cfg = getattr(loaded.model, "pretrained_cfg", None)
    count = cfg.get("num_classes") if isinstance(cfg, dict) else None
    return count if isinstance(count, int) else None


def check_shape(spec: InputSpec, data: DataBundle) -> None:
    """EdgepruneError when the dataset's images do not have the model's input shape."""
    if spec.shape != data.spec.shape:
        fix = ("pass a matching --dataset/--data-dir or --input-size" if data.name == "imagefolder"
               else f"{data.name}'s images are not resized: drop --input-size or use a model made "
               "for them, or an image folder (--dataset imagefolder --data-dir DIR), which is "
               "resized to --input-size")
        raise EdgepruneError(
            f"the model expects {'x'.join(map(str, spec.shape))} inputs but dataset "
            f"{data.name} gives {'x'.join(map(str, data.spec.shape))} images; {fix}")


def check_outputs(model: nn.Module, spec: InputSpec, num_classes: int,
                  ref: str | None = None, weights: Path | str | None = None) -> None:
    """EdgepruneError unless `model` maps one input of `spec`'s shape to `num_classes` logits;
    the fix named is the one for the route the model came by (`ref`, `weights`)."""
    training = model.training
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(1, *spec.shape))
        except Exception as e:  # noqa: BLE001 - a user's model failing on its input
            text = str(e).splitlines()[0] if str(e).strip() else ""
            raise EdgepruneError(f"the model fails on a {'x'.join(map(str, spec.shape))} "
                                 f"input: {type(e).__name__}: {text}"
                                 + (_too_small_fix(spec) if _too_small(text) else "")) from None
        finally:
            model.train(training)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise EdgepruneError(f"the model outputs {shape} but the dataset has {num_classes} "
                             f"classes; " + _route_fix(ref, weights, "classes", num_classes))


TOO_SMALL = ("can't be greater than actual input size", "Output size is too small",
             "input size per channel")
"""PyTorch's words when a pooling window or kernel is larger than the feature map left after
the model's downsampling (ConvNeXt or a torchvision ResNet on 28x28 images)."""


def _too_small(text: str) -> bool:
    return any(words in text for words in TOO_SMALL)


def _too_small_fix(spec: InputSpec) -> str:
    """The fix when the images are smaller than the model's downsampling allows."""
    return (f"; its downsampling needs larger images than {spec.height}x{spec.width}: use an "
            f"image folder, which is resized to --input-size (--dataset imagefolder --data-dir "
            f"DIR --input-size {spec.channels}x64x64), or a model made for "
            f"{spec.height}x{spec.width} inputs")


MAX_SCORE_BATCH = 64


def score_batch_size(model: nn.Module, spec: InputSpec, requested: int | None = None) -> int:
    """Reference images per scoring batch: `requested`, or (None, auto) as many as keep one
    batch's feature maps under BATCH_BYTES (256 MB), between 1 and MAX_SCORE_BATCH (64 for
    28-pixel models, 3 for MobileNetV2 and 2 for ResNet-50 at 224 pixels)."""
    if requested is not None:
        return requested
    return images_per_batch(model, spec.shape, MAX_SCORE_BATCH)


def reference_batches(data: DataBundle, data_dir: Path | str | None, samples: int,
                      samples_per_class: int | None = None, seed: int = 0,
                      batch_size: int = 32) -> list[tuple[Tensor, ...]]:
    """The criterion's reference batches: `data.reference(...)`, or, for an ImageFolder
    `data_dir` with a masks/ folder, (images, labels, masks) batches for `concept`."""
    if data.name == "imagefolder" and data_dir is not None:
        batches = mask_batches(data.train, Path(data_dir), samples, batch_size, seed)
        if batches is not None:
            return first_per_class(batches, samples_per_class) if samples_per_class else batches
    return data.reference(samples, samples_per_class, seed, batch_size)


def take(data: DataBundle, split: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded class-balanced sample of `n` images of `split` as one (images, labels) pair
    (fewer if the split is smaller)."""
    xs, ys = [], []
    for x, y in iterate_batches(data.loader(split, batch_size=256, limit=n, seed=seed)):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


@dataclass
class Reference:
    """A model loaded by reference, its input spec, and the reference batches a criterion
    sees (what `score` and `explain` work on)."""

    model: nn.Module
    spec: InputSpec
    batches: list[tuple[Tensor, ...]] = field(default_factory=list)


def load_reference(model: str = "demo", weights: Path | str | None = None, samples: int = 500,
                   seed: int = 0, batch_size: int | None = None,
                   samples_per_class: int | None = None,
                   **data: Any) -> Reference:
    """The model and `samples` class-balanced training images (or `samples_per_class` of
    each class) in batches of `batch_size` (None: auto, see `score_batch_size`), with real
    concept masks when an ImageFolder `data_dir` has a masks/ folder (see
    `edgeprune.data.concept_masks`). `data`: the data options of `load_data` (dataset,
    data_dir, input_size, mean, std, skip_bad_images, workers)."""
    md = load_model_and_data(model, weights, seed=seed, **data)
    batches = reference_batches(md.data, data.get("data_dir"), samples, samples_per_class, seed,
                                score_batch_size(md.model, md.spec, batch_size))
    return Reference(md.model.eval(), md.spec, batches)
