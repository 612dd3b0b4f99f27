"""Activation maximization (AM), shared by `actmax`, `function` and the filter atlas: for every
filter of a layer, the input image that most excites it.

    x* = argmax_x mean_hw A_k(x) / s_k - tv * TV(x) - l2 * ||x||^2

A_k is the unit's pre-activation (the layer's output after its BatchNorm, see `feature_maps`): the
activation itself (after ReLU) has no gradient where it is zero, which stalls the ascent of
weakly excited units. s_k is the filter's RMS input gradient at the start image: the objective's
gradient is then about 1 per pixel for every filter and layer, the penalties (summed over
pixels) weigh the same everywhere, and a filter and a positively scaled copy of it get the same
image (a functional reading of "filters matter regardless of magnitude"). All filters of a
layer are optimized together as one batch (one image each) with Adam, from the same small noise
image, with random jitter (a shared roll of up to `jitter` pixels per step) and, when an input
box is known, clamping into it. The forward pass stops at the layer (a hook raises once it has
the output), so early layers are cheap. Hooks are registered and removed inside; the caller's
model is never touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgeprune.console import progress_bar
from edgeprune.criteria.base import prunable_layers
from edgeprune.criteria.feature_maps import (
    Tap,
    attach,
    find_taps,
    images_per_batch,
    working_copy,
)


@dataclass
class AMConfig:
    """Activation-maximization options (defaults sized for 28-32 px inputs on a CPU)."""

    steps: int = 48
    lr: float = 0.1
    tv_weight: float = 0.2
    l2_weight: float = 0.01
    jitter: int = 1
    init_std: float = 0.1
    batch: int = 256
    seed: int = 0


@dataclass
class LayerAM:
    """One layer's AM result. `images` (C, c, H, W) in the model's (normalized) input space;
    `gain` how much AM raised each unit's mean pre-activation over the starting noise, in
    units of the unit's own sensitivity (so it does not depend on the filter's scale);
    `peak` the unit's highest activation (after its ReLU, where it has one) on its image;
    `reached` False for layers forward never calls (all zeros then)."""

    images: Tensor
    gain: Tensor
    peak: Tensor
    reached: bool = True

    def invalid(self, gain_tol: float = 0.01) -> Tensor:
        """Filters AM cannot excite: the unit never becomes active (peak <= 0), or its gain is
        below `gain_tol` of the layer's median positive gain (its output ignores the input)."""
        positive = self.gain[self.gain > 0]
        scale = float(positive.median()) if len(positive) else 0.0
        return (self.peak <= 0) | (self.gain <= gain_tol * scale)


class _Reached(Exception):
    """Raised by the hook once the tapped output exists: the rest of forward is skipped."""


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic L1 total variation of each image of a batch, summed over pixels (B,)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


class _Stopper:
    """Runs `model` up to the tapped tensor and returns it (None if never reached)."""

    def __init__(self, model: nn.Module, tap: Tap) -> None:
        self.model, self.tap, self.output = model, tap, None
        self.reachable = tap.module in dict(model.named_modules())

    def _found(self, _key: str, tensor: Tensor) -> None:
        self.output = tensor
        raise _Reached

    def __call__(self, x: Tensor) -> Tensor | None:
        if not self.reachable:
            return None
        self.output = None
        handles = attach(self.model, {self.tap.layer: self.tap}, self._found)
        try:
            self.model(x)
        except _Reached:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return self.output


def _unit(pre: Tensor, channels: Tensor) -> Tensor:
    """Row b of the output at channel channels[b], flattened over positions: (B, h*w)."""
    return pre[torch.arange(len(channels)), channels].reshape(len(channels), -1)


def sensitivity(run: _Stopper, x0: Tensor, channels: Tensor) -> Tensor:
    """Per filter, the RMS gradient of its objective at the start image (B,): dividing the
    objective by it makes AM scale-invariant, so a filter and a positively scaled copy of it
    get the same image. Filters whose output ignores the input keep 0 (stay unexcited)."""
    x = x0.repeat(len(channels), 1, 1, 1).requires_grad_(True)
    grad = torch.autograd.grad(_unit(run(x), channels).mean(1).sum(), x)[0]
    return grad.flatten(1).pow(2).mean(1).sqrt()


def _optimize(run: _Stopper, x0: Tensor, channels: Tensor, cfg: AMConfig,
              box: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """(AM images, per-filter objective scale) for one batch of filters."""
    scale = sensitivity(run, x0, channels)
    inverse = torch.where(scale > 0, 1 / scale.clamp(min=1e-30), torch.zeros_like(scale))
    x = x0.repeat(len(channels), 1, 1, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        dy, dx = (int(v) for v in torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=g))
        pre = run(torch.roll(x, (dy, dx), (2, 3)) if cfg.jitter else x)
        objective = _unit(pre, channels).mean(1) * inverse
        penalty = cfg.tv_weight * total_variation(x) + cfg.l2_weight * x.pow(2).flatten(1).sum(1)
        opt.zero_grad(set_to_none=True)
        (penalty - objective).sum().backward()
        opt.step()
        if box is not None:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, box[1]), box[0]))
    return x.detach(), inverse


def visualize_layer(model: nn.Module, tap: Tap, channels: int, input_shape: tuple[int, ...],
                    cfg: AMConfig, box: tuple[Tensor, Tensor] | None = None) -> LayerAM:
    """AM images of all `channels` filters of the tapped layer of `model` (a working copy)."""
    device = next(iter(model.parameters()), torch.zeros(0)).device
    x0 = cfg.init_std * torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(
        cfg.seed))
    x0 = x0.to(device)
    run = _Stopper(model, tap)
    start_pre = run(x0)
    if start_pre is None:
        return LayerAM(torch.zeros(channels, *input_shape), torch.zeros(channels),
                       torch.zeros(channels), reached=False)
    box = None if box is None else (box[0].to(device), box[1].to(device))
    before = start_pre[0].reshape(channels, -1).mean(1).detach()
    images, gains, peaks = [], [], []
    for start in range(0, channels, cfg.batch):
        ks = torch.arange(start, min(channels, start + cfg.batch), device=device)
        x, inverse = _optimize(run, x0, ks, cfg, box)
        with torch.no_grad():
            pre = run(x)
            gains.append(((_unit(pre, ks).mean(1) - before[ks]) * inverse).cpu())
            peaks.append(_unit(tap.activated(pre), ks).max(1).values.cpu())
        images.append(x.cpu())
    return LayerAM(torch.cat(images), torch.cat(gains), torch.cat(peaks))


def visualize(model: nn.Module, input_shape: tuple[int, ...], names: list[str] | None = None,
              cfg: AMConfig | None = None,
              box: tuple[Tensor, Tensor] | None = None) -> dict[str, LayerAM]:
    """AM images of every filter of the prunable layers `names` (default: all) of `model`,
    layer by layer on an eval-mode working copy. `box` = (low, high) clamps the images."""
    cfg = cfg or AMConfig()
    work = working_copy(model)  # at most `cfg.batch` images a pass, fewer for large inputs
    cfg = dataclasses.replace(cfg, batch=images_per_batch(work, tuple(input_shape), cfg.batch))
    layers = prunable_layers(work)
    names = list(layers) if names is None else names
    taps = find_taps(work, names)
    out = {}
    with progress_bar(len(names), "activation maximization") as advance:
        for name in names:
            out[name] = visualize_layer(work, taps[name], layers[name].weight.shape[0],
                                        tuple(input_shape), cfg, box)
            advance(status=name)
    return out
