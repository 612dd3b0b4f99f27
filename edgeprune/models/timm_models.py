"""`timm:NAME` models: built with timm (the optional extra `pip install edgeprune[timm]`),
never with downloaded weights, and described by the model's own pretrained config.

Only names in timm's registry are built (`hf-hub:` and other remote names are refused,
since timm would fetch their configs); `pretrained` is never passed, so timm reads no file
and opens no connection. Weights come from a local --weights file, as for every reference.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models.reference import call_factory, refuse_downloads
from edgeprune.spec import InputSpec

PREFIX = "timm:"


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise EdgepruneError("timm: models need the timm package; install it with "
                             "pip install 'edgeprune[timm]'") from None
    return timm


def build_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm model `name` with random weights and `kwargs` (timm's own names: `num_classes`,
    `in_chans`, `img_size`, ...; edgeprune's `in_channels` is passed on as `in_chans`)."""
    timm = _timm()
    factory = f"{PREFIX}{name}"
    if not timm.is_model(name):
        import difflib

        hint = difflib.get_close_matches(name, timm.list_models(), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else "; see timm.list_models()"
        raise EdgepruneError(f"timm has no model {name!r}{extra}")
    kw = dict(kwargs)
    refuse_downloads(kw, factory)
    if "in_channels" in kw:
        channels = kw.pop("in_channels")
        kw.setdefault("in_chans", channels)
    return call_factory(lambda **k: timm.create_model(name, pretrained=False, **k), kw, factory)


def timm_spec(model: nn.Module, in_channels: int, num_classes: int,
              img_size: Any = None) -> InputSpec | None:
    """The input a timm model was designed for, from its pretrained config: input size
    (`img_size`, the builder's argument, when it was given), mean and std (averaged to one
    value for one-channel input), and the class names when the model's class count is the
    config's ImageNet subset, placeholder names ('0', '1', ...) otherwise. None when the
    model carries no pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or "input_size" not in cfg:
        return None
    _, height, width = (int(v) for v in cfg["input_size"])
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        height = width = img_size
    mean = _per_channel(cfg.get("mean", (0.5,) * 3), in_channels)
    std = _per_channel(cfg.get("std", (0.5,) * 3), in_channels)
    return InputSpec(in_channels, height, width, mean, std, _labels(model, num_classes))


def _per_channel(values: Any, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


def _labels(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            if info.num_classes() == num_classes:
                return tuple(info.index_to_description(i) for i in range(num_classes))
    except Exception:  # noqa: BLE001 - class names are a nicety; a timm change must not fail a load
        pass
    return tuple(str(i) for i in range(num_classes))
