"""Kernel re-estimation after pruning (the `concept` paper; the least-squares step of ThiNet
and channel pruning by He et al. 2017).

Every convolution (groups=1) or linear layer that lost input channels is refitted, in forward
order, so that on sampled inputs its outputs match the unpruned layer's: with X the im2col
patches the *pruned* network feeds the layer (so each refit also absorbs the error of the
layers refitted before it) and Y the *unpruned* layer's outputs on the same images, restricted
to the output channels the layer kept,

    W = argmin ||X W - Y||^2 + lambda ||W||^2,   lambda = ridge x mean(diag(X^T X)),

solved in float64 from X^T X and X^T Y accumulated over batches (the bias, when the layer has
one, is fitted as an unregularized intercept). Layers with grouped/depthwise kernels keep their
weights: their inputs and outputs are pruned together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.console import progress_bar
from edgeprune.pruning.protect import forward_order


@dataclass(frozen=True)
class Reestimate:
    """Options of kernel re-estimation: images used, sampled output positions per layer
    (conv layers; linear layers use every image) and the relative ridge term."""

    samples: int = 512
    rows: int = 16384
    ridge: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class Refit:
    """One refitted layer: relative output error ||XW - Y|| / ||Y|| on the fitting samples
    with the pruned weights and with the refitted ones."""

    layer: str
    error_before: float
    error_after: float


class _Stop(Exception):
    """Raised by a hook once the layer of interest has been reached."""


def _refittable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1
            and not isinstance(layer.padding, str) and layer.padding_mode == "zeros")


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _capture(model: nn.Module, layer: nn.Module, x: Tensor, want_input: bool) -> Tensor | None:
    """The input (or output) of `layer`'s first call when `model` runs on `x`."""
    seen: list[Tensor] = []

    def pre(_: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _Stop

    def post(_: nn.Module, __: tuple, out: Tensor) -> None:
        seen.append(out)
        raise _Stop

    handle = layer.register_forward_pre_hook(pre) if want_input else \
        layer.register_forward_hook(post)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0].detach() if seen else None


def _rows(layer: nn.Module, inp: Tensor, out: Tensor, keep: list[int] | None, per_image: int,
          g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(X, Y) design rows of one batch: im2col patches (or features) and target outputs."""
    if keep is not None:
        out = out[:, keep]
    if isinstance(layer, nn.Linear):
        return inp.reshape(-1, inp.shape[-1]), out.reshape(-1, out.shape[-1])
    patches = F.unfold(inp, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    targets = out.flatten(2)  # (N, C_out, L)
    n, _, positions = patches.shape
    pick = torch.randint(0, positions, (n, min(per_image, positions)), generator=g)
    x = torch.gather(patches, 2, pick[:, None].expand(-1, patches.shape[1], -1))
    y = torch.gather(targets, 2, pick[:, None].expand(-1, targets.shape[1], -1))
    return x.transpose(1, 2).reshape(-1, x.shape[1]), y.transpose(1, 2).reshape(-1, y.shape[1])


def _weights(layer: nn.Module) -> Tensor:
    """The layer's weights as a (d [+1 bias], C_out) matrix, matching the design rows."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double().T
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double()[None]])
    return w


@torch.no_grad()
def _refit(name: str, original: nn.Module, pruned: nn.Module, keep: list[int] | None,
           images: list[Tensor], options: Reestimate) -> Refit | None:
    old, new = original.get_submodule(name), pruned.get_submodule(name)
    g = torch.Generator().manual_seed(options.seed)
    per_image = max(1, options.rows // max(1, sum(len(x) for x in images)))
    gram = cross = None
    y_energy = 0.0
    for x in images:
        inp, out = _capture(pruned, new, x, True), _capture(original, old, x, False)
        if inp is None or out is None:
            return None
        rows, targets = _rows(new, inp, out, keep, per_image, g)
        rows, targets = rows.double(), targets.double()
        if new.bias is not None:
            rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ targets if cross is None else cross + rows.T @ targets
        y_energy += float((targets * targets).sum())
    w0 = _weights(new)
    d = w0.shape[0] - (new.bias is not None)
    penalty = torch.zeros(w0.shape[0], dtype=torch.float64)
    penalty[:d] = options.ridge * float(gram.diagonal()[:d].mean())
    w = torch.linalg.solve(gram + torch.diag(penalty), cross)

    def error(m: Tensor) -> float:
        sq = float((m * (gram @ m)).sum() - 2 * (m * cross).sum()) + y_energy
        return max(sq, 0.0) ** 0.5 / max(y_energy, 1e-30) ** 0.5

    fit = Refit(name, error(w0), error(w))
    if fit.error_after >= fit.error_before:
        return fit  # the ridge fit is no better on its own samples: keep the weights
    new.weight.copy_(w[:d].T.reshape(new.weight.shape).to(new.weight.dtype))
    if new.bias is not None:
        new.bias.copy_(w[d].to(new.bias.dtype))
    return fit


def reestimate_kernels(original: nn.Module, pruned: nn.Module, kept: dict[str, list[int]],
                       batches: Iterable[tuple[Tensor, ...]],
                       options: Reestimate | None = None) -> list[Refit]:
    """Refit, in place, every layer of `pruned` that lost input channels relative to
    `original` (see the module docstring); `kept` maps layers to the output channels they
    kept. Both models are used in eval mode. Returns the fit of each layer."""
    options = options or Reestimate()
    images, seen = [], 0
    for batch in batches:
        x = batch[0][: options.samples - seen]
        images.append(x)
        seen += len(x)
        if seen >= options.samples:
            break
    if not images:
        return []
    original_mode, pruned_mode = original.training, pruned.training
    original.eval(), pruned.eval()
    modules = dict(pruned.named_modules())
    shrunk = [n for n, m in original.named_modules() if _refittable(m) and n in modules
              and type(modules[n]) is type(m) and _in_width(modules[n]) < _in_width(m)]
    fits: list[Refit] = []
    try:
        order = forward_order(pruned, shrunk, images[0][:1])
        with progress_bar(len(order), "re-estimating kernels") as advance:
            for name in order:
                fit = _refit(name, original, pruned, kept.get(name), images, options)
                if fit is not None:
                    fits.append(fit)
                advance(status=name)
    finally:
        original.train(original_mode), pruned.train(pruned_mode)
    return fits
