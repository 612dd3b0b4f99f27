"""`explain_model`: what `edgeprune explain` does: the filter atlas. Per conv layer, a PNG grid of
the filters' activation-maximization images, pruned filters crossed out and redundancy groups
framed in one colour (drawn by `edgeprune.report.atlas`), plus `atlas.json` with the scores, the
kept and pruned channels and the groups, published as one folder (`files.staged_folder`).

Which filters are marked pruned comes from the same decision the pruner makes: with a FLOPs
target, `prune()` runs on a copy and reports the channels it kept; with a keep ratio, each
layer keeps its highest-scored share. Groups come from criteria that have them (actmax,
function, fmcluster).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgeprune.console import info
from edgeprune.criteria import Criterion, get_criterion
from edgeprune.criteria.am_images import AMConfig, LayerAM, visualize
from edgeprune.criteria.base import Batches, prunable_layers
from edgeprune.criteria.lrp import input_box
from edgeprune.criteria.redundancy import RedundancyCriterion
from edgeprune.errors import EdgepruneError
from edgeprune.files import staged_folder
from edgeprune.jobs.bounds import check_bound
from edgeprune.jobs.loading import load_reference
from edgeprune.models.copying import clone
from edgeprune.pruning import prune
from edgeprune.report.atlas import draw_atlas_layer


@dataclass
class AtlasResult:
    """What `build_atlas` wrote and how long each part took (seconds)."""

    out_dir: Path
    pngs: dict[str, Path]
    json_path: Path
    timing: dict[str, float] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)


def kept_channels(model: nn.Module, example_inputs: Tensor, scores: dict[str, Tensor],
                  flops_reduction: float, round_to: int = 8) -> dict[str, list[int]]:
    """Output channels of every prunable layer that `prune()` keeps at `flops_reduction` with
    these scores, with `compress`'s default policy (every layer cut by the same share)."""
    result = prune(clone(model).eval(), example_inputs, scores=scores,
                   flops_reduction=flops_reduction, round_to=round_to, global_ranking=False)
    return {n: result.kept.get(n, list(range(layer.weight.shape[0])))
            for n, layer in prunable_layers(model).items()}


def _by_ratio(scores: dict[str, Tensor], keep_ratio: float) -> dict[str, list[int]]:
    kept = {}
    for name, values in scores.items():
        k = max(1, round(keep_ratio * len(values)))
        kept[name] = sorted(torch.argsort(values, descending=True, stable=True)[:k].tolist())
    return kept


def _criterion_scores(model: nn.Module, crit: Criterion, am: dict[str, LayerAM],
                      batches: list | None) -> dict[str, Tensor]:
    """The criterion's scores, reusing the atlas's AM images for the AM criteria."""
    if hasattr(crit, "from_images"):
        extra = {"strength": crit.strengths(model, batches)} \
            if batches and hasattr(crit, "strengths") else {}
        return crit.from_images(model, am, **extra)
    if crit.needs_data and not batches:
        raise EdgepruneError(f"criterion {crit.name!r} needs reference data for the atlas")
    return crit.score(model, batches if crit.needs_data else None)


