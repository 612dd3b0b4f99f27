"""Attention pruned by heads, through Torch-Pruning's own head support.

timm's attention (`timm.layers.Attention`, used by ViT, DeiT and MobileViT) holds one fused
`qkv` Linear of `3 * num_heads * head_dim` outputs and a `proj` Linear. Torch-Pruning prunes
it by heads when it is told each `qkv`'s head count (`num_heads={qkv: n}`,
`prune_num_heads=True`): it averages the group's channel importance over each head, ranks the
heads (globally across layers, or per layer) at `head_pruning_ratio`, and removes every row of
the chosen heads from `qkv` (their query, key and value) with the matching columns of `proj`.
`head_dim` is kept (`prune_head_dims=False`), so the attention scale is unchanged. Afterwards
the module's own `num_heads` and `attn_dim` must be set to the new count (`sync_heads`), as
Torch-Pruning's timm ViT example does.

`nn.MultiheadAttention` (torchvision's ViT) ties its inner width to `embed_dim`, the width of
the residual stream it reads and writes, so a head cannot leave it without those channels.
Torch-Pruning prunes its `embed_dim` along with the stream (told the head count as the layer's
channel groups, it cuts the same dimensions of every head). edgeprune turns each such cut into
the removal of whole heads (`as_whole_heads`: as many heads as the chosen channels make, those of
lowest mean importance), and `HeadAwareMHAPruner` carries it out with `num_heads` lowered and
`head_dim` kept. It also accepts Torch-Pruning's own cut (the same dimensions of every head,
`head_dim` lowered) and refuses any other, which would mix dimensions of different heads.
"""

from __future__ import annotations

import math

import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.pruner import function


def _is_fused_attention(module: nn.Module) -> bool:
    """A timm-style attention: a fused `qkv` Linear of 3 * num_heads * head_dim outputs and
    a `proj` Linear reading num_heads * head_dim inputs."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    heads, dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
            and isinstance(heads, int) and isinstance(dim, int) and heads > 0 and dim > 0):
        return False
    return qkv.out_features == 3 * heads * dim and proj.in_features == heads * dim


def fused_attentions(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of every timm-style attention in `model` (see `_is_fused_attention`)."""
    return {n: m for n, m in model.named_modules() if _is_fused_attention(m)}


def head_counts(model: nn.Module) -> dict[nn.Module, int]:
    """Torch-Pruning's `num_heads` argument: each timm-style attention's `qkv` Linear and its
    head count, plus every `nn.MultiheadAttention` and its head count."""
    counts: dict[nn.Module, int] = {m.qkv: m.num_heads for m in fused_attentions(model).values()}
    counts.update({m: m.num_heads for m in model.modules()
                   if isinstance(m, nn.MultiheadAttention)})
    return counts


def heads_of(model: nn.Module) -> dict[str, int]:
    """Name -> head count of every attention Torch-Pruning can prune by heads in `model`."""
    out = {n: m.num_heads for n, m in fused_attentions(model).items()}
    out.update({n: m.num_heads for n, m in model.named_modules()
                if isinstance(m, nn.MultiheadAttention)})
    return out


def sync_heads(model: nn.Module) -> None:
    """Set each timm-style attention's `num_heads` (and `attn_dim`, where it has one) to what
    its pruned `qkv` holds, `head_dim` being unchanged by head pruning; in torchvision's ViT,
    the model's `hidden_dim` (which its forward reshapes the patches to) to its patch
    projection's width and each encoder block's `num_heads` to its attention's."""
    for module in model.modules():
        conv, attn = getattr(module, "conv_proj", None), getattr(module, "self_attention", None)
        if isinstance(conv, nn.Conv2d) and isinstance(getattr(module, "hidden_dim", None), int):
            module.hidden_dim = conv.out_channels
        if isinstance(attn, nn.MultiheadAttention) \
                and isinstance(getattr(module, "num_heads", None), int):
            module.num_heads = attn.num_heads
        qkv, dim = getattr(module, "qkv", None), getattr(module, "head_dim", None)
        if not (isinstance(qkv, nn.Linear) and isinstance(dim, int) and dim > 0
                and isinstance(getattr(module, "num_heads", None), int)):
            continue
        module.num_heads = qkv.out_features // (3 * dim)
        if isinstance(getattr(module, "attn_dim", None), int):
            module.attn_dim = module.num_heads * dim


def attention_head_dim(group: tp.dependency.Group, heads: dict[nn.Module, int]) -> int | None:
    """Size of one head in a Torch-Pruning group that removes attention heads (its `qkv`
    losing output rows), else None."""
    for dep, _ in group:
        module = dep.target.module
        if module in heads and isinstance(module, nn.Linear) \
                and dep.handler == function.prune_linear_out_channels:
            return module.out_features // (3 * heads[module])
    return None


