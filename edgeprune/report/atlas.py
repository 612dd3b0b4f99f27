"""Drawing the filter atlas: one layer's activation-maximization images as a PNG grid, pruned
filters dimmed and crossed out, redundancy groups framed in one colour, invalid filters framed
in black; and the layer's atlas.json entry. `edgeprune.jobs.explain` computes what is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgeprune.criteria.am_images import LayerAM
from edgeprune.criteria.redundancy import Redundancy

PRUNED_DIM = 0.3
GROUP_COLOURS = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.58, 0.4, 0.74),
                 (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.09, 0.75, 0.81), (0.74, 0.74, 0.13)]
SINGLE, INVALID, CROSS = (0.85, 0.85, 0.85), (0.0, 0.0, 0.0), (0.84, 0.15, 0.16)


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


def draw_atlas_layer(path: Path, name: str, am: LayerAM, scores: Tensor, keep: set[int],
                     redundancy: Redundancy | None, criterion: str) -> dict:
    """Draw one layer's PNG at `path`; returns its atlas.json entry."""
    invalid = set(redundancy.invalid.nonzero().flatten().tolist()) if redundancy else set()
    groups = redundancy.groups_for(keep) if redundancy is not None else None
    draw_layer(path, name, am, _layout(scores, sorted(keep), groups), keep, invalid, criterion)
    return {"channels": len(scores), "png": path.name, "kept": sorted(keep),
            "pruned": sorted(set(range(len(scores))) - keep), "invalid": sorted(invalid),
            "groups": groups, "scores": [round(float(v), 8) for v in scores],
            "am_gain": [round(float(v), 6) for v in am.gain]}


