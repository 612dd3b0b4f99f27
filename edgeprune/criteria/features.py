"""Feature-map collection shared by the data criteria (`fmcluster`, `concept`, `hrank`): each
prunable layer's unit activations (see `taps`) over the reference images."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from edgeprune.criteria.base import Batches, prunable_layers
from edgeprune.criteria.taps import find_taps, recording, working_copy


def take_samples(batches: list[tuple[Tensor, ...]], limit: int | None) -> list[tuple[Tensor, ...]]:
    """The first `limit` samples of the batches (all when None), batch structure kept."""
    if limit is None:
        return batches
    out, left = [], limit
    for batch in batches:
        if left <= 0:
            break
        out.append(tuple(t[:left] for t in batch))
        left -= len(batch[0])
    return out


def stream_maps(model: nn.Module, batches: Batches,
                names: list[str] | None = None) -> Iterator[tuple[tuple, dict[str, Tensor]]]:
    """Per batch: (the batch, {layer: unit activations}) of every prunable layer, read on an
    eval-mode working copy; hooks live only while the generator runs."""
    work = working_copy(model)
    names = list(prunable_layers(work)) if names is None else names
    taps = find_taps(work, names)
    device = next(iter(work.parameters()), torch.zeros(0)).device
    store: dict[str, Tensor] = {}
    with recording(work, taps, store):
        for batch in batches:
            store.clear()
            with torch.no_grad():  # not around the yield: the caller's grad mode stays its own
                work(batch[0].to(device))
                maps = {n: taps[n].activated(store[n]) for n in names if n in store}
            yield batch, maps


def collect_maps(model: nn.Module, batches: Batches, names: list[str] | None = None,
                 reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Every layer's unit activations over all batches, concatenated on the sample axis
    (each batch's maps passed through `reduce` first when given). Layers that forward never
    reaches are absent."""
    parts: dict[str, list[Tensor]] = {}
    for _, maps in stream_maps(model, batches, names):
        for name, value in maps.items():
            parts.setdefault(name, []).append(reduce(value) if reduce else value.cpu())
    return {n: torch.cat(v) for n, v in parts.items()}