def _decide(model: nn.Module, input_shape: tuple[int, int, int], convs: list[str],
            drawn: list[str], crit: Criterion, cfg: AMConfig, data: list | None,
            flops_reduction: float | None, keep_ratio: float | None, round_to: int,
            timing: dict[str, float]) -> tuple[dict[str, LayerAM], dict[str, Tensor],
                                               dict[str, list[int]]]:
    """What the atlas shows: the AM images (of every conv layer when a FLOPs target needs
    scores for the whole network, else of the drawn ones), the criterion's scores and the
    channels kept; the seconds each took go into `timing`."""
    box = input_box([b[:2] for b in data]) if data else None
    t0 = time.perf_counter()
    whole = flops_reduction is not None and keep_ratio is None and hasattr(crit, "from_images")
    images = visualize(model, input_shape, convs if whole else drawn, cfg, box)
    timing["am_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = _criterion_scores(model, crit, images, data)
    timing["score_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if flops_reduction is not None and keep_ratio is None:
        kept = kept_channels(model, torch.zeros(1, *input_shape), scores, flops_reduction,
                             round_to)
    else:
        kept = _by_ratio(scores, keep_ratio if keep_ratio is not None else 1.0)
    timing["prune_s"] = time.perf_counter() - t0
    return images, scores, kept


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "layer"


def build_atlas(model: nn.Module, input_shape: tuple[int, int, int], out_dir: Path | str, *,
                layers: list[str] | None = None, criterion: str | Criterion = "actmax",
                batches: Batches | None = None, flops_reduction: float | None = 0.5,
                keep_ratio: float | None = None, am: AMConfig | None = None,
                round_to: int = 8, overwrite: bool = False) -> AtlasResult:
    """Write the filter atlas of `model`'s conv layers (or `layers`) into `out_dir`.

    The AM images are computed once (see `_decide`); `criterion` scores the filters (actmax
    and function reuse the images). Pruned filters are those `prune()` removes at
    `flops_reduction`, or, with `keep_ratio`, each layer's lowest-scored share. The folder
    appears complete or not at all; an existing non-empty one is replaced only with
    `overwrite`.
    """
    check_bound("flops_reduction", flops_reduction)
    check_bound("keep_ratio", keep_ratio)
    final = Path(out_dir)
    if final.exists() and not overwrite and (not final.is_dir() or any(final.iterdir())):
        raise EdgepruneError(f"{final} exists; pass --overwrite to replace it or choose "
                             "another --out")
    data = list(batches) if batches is not None else None
    convs = [n for n, m in prunable_layers(model).items() if isinstance(m, nn.Conv2d)]
    drawn = layers or convs
    unknown = [n for n in drawn if n not in convs]
    if unknown:
        raise EdgepruneError(f"{unknown[0]!r} is not a conv layer of the model; choose from "
                             f"{', '.join(convs)}")
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    if am is not None and hasattr(crit, "am"):
        crit.am = am
    cfg = getattr(crit, "am", am or AMConfig())
    timing: dict[str, float] = {}
    images, scores, kept = _decide(model, input_shape, convs, drawn, crit, cfg, data,
                                   flops_reduction, keep_ratio, round_to, timing)
    t0 = time.perf_counter()
    redundancy = getattr(crit, "redundancy", {}) if isinstance(crit, RedundancyCriterion) else {}
    report = {}
    with staged_folder(final) as stage:
        for name in drawn:
            report[name] = draw_atlas_layer(stage / f"{_safe(name)}.png", name, images[name],
                                            scores[name], set(kept[name]),
                                            redundancy.get(name), crit.name)
        timing["draw_s"] = time.perf_counter() - t0
        meta = {"criterion": crit.name, "input_shape": list(input_shape),
                "flops_reduction": flops_reduction if keep_ratio is None else None,
                "keep_ratio": keep_ratio, "am": vars(cfg), "timing_s": timing,
                "layers": report}
        (stage / "atlas.json").write_text(json.dumps(meta, indent=1))
    out = final
    pngs = {name: out / f"{_safe(name)}.png" for name in drawn}
    json_path = out / "atlas.json"
    info(f"atlas: {len(pngs)} layers in {out} (AM {timing['am_s']:.0f} s, scoring "
         f"{timing['score_s']:.0f} s, pruning decision {timing['prune_s']:.0f} s, drawing "
         f"{timing['draw_s']:.0f} s)")
    return AtlasResult(out, pngs, json_path, timing, {n: kept[n] for n in drawn})


def explain_model(model: str = "demo", out: Path | str = "atlas", *,
                  weights: Path | str | None = None, layers: list[str] | None = None,
                  criterion: str = "actmax", flops_reduction: float | None = 0.5,
                  keep_ratio: float | None = None, am_steps: int = AMConfig.steps,
                  samples: int = 256, samples_per_class: int | None = None, seed: int = 0,
                  overwrite: bool = False, **data: Any) -> AtlasResult:
    """Load `model` (any --model reference) and its reference data, then `build_atlas`.
    `data`: the data options of `jobs.loading.load_data`."""
    get_criterion(criterion)  # an unknown name fails before anything is loaded
    loaded = load_reference(model, weights, samples, seed, samples_per_class=samples_per_class,
                            **data)
    return build_atlas(loaded.model, loaded.spec.shape, out, layers=layers, criterion=criterion,
                       batches=loaded.batches or None, flops_reduction=flops_reduction,
                       keep_ratio=keep_ratio, am=AMConfig(steps=am_steps, seed=seed),
                       overwrite=overwrite)
