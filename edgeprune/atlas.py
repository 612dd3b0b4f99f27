"""The filter atlas: per conv layer, a PNG grid of the filters' activation-maximization images,
pruned filters crossed out and redundancy groups framed in one colour, plus `atlas.json` with
the scores, the kept and pruned channels and the groups.

Which filters are marked pruned comes from the same decision the pruner makes: with a FLOPs
target, `prune()` runs on a copy and reports the channels it kept; with a keep ratio, each
layer keeps its highest-scored share. Groups come from criteria that have them (actmax,
function, fmcluster).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edgeprune.console import info
from edgeprune.criteria import Criterion, get_criterion
from edgeprune.criteria.activation_max import AMConfig, LayerAM, visualize
from edgeprune.criteria.base import Batches, prunable_layers
from edgeprune.criteria.lrp import input_box
from edgeprune.criteria.redundancy import Redundancy, RedundancyCriterion
from edgeprune.errors import EdgepruneError

PRUNED_DIM = 0.3
GROUP_COLOURS = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.58, 0.4, 0.74),
                 (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.09, 0.75, 0.81), (0.74, 0.74, 0.13)]
SINGLE, INVALID, CROSS = (0.85, 0.85, 0.85), (0.0, 0.0, 0.0), (0.84, 0.15, 0.16)


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
    from edgeprune.pruning import prune

    result = prune(copy.deepcopy(model).eval(), example_inputs, scores=scores,
                   flops_reduction=flops_reduction, round_to=round_to, global_ranking=False)
    return {n: result.kept.get(n, list(range(layer.weight.shape[0])))
            for n, layer in prunable_layers(model).items()}


def _by_ratio(scores: dict[str, Tensor], keep_ratio: float) -> dict[str, list[int]]:
    kept = {}
    for name, values in scores.items():
        k = max(1, round(keep_ratio * len(values)))
        kept[name] = sorted(torch.argsort(values, descending=True, stable=True)[:k].tolist())
    return kept


def _layout(scores: Tensor, kept: list[int], groups: list[list[int]] | None
            ) -> list[tuple[int, int]]:
    """(channel, group id) in drawing order: groups (largest first, then by score), then the
    channels in no group by descending score; group id -1 for singletons and loose channels."""
    placed: set[int] = set()
    cells = []
    if groups:
        ranked = sorted(groups, key=lambda g: (-len(g), -float(scores[g[0]])))
        for gid, group in enumerate(ranked):
            for c in group:
                cells.append((c, gid if len(group) > 1 else -1))
                placed.add(c)
    rest = [c for c in torch.argsort(scores, descending=True, stable=True).tolist()
            if c not in placed]
    return cells + [(c, -1) for c in rest]


def _tile(image: Tensor) -> np.ndarray:
    """One AM image as an (H, W, 3) array in [0, 1] (per-image contrast stretch)."""
    x = image.detach().float()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
    x = x.repeat(3, 1, 1) if x.shape[0] == 1 else x[:3]
    return x.permute(1, 2, 0).numpy()


def _cross(cell: np.ndarray) -> None:
    h, w = cell.shape[:2]
    for t in range(max(h, w)):
        i, j = min(h - 1, t * h // max(h, w)), min(w - 1, t * w // max(h, w))
        cell[i, j] = cell[i, w - 1 - j] = CROSS


def mosaic(am: LayerAM, cells: list[tuple[int, int]], kept: set[int], invalid: set[int],
           scale: int = 2, pad: int = 2) -> np.ndarray:
    """The atlas grid of one layer as an RGB array: each cell an AM image upscaled `scale`x,
    framed in its group's colour (grey: alone, black: invalid), dimmed and crossed if pruned."""
    h, w = (s * scale for s in am.images.shape[-2:])
    cols = max(1, math.ceil(math.sqrt(len(cells) * 1.6)))
    rows = math.ceil(len(cells) / cols)
    ch, cw = h + 2 * pad, w + 2 * pad
    grid = np.ones((rows * ch, cols * cw, 3))
    for pos, (channel, gid) in enumerate(cells):
        tile = np.kron(_tile(am.images[channel]), np.ones((scale, scale, 1)))
        frame = INVALID if channel in invalid else \
            (GROUP_COLOURS[gid % len(GROUP_COLOURS)] if gid >= 0 else SINGLE)
        cell = np.empty((ch, cw, 3))
        cell[:] = frame
        cell[pad:pad + h, pad:pad + w] = tile
        if channel not in kept:
            cell[pad:pad + h, pad:pad + w] *= PRUNED_DIM
            _cross(cell[pad:pad + h, pad:pad + w])
        r, c = divmod(pos, cols)
        grid[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = cell
    return grid


def draw_layer(path: Path, name: str, am: LayerAM, cells: list[tuple[int, int]],
               kept: set[int], invalid: set[int], criterion: str) -> None:
    """Write one layer's atlas PNG (matplotlib, Agg backend), channel numbers on the cells."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    grid = mosaic(am, cells, kept, invalid)
    cols = max(1, math.ceil(math.sqrt(len(cells) * 1.6)))
    cell_px = grid.shape[1] / cols
    dpi = 100
    fig = plt.figure(figsize=(max(4.0, grid.shape[1] * 2 / dpi), grid.shape[0] * 2 / dpi + 0.9),
                     dpi=dpi)
    ax = fig.add_axes((0, 0, 1, grid.shape[0] * 2 / dpi / (grid.shape[0] * 2 / dpi + 0.9)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if len(cells) <= 256:
        for pos, (channel, _) in enumerate(cells):
            r, c = divmod(pos, cols)
            ax.text(c * cell_px + 3, r * cell_px + 3, str(channel), fontsize=5, va="top",
                    color="yellow" if channel in kept else "white")
    n_groups = len({g for _, g in cells if g >= 0})
    fig.suptitle(f"{name}: {len(kept)}/{len(cells)} filters kept ({criterion}); "
                 f"{n_groups} redundancy groups (same frame colour), {len(invalid)} invalid "
                 "(black frame); crossed = pruned", fontsize=max(8.0, fig.get_figwidth() / 2.5))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _draw_and_report(path: Path, name: str, am: LayerAM, scores: Tensor, keep: set[int],
                     redundancy: Redundancy | None, criterion: str) -> dict:
    """Draw one layer's PNG; its atlas.json entry."""
    invalid = set(redundancy.invalid.nonzero().flatten().tolist()) if redundancy else set()
    groups = redundancy.groups_for(keep) if redundancy is not None else None
    draw_layer(path, name, am, _layout(scores, sorted(keep), groups), keep, invalid, criterion)
    return {"channels": len(scores), "png": path.name, "kept": sorted(keep),
            "pruned": sorted(set(range(len(scores))) - keep), "invalid": sorted(invalid),
            "groups": groups, "scores": [round(float(v), 8) for v in scores],
            "am_gain": [round(float(v), 6) for v in am.gain]}


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


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A hidden sibling folder to write into; on success it replaces `final` in one rename
    (an old `final` is moved aside first and deleted after), on failure it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield stage
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
        stage.rename(final)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "layer"


def build_atlas(model: nn.Module, input_shape: tuple[int, int, int], out_dir: Path | str, *,
                layers: list[str] | None = None, criterion: str | Criterion = "actmax",
                batches: Batches | None = None, flops_reduction: float | None = 0.5,
                keep_ratio: float | None = None, am: AMConfig | None = None,
                round_to: int = 8, overwrite: bool = False) -> AtlasResult:
    """Write the filter atlas of `model`'s conv layers (or `layers`) into `out_dir`.

    The AM images are computed once for every conv layer (all of them when a FLOPs target
    needs scores for the whole network, else only the drawn ones); `criterion` scores the
    filters (actmax and function reuse the images). Pruned filters are those `prune()` removes
    at `flops_reduction`, or, with `keep_ratio`, each layer's lowest-scored share. The folder
    appears complete or not at all; an existing non-empty one is replaced only with
    `overwrite`.
    """
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
    box = input_box([b[:2] for b in data]) if data else None
    timing: dict[str, float] = {}
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
    t0 = time.perf_counter()
    redundancy = getattr(crit, "redundancy", {}) if isinstance(crit, RedundancyCriterion) else {}
    report = {}
    with staged_folder(final) as stage:
        for name in drawn:
            report[name] = _draw_and_report(stage / f"{_safe(name)}.png", name, images[name],
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
                  weights: Path | str | None = None, dataset: str = "auto",
                  data_dir: Path | str | None = None, input_size: str | None = None,
                  layers: list[str] | None = None, criterion: str = "actmax",
                  flops_reduction: float | None = 0.5, keep_ratio: float | None = None,
                  am_steps: int = AMConfig.steps, samples: int = 256,
                  samples_per_class: int | None = None, seed: int = 0,
                  overwrite: bool = False) -> AtlasResult:
    """Load `model` (any --model reference) and its reference data, then `build_atlas`."""
    from edgeprune.criteria.scoring import load_reference

    get_criterion(criterion)  # an unknown name fails before anything is loaded
    loaded = load_reference(model, weights, dataset, data_dir, input_size, samples, seed,
                            samples_per_class=samples_per_class)
    return build_atlas(loaded.model, loaded.spec.shape, out, layers=layers, criterion=criterion,
                       batches=loaded.batches or None, flops_reduction=flops_reduction,
                       keep_ratio=keep_ratio, am=AMConfig(steps=am_steps, seed=seed),
                       overwrite=overwrite)
