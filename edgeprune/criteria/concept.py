"""`concept`: semantic-concept majority voting (Alqahtani, Xie, Jones, Essa, "Pruning CNN
filters via quantifying the importance of deep visual representations", CVIU 2021).

Paper (abstract): a unit's importance comes from its feature-map activations and "essential
semantic parts": majority voting over the alignment between a semantic concept and each unit's
representation; new conv kernels are then estimated from the remaining channels.

Documented reading (docs/CRITERIA.md, `concept`; network-dissection style, annotation-free):
- unit masks: each unit's activation (see `feature_maps`) upsampled bilinearly to the input size and
  thresholded at the unit's top `unit_quantile` (0.5%) activation over all reference images
  and positions; a unit whose threshold is not positive never fires and has empty masks;
- concept mask per image: Grad-CAM of the true class on `cam_layer` (default: the last conv
  layer whose map is larger than 1x1), upsampled, keeping the top `cam_area` of the image's
  positive CAM; or, when a batch carries a third element (B, H, W), those real part or
  segmentation masks (see `concept_masks` for the ImageFolder convention);
- IoU(unit, image) = |M_k & L| / |M_k | L|; each image votes for the units of each layer whose
  IoU is among that layer's top `top_fraction` (and positive);
- score = votes / N, plus 1e-3 x the unit's mean IoU to order the units no image voted for
  (ours: with few voters most units tie at zero); normalized per layer.
Kernel re-estimation (the paper's second half) changes weights after pruning: it belongs to the
pruning stage, not to this score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edgeprune.criteria.base import (
    Batches,
    Criterion,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.criteria.feature_maps import (
    Tap,
    find_taps,
    recording,
    stream_maps,
    take_samples,
    working_copy,
)


def grad_cam_masks(tap: Tap, pre: Tensor, logits: Tensor, labels: Tensor,
                   size: tuple[int, int], area: float, value: Tensor | None = None) -> Tensor:
    """(B, H, W) bool: the top `area` of each image's positive Grad-CAM for its true class.
    `pre` is the tapped tensor in the graph that produced `logits`; the CAM weights its
    activation by the true-class gradient at `pre` (equal to the gradient at the activation
    wherever the unit is active); `value`, when given, is a copy of `pre` taken before any
    in-place op changed it."""
    target = logits.gather(1, labels.view(-1, 1)).sum()
    grad = torch.autograd.grad(target, pre)[0]
    activation = tap.activated(pre if value is None else value).detach()
    if activation.ndim == 2:  # a map without positions: no localization, the whole image
        return torch.ones(len(labels), *size, dtype=torch.bool, device=labels.device)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam.detach(), size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    k = max(1, int(round(area * flat.shape[1])))
    cut = flat.topk(k, dim=1).values[:, -1:]
    return ((flat >= cut) & (flat > 0)).view_as(cam)


BINS = 2048  # histogram bins per unit for the activation quantile
CHUNK_ELEMENTS = 1 << 23  # upsampled values handled at once (32 MB of float32)


def _upsampled(maps: Tensor, size: tuple[int, int]) -> Tensor:
    maps = maps.view(*maps.shape[:2], 1, 1) if maps.ndim == 2 else maps
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def _unit_chunks(maps: Tensor, size: tuple[int, int]) -> Iterator[tuple[int, Tensor]]:
    """(first unit, upsampled maps (N, c, H, W)) of a few units at a time."""
    step = max(1, CHUNK_ELEMENTS // max(1, maps.shape[0] * size[0] * size[1]))
    for start in range(0, maps.shape[1], step):
        yield start, _upsampled(maps[:, start:start + step], size)


class UnitQuantile:
    """Each unit's top-`quantile` activation over all images and upsampled positions, found in
    two histogram passes over the data, so memory is C x BINS counts whatever the number of
    images. Pass 1 (`add` until `refine`): `BINS` equal bins between 0 and the unit's
    largest activation (bilinear upsampling never exceeds it) locate the bin holding the
    k-th largest value; pass 2 splits that bin into `BINS` again. The threshold is the lower
    edge of the sub-bin holding the k-th value: exact to 1/BINS^2 of the unit's range, and
    values tied with it (a saturated ReLU6, a map constant over positions) all stay above
    it, as with an exact top-k. Only positive thresholds matter (a unit whose threshold is
    not positive never fires): values below 0 are not binned. Each unit's values are counted
    with `torch.histc`, one unit at a time."""

    def __init__(self, peaks: Tensor, quantile: float) -> None:
        # a hair above the largest activation: upsampling can round past it by an ulp
        self.peaks = peaks.double().clamp(min=0) * (1 + 2**-16)
        self.quantile = quantile
        self.counts = torch.zeros(len(peaks), BINS, dtype=torch.int32)
        self.values = 0
        self.bin: Tensor | None = None  # pass 2: the pass-1 bin being split, per unit
        self.above = torch.zeros(len(peaks), dtype=torch.int64)
        self.found = torch.ones(len(peaks), dtype=torch.bool)

    def add(self, maps: Tensor, size: tuple[int, int]) -> None:
        """Fold in one batch of a layer's activations (N, C, ...)."""
        if self.bin is None:
            self.values += maps.shape[0] * size[0] * size[1]
        for start, up in _unit_chunks(maps, size):
            for j in range(up.shape[1]):
                unit, peak = start + j, float(self.peaks[start + j])
                if peak <= 0:
                    continue
                low, high = 0.0, peak  # pass 1: the unit's whole positive range
                if self.bin is not None:  # pass 2: the bin holding its k-th value
                    low = int(self.bin[unit]) * peak / BINS
                    high = low + peak / BINS
                counts = torch.histc(up[:, j].reshape(-1).float(), BINS, low, high)
                self.counts[unit] += counts.to(torch.int32).cpu()

    def _locate(self) -> tuple[Tensor, Tensor, Tensor]:
        """(found, bin index from the bottom, count above that bin) of the k-th value."""
        k = max(1, int(math.ceil(self.quantile * self.values)))
        top_down = self.counts.flip(1).long()
        from_top = top_down.cumsum(1) + self.above[:, None]
        found = from_top[:, -1] >= k
        position = (from_top >= k).int().argmax(1)[:, None]
        above = (from_top - top_down).gather(1, position)[:, 0]
        return found, BINS - 1 - position[:, 0], above

    def refine(self) -> None:
        """End pass 1: the next `add` calls split the bin holding each unit's k-th value."""
        self.found, self.bin, self.above = self._locate()
        self.counts.zero_()

    def thresholds(self) -> Tensor:
        """(C,) thresholds after both passes; 0 where fewer than the quantile's share of
        values are positive."""
        found, sub, _ = self._locate()
        coarse = self.bin.double() / BINS * self.peaks
        fine = (self.bin.double() + sub.double() / BINS) / BINS * self.peaks
        edge = torch.where(found, fine, coarse)  # (float rounding at a bin edge: the bin)
        return torch.where(self.found & (self.peaks > 0), edge, torch.zeros_like(edge)).float()


