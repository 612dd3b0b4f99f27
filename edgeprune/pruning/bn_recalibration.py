"""BatchNorm re-calibration: re-estimate the running statistics of a (pruned) network's
BatchNorm layers on a few thousand training images, with no weight update.

Removing channels changes what every later BatchNorm sees, so the running mean and variance
saved during training no longer match and the accuracy of a pruned BN network collapses before
any fine-tuning. Re-estimating them (as in AdaBN / "EagleEye" adaptive BN) is cheap: forward
passes only, the statistics accumulated as exact averages over all images (each batch's
momentum is its share of the images seen so far).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from edgeprune.console import progress_bar

BatchNorms = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, ...]],
                   max_samples: int | None = None) -> nn.Module:
    """Reset and re-estimate the running statistics of every BatchNorm of `model` in place
    from `batches` (images first in each batch), at most `max_samples` images, every image
    weighted the same. Only the BN layers run in training mode (dropout and the rest stay in
    eval); weights, the training flag of every module and each BN's momentum are restored, and
    so are the old statistics if anything fails. Without images the model is left as it is.
    Returns `model`."""
    norms = [m for m in model.modules() if isinstance(m, BatchNorms) and m.track_running_stats]
    images = _images(batches, max_samples)
    if not norms or not images:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    device = next(iter(model.parameters()), torch.zeros(0)).device
    done = False
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.train()
        seen = 0
        with progress_bar(len(images), "re-calibrating BatchNorm") as advance:
            for x in images:
                for m in norms:  # running = old + n/(seen+n) * (batch - old): a mean over images
                    m.momentum = len(x) / (seen + len(x))
                model(x.to(device))
                seen += len(x)
                advance()
        done = True
    finally:
        for m, momentum, state in zip(norms, momenta, saved, strict=True):
            m.momentum = momentum
            if not done:
                m.load_state_dict(state)
        for m, mode in modes.items():
            m.train(mode)
    return model


def _images(batches: Iterable[tuple[Tensor, ...]], max_samples: int | None) -> list[Tensor]:
    """The batches' images, cut at `max_samples`; a last batch of one image joins the one
    before it (BatchNorm cannot take the statistics of a single value per channel)."""
    out: list[Tensor] = []
    seen = 0
    for batch in batches:
        x = batch[0]
        if max_samples is not None:
            x = x[: max(0, max_samples - seen)]
        if len(x) == 0:
            break
        out.append(x)
        seen += len(x)
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2:] = [torch.cat(out[-2:])]
    return out if seen > 1 else []
