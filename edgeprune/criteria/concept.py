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
from edgeprune.criteria.feature_maps import Tap, find_taps, recording, take_samples, working_copy

CHUNK = 32  # units upsampled at once


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


def _upsampled(maps: Tensor, size: tuple[int, int]) -> Tensor:
    maps = maps.view(*maps.shape[:2], 1, 1) if maps.ndim == 2 else maps
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def unit_thresholds(maps: Tensor, size: tuple[int, int], quantile: float) -> Tensor:
    """Each unit's top-`quantile` activation over all images and (upsampled) positions: (C,)."""
    out = []
    for start in range(0, maps.shape[1], CHUNK):
        up = _upsampled(maps[:, start:start + CHUNK], size).transpose(0, 1).flatten(1)
        k = max(1, int(math.ceil(quantile * up.shape[1])))
        out.append(up.topk(k, dim=1).values[:, -1])
    return torch.cat(out)


def unit_iou(maps: Tensor, concept: Tensor, thresholds: Tensor) -> Tensor:
    """IoU of every unit's mask (activation >= its positive threshold) with each image's
    concept mask: (N, C)."""
    size = tuple(concept.shape[-2:])
    out = []
    for start in range(0, maps.shape[1], CHUNK):
        t = thresholds[start:start + CHUNK].view(1, -1, 1, 1)
        unit = (_upsampled(maps[:, start:start + CHUNK], size) >= t) & (t > 0)
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

    def _maps_and_masks(self, work: nn.Module, data: list[tuple[Tensor, ...]]
                        ) -> tuple[dict[str, Tensor], Tensor]:
        taps = find_taps(work)
        device = next(iter(work.parameters()), torch.zeros(0)).device
        store: dict[str, Tensor] = {}
        live: dict[str, Tensor] = {}
        parts: dict[str, list[Tensor]] = {}
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
                    parts.setdefault(name, []).append(value.detach().cpu())
        return {n: torch.cat(v) for n, v in parts.items()}, torch.cat(masks)

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = take_samples(self.require_batches(batches), self.samples)
        maps, concept = self._maps_and_masks(working_copy(model), data)
        voters = concept.flatten(1).any(1)
        self.votes = {}
        scores = {}
        for name, layer in prunable_layers(model).items():
            if name not in maps:
                scores[name] = normalize_per_layer(torch.ones(layer.weight.shape[0]))
                continue
            iou = unit_iou(maps[name], concept, unit_thresholds(
                maps[name], tuple(concept.shape[-2:]), self.unit_quantile))[voters]
            self.votes[name] = majority_votes(iou, self.top_fraction)
            value = self.votes[name] / max(len(iou), 1) + 1e-3 * iou.sum(0) / max(len(iou), 1)
            if not bool(value.any()):  # no unit meets any concept: nothing tells them apart
                value = torch.ones(layer.weight.shape[0])
            scores[name] = normalize_per_layer(value)
        return scores