def unit_iou(maps: Tensor, concept: Tensor, thresholds: Tensor) -> Tensor:
    """IoU of every unit's mask (activation >= its positive threshold) with each image's
    concept mask: (N, C)."""
    size = tuple(concept.shape[-2:])
    out = []
    for start, up in _unit_chunks(maps, size):
        t = thresholds[start:start + up.shape[1]].to(up.device).view(1, -1, 1, 1)
        unit = (up >= t) & (t > 0)
        inter = (unit & concept[:, None]).flatten(2).sum(2)
        union = (unit | concept[:, None]).flatten(2).sum(2)
        out.append(inter / union.clamp(min=1))
    return torch.cat(out, dim=1)


def majority_votes(iou: Tensor, top_fraction: float) -> Tensor:
    """Votes per unit (C,): each image (row) votes for its top `top_fraction` units with
    positive IoU, m = round(top_fraction * C) votes per image. Units tied at the cutoff
    share the votes left equally, so the result does not depend on the order of the units."""
    m = max(1, int(round(top_fraction * iou.shape[1])))
    cut = iou.topk(m, dim=1).values[:, -1:]
    positive = iou > 0
    above = (iou > cut) & positive
    tied = (iou == cut) & positive
    left = (m - above.sum(1, keepdim=True)).clamp(min=0).float()
    share = left / tied.sum(1, keepdim=True).clamp(min=1)
    return above.float().sum(0) + (tied.float() * share).sum(0)