def trim_heads(group: tp.dependency.Group, graph: tp.DependencyGraph, head_dim: int,
               importance: object, floor: int) -> tp.dependency.Group | None:
    """The head-removing `group`, cut back so the attention keeps at least one head and at
    least `floor` of its channels (rounded up to whole heads): the best-scored of the chosen
    heads stay. None when nothing may go."""
    dep, idxs = group[0]
    module, fn = dep.target.module, dep.handler
    current = graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(fn) \
        else graph.get_in_channels(module)
    total = current // head_dim
    keep = max(1, math.ceil(floor / head_dim))
    chosen = sorted({int(i) // head_dim for i in idxs})
    if total - len(chosen) >= keep:
        return group
    allowed = total - keep
    if allowed <= 0:
        return None
    scores: Tensor | None = importance(graph.get_pruning_group(module, fn, list(range(current))))
    if scores is None:
        return None
    per_head = scores.view(total, head_dim).mean(1)
    lowest = sorted(chosen, key=lambda h: float(per_head[h]))[:allowed]
    return graph.get_pruning_group(
        module, fn, [h * head_dim + d for h in sorted(lowest) for d in range(head_dim)])


def mha_head_dim(group: tp.dependency.Group) -> int | None:
    """Size of one head when `group` cuts `nn.MultiheadAttention` layers that all have the
    same heads, else None."""
    layers = {dep.target.module for dep, _ in group
              if isinstance(dep.target.module, nn.MultiheadAttention)}
    shapes = {(m.num_heads, m.head_dim) for m in layers}
    return next(iter(shapes))[1] if len(shapes) == 1 else None


def as_whole_heads(group: tp.dependency.Group, graph: tp.DependencyGraph, head_dim: int,
                   importance: object, floor: int) -> tp.dependency.Group | None:
    """`group` (which cuts `nn.MultiheadAttention` layers along with the residual stream
    they share) turned into the removal of as many whole heads as its channels make (rounded
    down), the heads of lowest mean importance, at least one head and `floor` channels kept.
    None when that is no head."""
    dep, idxs = group[0]
    module, fn = dep.target.module, dep.handler
    current = graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(fn) \
        else graph.get_in_channels(module)
    if current % head_dim:
        return None
    total = current // head_dim
    keep = max(1, math.ceil(floor / head_dim))
    count = min(len(set(idxs)) // head_dim, total - keep)
    if count <= 0:
        return None
    scores: Tensor | None = importance(graph.get_pruning_group(module, fn, list(range(current))))
    if scores is None:
        return None
    lowest = sorted(range(total), key=lambda h: float(scores.view(total, head_dim)[h].mean()))
    return graph.get_pruning_group(
        module, fn, [h * head_dim + d for h in sorted(lowest[:count]) for d in range(head_dim)])


class HeadAwareMHAPruner(function.MultiheadAttentionPruner):
    """Torch-Pruning's `nn.MultiheadAttention` pruner, which cuts `embed_dim` and keeps the
    head count, extended to whole heads: a cut that removes whole heads lowers `num_heads`
    (`head_dim` kept); one that removes the same dimensions from every head lowers
    `head_dim`. Any other cut would move dimensions between heads and is refused."""

    @staticmethod
    def _whole_heads(layer: nn.MultiheadAttention, idxs: list[int]) -> int | None:
        """How many whole heads `idxs` are, or None when they are not whole heads."""
        dim = layer.head_dim
        heads = {i // dim for i in idxs}
        if len(idxs) == len(heads) * dim and all(
                set(range(h * dim, (h + 1) * dim)) <= set(idxs) for h in heads):
            return len(heads)
        return None

    @staticmethod
    def _same_in_every_head(layer: nn.MultiheadAttention, idxs: list[int]) -> bool:
        dim = layer.head_dim
        offsets = {i % dim for i in idxs}
        return len(idxs) == len(offsets) * layer.num_heads and all(
            {h * dim + o for o in offsets} <= set(idxs) for h in range(layer.num_heads))

    def check(self, layer: nn.Module, idxs: list[int], to_output: bool) -> None:
        """AssertionError (Torch-Pruning's way to refuse a cut) unless `idxs` are whole heads
        (at least one left) or the same dimensions of every head (at least one left)."""
        tp.pruner.function.BasePruningFunc.check(self, layer, idxs, to_output)
        idxs = sorted(set(int(i) for i in idxs))
        whole = self._whole_heads(layer, idxs)
        if whole is not None:
            assert whole < layer.num_heads, "a MultiheadAttention must keep one head"
            return
        assert self._same_in_every_head(layer, idxs) and len(idxs) < layer.embed_dim, \
            "MultiheadAttention cuts must be whole heads or the same dimensions of every head"

    def prune_out_channels(self, layer: nn.Module, idxs: list) -> nn.Module:
        """Cut `embed_dim` at `idxs` and set `num_heads`/`head_dim` to match."""
        idxs = sorted(set(int(i) for i in idxs))
        whole = self._whole_heads(layer, idxs)
        heads = layer.num_heads - whole if whole is not None else layer.num_heads
        super().prune_out_channels(layer, idxs)
        layer.num_heads = heads
        layer.head_dim = layer.embed_dim // heads
        return layer

    prune_in_channels = prune_out_channels