def _cam_layer(taps: dict[str, Tap], maps: dict[str, Tensor], chosen: str | None) -> str:
    if chosen is not None:
        return chosen
    spatial = [n for n, m in maps.items() if m.ndim == 4 and m.shape[2] * m.shape[3] > 1]
    return spatial[-1] if spatial else next(iter(maps))


@dataclass
class Concept(Criterion, name="concept"):
    """Votes of the reference images for the units aligned with their concept region."""

    samples: int = 256
    unit_quantile: float = 0.005
    cam_area: float = 0.2
    top_fraction: float = 0.1
    cam_layer: str | None = None
    needs_data: ClassVar[bool] = True

    def _masks_and_peaks(self, work: nn.Module, data: list[tuple[Tensor, ...]]
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pass 1: every image's concept mask (N, H, W) and each unit's largest activation."""
        taps = find_taps(work)
        device = next(iter(work.parameters()), torch.zeros(0)).device
        store: dict[str, Tensor] = {}
        live: dict[str, Tensor] = {}
        peaks: dict[str, Tensor] = {}
        masks = []
        with recording(work, taps, store, live):
            for batch in data:
                store.clear()
                live.clear()
                x = batch[0].to(device).requires_grad_(True)
                with torch.enable_grad():
                    logits = work(x)
                    acts = {n: taps[n].activated(store[n]) for n in taps if n in store}
                    if len(batch) > 2:
                        masks.append(batch[2].bool().cpu())
                    else:
                        cam = _cam_layer(taps, acts, self.cam_layer)
                        masks.append(grad_cam_masks(
                            taps[cam], live[cam], logits, batch[1].to(device),
                            tuple(x.shape[-2:]), self.cam_area, value=store[cam]).cpu())
                for name, value in acts.items():
                    peak = value.detach().transpose(0, 1).flatten(1).amax(1).cpu()
                    peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
        return torch.cat(masks), peaks

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = take_samples(self.require_batches(batches), self.samples)
        work = working_copy(model)
        concept, peaks = self._masks_and_peaks(work, data)
        size = tuple(concept.shape[-2:])
        quantiles = {n: UnitQuantile(p, self.unit_quantile) for n, p in peaks.items()}
        for first in (True, False):  # passes 2 and 3: the unit thresholds
            for _, maps in stream_maps(work, data, list(peaks)):
                for name, value in maps.items():
                    quantiles[name].add(value, size)
            for quantile in quantiles.values() if first else ():
                quantile.refine()
        thresholds = {n: q.thresholds() for n, q in quantiles.items()}
        votes = {n: torch.zeros(len(p), dtype=torch.float64) for n, p in peaks.items()}
        iou_sums = {n: torch.zeros(len(p), dtype=torch.float64) for n, p in peaks.items()}
        voters, seen = 0, 0
        for batch, maps in stream_maps(work, data, list(peaks)):  # pass 4: IoU and the votes
            masks = concept[seen:seen + len(batch[0])]
            seen += len(batch[0])
            voting = masks.flatten(1).any(1)
            voters += int(voting.sum())
            for name, value in maps.items():
                iou = unit_iou(value.cpu(), masks, thresholds[name])[voting]
                votes[name] += majority_votes(iou, self.top_fraction).double()
                iou_sums[name] += iou.double().sum(0)
        self.votes = {n: v.float() for n, v in votes.items()}
        scores = {}
        for name, layer in prunable_layers(model).items():
            if name not in peaks:
                scores[name] = normalize_per_layer(torch.ones(layer.weight.shape[0]))
                continue
            value = (votes[name] + 1e-3 * iou_sums[name]) / max(voters, 1)
            if not bool(value.any()):  # no unit meets any concept: nothing tells them apart
                value = torch.ones(layer.weight.shape[0], dtype=torch.float64)
            scores[name] = normalize_per_layer(value)
        return scores
