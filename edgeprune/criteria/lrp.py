"""`lrp`: Layer-wise Relevance Propagation filter scores (Yeom et al., "Pruning by explaining",
Pattern Recognition 2021), computed with zennit's rules and canonizers.

The authors' code (seulkiyeom/LRP_pruning) starts every sample with relevance 1 on its true
class (`output * T / (output * T).sum(1)`), folds BatchNorm into the preceding conv, runs
alpha1-beta0 on convs with their biases ignored and epsilon on linear layers, and scores a
filter by the absolute relevance at its output summed over batch and positions
(`relevance.abs()`), accumulated over all reference samples and normalized per layer. That is
`lrp`, the default. `lrp-logit`, the variant edgeprune ran before, differs in two options: it
starts from the true-class logit (R = logits * onehot(y)), weighting samples by their logit,
and keeps the conv biases (BatchNorm's, once folded) in alpha1-beta0.

Documented reading (docs/CRITERIA.md, `lrp`, where the code leaves a choice open):
- the input layer uses z-beta (zennit `ZBox`) with the per-channel min/max of the reference
  batches as the box, unless `input_bounds` is given;
- residual sums and average pooling use zennit's `Norm` rule (an epsilon rule without weights);
  max-pooling keeps the plain gradient (winner takes all), as in zennit's composites;
- functional residual adds (`out + shortcut(x)`) are rewritten, on a torch.fx trace of a copy,
  into zennit's `Sum` layer so `Norm` applies, and BatchNorm is merged into the conv that feeds
  it on that graph (zennit's `MergeBatchNorm`); models fx cannot trace fall back to zennit's
  `SequentialMergeBatchNorm` with the adds left as gradients (relevance is then not conserved
  across residual sums);
- layers zennit has no rule for: LayerNorm and GroupNorm pass relevance through unchanged
  (zennit's `Pass`), the reading of CP-LRP (Ali et al., ICML 2022) and AttnLRP (Achtibat et
  al., ICML 2024), which treat the normalisation's scale as a constant so that, biases left
  out, relevance crosses the norm as it arrives; GELU and SiLU are activations (`Pass`) in
  zennit's own map, and Mish is added to them;
- attention (timm's `Attention` in ViT, DeiT and MobileViT; `nn.MultiheadAttention` in
  torchvision's ViT) follows CP-LRP: the softmax's attention weights are held constant, so
  `weights @ values` is a linear layer whose relevance goes to the values by the epsilon rule
  (`_ConstantAttention`) and none to the queries and keys; the projections around it are
  linear layers with the epsilon rule. AttnLRP's softmax rule (relevance to the logits too) is
  not used: the queries' and keys' relevance would then be scored twice in the fused `qkv`.
  An attention this rule cannot follow (a mask, cross-attention, separate key/value sizes)
  stops scoring with an error naming the layer and `l1`/`taylor`, which can score it;
- a layer scale (ConvNeXt's `gamma`, a per-channel product with a parameter) is left to the
  gradient, which multiplies each channel's relevance crossing it by its scale where LRP's
  reading of a product with a constant would pass it unchanged: the layer writing into it is
  ranked by scale times relevance, and the block's branch carries less relevance than its
  shortcut (scores are normalized per layer, so the other layers' rankings are unchanged);
- scores are non-negative (absolute relevance): a filter whose output never changes the true
  class's logit, a dead one included, scores about 0 and goes first, while a filter that
  carries evidence against the true class (negative relevance, possible where the classifier's
  epsilon rule or a negative true-class logit lets it through) still counts as doing something.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, MergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Pass, ZBox
from zennit.types import BatchNorm, Convolution
from zennit.types import Linear as LinearLike

from edgeprune import distributed
from edgeprune.console import info, progress_bar
from edgeprune.criteria.base import (
    Batches,
    Criterion,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.data import first_per_class
from edgeprune.errors import EdgepruneError
from edgeprune.models.copying import clone

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
PASS_THROUGH = (nn.LayerNorm, nn.GroupNorm, nn.Mish)
"""Same-shape layers zennit has no rule for that relevance crosses unchanged (module doc)."""
_ADD_METHODS = ("add", "add_")


class GraphMergeBatchNorm(MergeBatchNorm):
    """zennit's BatchNorm merge for explicit (layer, batchnorm) pairs found on a traced graph,
    instead of by module order as `SequentialMergeBatchNorm` does (which misses or mis-pairs
    layers whose registration order differs from the data flow)."""

    def __init__(self, pairs: list[tuple[nn.Module, nn.Module]] | None = None) -> None:
        super().__init__()
        self.pairs = list(pairs or [])

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        instances = []
        for layer, batch_norm in self.pairs:
            instance = self.copy()
            instance.register((layer,), batch_norm)
            instances.append(instance)
        return instances


def _is_tensor_add(node: fx.Node) -> bool:
    """A binary add of two graph tensors of equal shape (a residual sum, not a broadcast)."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in _ADD_METHODS)
    if not is_add or len(node.args) != 2 or node.kwargs:
        return False
    metas = [a.meta.get("tensor_meta") if isinstance(a, fx.Node) else None for a in node.args]
    return all(m is not None and hasattr(m, "shape") for m in metas) and \
        metas[0].shape == metas[1].shape


def _sums_as_layers(gm: fx.GraphModule) -> int:
    """Rewrite residual adds into zennit `Sum` layers (stack + sum) so a rule can apply."""
    count = 0
    for node in list(gm.graph.nodes):
        if not _is_tensor_add(node):
            continue
        target = f"edgeprune_sum{count}"
        gm.add_submodule(target, Sum(dim=-1))
        with gm.graph.inserting_before(node):
            stacked = gm.graph.call_function(torch.stack, (tuple(node.args),), {"dim": -1})
            summed = gm.graph.call_module(target, (stacked,))
        summed.meta = dict(node.meta)  # keeps the shape for adds that consume this one
        node.replace_all_uses_with(summed)
        gm.graph.erase_node(node)
        count += 1
    gm.recompile()
    return count


def _batchnorm_pairs(gm: fx.GraphModule) -> list[tuple[nn.Module, nn.Module]]:
    """(conv or linear, batchnorm) where the batchnorm's only input is that layer's only use."""
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        bn, src = gm.get_submodule(node.target), node.args[0]
        if not isinstance(bn, BatchNorm) or not bn.affine or bn.running_mean is None:
            continue
        if src.op == "call_module" and len(src.users) == 1 and calls.count(src.target) == 1:
            layer = gm.get_submodule(src.target)
            if isinstance(layer, LinearLike):
                pairs.append((layer, bn))
    return pairs


class _ConstantAttention(torch.autograd.Function):
    """`weights @ values` whose backward is LRP's epsilon rule with the attention weights as
    constant weights (CP-LRP): the relevance R of the output goes to the values as
    `v * (weights^T (R / z))`, z = the output stabilised, and none to the weights (so none
    reaches the queries and keys through the softmax)."""

    @staticmethod
    def forward(ctx: object, weights: Tensor, values: Tensor,  # type: ignore[override]
                epsilon: float) -> Tensor:
        out = weights @ values
        ctx.save_for_backward(weights, values, out)
        ctx.epsilon = epsilon
        return out

    @staticmethod
    def backward(ctx: object, relevance: Tensor  # type: ignore[override]
                 ) -> tuple[None, Tensor, None]:
        weights, values, out = ctx.saved_tensors
        z = out + ctx.epsilon * torch.where(out >= 0, 1.0, -1.0).to(out)
        return None, values * (weights.transpose(-2, -1) @ (relevance / z)), None


def constant_attention_values(weights: Tensor, values: Tensor, epsilon: float) -> Tensor:
    """`weights @ values`, relevance passed by CP-LRP's rule (see `_ConstantAttention`);
    one leaf call on a torch.fx trace."""
    return _ConstantAttention.apply(weights.detach(), values, epsilon)


fx.wrap("constant_attention_values")


def _is_timm_attention(module: nn.Module) -> bool:
    """timm's attention (ViT, DeiT, MobileViT): a fused `qkv` Linear of 3 * num_heads *
    head_dim outputs, a `proj` Linear, and no gate."""
    qkv, heads, dim = (getattr(module, a, None) for a in ("qkv", "num_heads", "head_dim"))
    return isinstance(qkv, nn.Linear) and isinstance(getattr(module, "proj", None), nn.Linear) \
        and isinstance(heads, int) and isinstance(dim, int) \
        and qkv.out_features == 3 * heads * dim and getattr(module, "gate", None) is None \
        and callable(getattr(module, "q_norm", None)) and callable(getattr(module, "norm", None))


def _timm_attention_lrp(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
                        is_causal: bool = False) -> Tensor:
    """timm attention's forward (no mask) with the attention weights held constant."""
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    weights = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = constant_attention_values(weights, v, ATTENTION_EPSILON)
    out = self.norm(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
    return self.proj(out)


ATTENTION_EPSILON = 1e-6
"""Stabiliser of the epsilon rule on the attention-weighted sum of the values."""


class ConstantAttentionMHA(nn.Module):
    """An `nn.MultiheadAttention` (self-attention, no mask) recomputed for LRP: its packed
    input projection as a `Linear` sharing its weights (so the epsilon rule applies to it), the
    attention weights held constant (`constant_attention_values`), and its own `out_proj`.
    Stands in for the original, under the same name, in the copy being explained; zennit would
    otherwise take `nn.MultiheadAttention` for an activation and pass relevance through it as
    if it had one input."""

    def __init__(self, name: str, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise _cannot_score(name, "its key and value have their own sizes")
        self.name, self.num_heads, self.head_dim = name, mha.num_heads, mha.head_dim
        self.batch_first = mha.batch_first
        self.in_proj = nn.Linear(mha.embed_dim, 3 * mha.embed_dim,
                                 bias=mha.in_proj_bias is not None)
        self.in_proj.weight = mha.in_proj_weight
        if mha.in_proj_bias is not None:
            self.in_proj.bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if key is not query or value is not query:
            raise _cannot_score(self.name, "it attends to another sequence than its input")
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise _cannot_score(self.name, "it is called with an attention mask")
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, e = x.shape
        qkv = self.in_proj(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        weights = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = constant_attention_values(weights, v, ATTENTION_EPSILON)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, e))
        out = out if self.batch_first else out.transpose(0, 1)
        average = weights.detach().mean(1) if average_attn_weights else weights.detach()
        return out, average if need_weights else None


def _cannot_score(name: str, why: str) -> EdgepruneError:
    return EdgepruneError(f"lrp cannot score attention layer {name}: {why}, which its "
                          "CP-LRP rule does not follow; score this model with --criterion "
                          "l1 or taylor")


def with_attention_rules(model: nn.Module) -> int:
    """Give every attention of `model` (a copy being explained) CP-LRP's rule: timm's
    attention its forward replaced, each `nn.MultiheadAttention` replaced by a
    `ConstantAttentionMHA`; the same outputs, with relevance crossing the attention by
    `constant_attention_values`. Returns how many attention layers were changed."""
    count = 0
    for name, module in list(model.named_modules()):
        if _is_timm_attention(module):
            module.forward = partial(_timm_attention_lrp, module)
            count += 1
        elif isinstance(module, nn.MultiheadAttention):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, ConstantAttentionMHA(name, module))
            count += 1
    return count


def canonical_model(model: nn.Module, example: Tensor) -> tuple[nn.Module, list[Canonizer]]:
    """An eval-mode copy of `model` ready for LRP and the canonizers to use with it."""
    work = clone(model).eval()
    with_attention_rules(work)
    try:
        gm = fx.symbolic_trace(work)
        # two samples, so that adding a parameter broadcast over the batch (a position
        # embedding of batch size 1) is not mistaken for a residual sum
        ShapeProp(gm).propagate(torch.cat([example[:1], example[:1]]))
    except Exception as e:  # noqa: BLE001 - any trace failure means: use the module tree
        info(f"lrp: torch.fx cannot trace the model ({type(e).__name__}); residual adds are "
             "not canonized and BatchNorm is merged by module order")
        return work, [SequentialMergeBatchNorm()]
    _sums_as_layers(gm)
    return gm, [GraphMergeBatchNorm(_batchnorm_pairs(gm))]


class RelevanceRecorder:
    """Sums, per output channel, the relevance arriving at each layer's output: `totals`
    signed (what conservation is about), `magnitudes` of its absolute value (the score).

    zennit implements LRP as a modified gradient: every hooked layer returns relevance in place
    of its input gradient, so the gradient reaching a layer's output tensor during the modified
    backward pass is the relevance there. A forward hook attaches a tensor hook to each output;
    the forward hooks are removed on exit and the tensor hooks die with the autograd graph.
    A convolution's channels are dimension 1 of its output, a linear layer's the last one (a
    Linear applied to channels-last maps, as in ConvNeXt's and transformers' MLPs, has its
    channels last whatever the rank).
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.totals = {n: torch.zeros(m.weight.shape[0], dtype=torch.float64)
                       for n, m in layers.items()}
        self.magnitudes = {n: v.clone() for n, v in self.totals.items()}
        self.channel_dim = {n: -1 if isinstance(m, nn.Linear) else 1 for n, m in layers.items()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> RelevanceRecorder:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(partial(self._on_output, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_output(self, name: str, module: nn.Module, inputs: object, output: Tensor) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(partial(self._on_relevance, name))

    def _on_relevance(self, name: str, relevance: Tensor) -> None:
        channel = self.channel_dim[name] % relevance.ndim
        if relevance.shape[channel] != self.totals[name].numel():
            raise EdgepruneError(
                f"lrp cannot score layer {name}: the relevance at its output has "
                f"{relevance.shape[channel]} values along its channel dimension, not its "
                f"{self.totals[name].numel()} filters (its output is reshaped where the rules "
                "do not follow it); score this model with --criterion l1 or taylor")
        dims = [d for d in range(relevance.ndim) if d != channel]
        relevance = relevance.detach().double()
        self.totals[name] += relevance.sum(dim=dims).cpu()
        self.magnitudes[name] += relevance.abs().sum(dim=dims).cpu()


def input_box(batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-channel (low, high) of the reference inputs (of every process's share), shaped
    (1, C, 1, 1) for `ZBox`."""
    lows = torch.stack([x.transpose(0, 1).flatten(1).min(1).values for x, _ in batches])
    highs = torch.stack([x.transpose(0, 1).flatten(1).max(1).values for x, _ in batches])
    low = distributed.all_reduce(lows.min(0).values.contiguous(), "min")
    high = distributed.all_reduce(highs.max(0).values.contiguous(), "max")
    return low.view(1, -1, 1, 1), high.view(1, -1, 1, 1)


def lrp_composite(low: Tensor | float, high: Tensor | float, epsilon: float,
                  canonizers: list[Canonizer], ignore_bias: bool = False
                  ) -> SpecialFirstLayerMapComposite:
    """z-beta at the input layer, alpha1-beta0 for convs (their biases left out of the rule
    with `ignore_bias`, as the LRP authors run it), epsilon for dense layers, Norm for sums and
    average pools, Pass for activations and BatchNorm (zennit's base map)."""
    conv_rule = AlphaBeta(alpha=1.0, beta=0.0, zero_params=["bias"] if ignore_bias else None)
    layer_map = layer_map_base() + [(Convolution, conv_rule),
                                    (nn.Linear, Epsilon(epsilon=epsilon)),
                                    (PASS_THROUGH, Pass())]
    first_map = [(Convolution, ZBox(low=low, high=high))]
    return SpecialFirstLayerMapComposite(layer_map, first_map, canonizers=canonizers)


@contextmanager
def relevance_attributor(model: nn.Module, example: Tensor, bounds: tuple, epsilon: float,
                         names: list[str], ignore_bias: bool = False
                         ) -> Iterator[tuple[Gradient, RelevanceRecorder]]:
    """zennit's Gradient attributor on a canonized copy of `model`, with a recorder on the
    layers `names`; everything is undone on exit and `model` itself is never touched."""
    work, canonizers = canonical_model(model, example)
    composite = lrp_composite(*bounds, epsilon=epsilon, canonizers=canonizers,
                              ignore_bias=ignore_bias)
    present = dict(work.named_modules())  # a traced copy lacks layers forward never calls
    layers = {n: present[n] for n in names if n in present}
    with Gradient(model=work, composite=composite) as attributor, \
            RelevanceRecorder(layers) as recorder:
        yield attributor, recorder


@dataclass
class LRP(Criterion, name="lrp"):
    """Relevance of each filter's output for the true class (see the module docstring).

    Options: `epsilon` of the dense layers' rule; `input_bounds` (low, high) of the normalized
    input for z-beta (default: per-channel min/max of the batches); `samples_per_class`: use
    only the first n reference samples of each class found in the batches (the paper's
    data-scarce setting, 1-10 per class); None uses them all; `start`: the relevance a
    sample starts with, "one" (1 on the true class, the authors' normalized start) or "logit"
    (its true-class logit); `ignore_bias`: leave conv biases (BatchNorm's, once folded) out of
    alpha1-beta0, as the authors do.
    """

    epsilon: float = 1e-6
    input_bounds: tuple[float, float] | None = None
    samples_per_class: int | None = None
    start: str = "one"
    ignore_bias: bool = True
    needs_data: ClassVar[bool] = True
    reduces_across_processes: ClassVar[bool] = True

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = [b[:2] for b in self.require_batches(batches)]
        if self.samples_per_class is not None:
            data = first_per_class(data, self.samples_per_class)
        device = next(model.parameters()).device
        bounds = self.input_bounds or input_box(data)
        layers = prunable_layers(model)
        example = data[0][0][:1].to(device)
        if self.start not in START_RELEVANCE:
            raise EdgepruneError(f"lrp start {self.start!r}: choose one of "
                                 f"{', '.join(START_RELEVANCE)}")
        with relevance_attributor(model, example, bounds, self.epsilon, list(layers),
                                  self.ignore_bias) as (attr, rec), \
                progress_bar(len(data), f"scoring ({self.name})") as advance:
            for x, y in data:
                x, y = x.to(device), y.to(device)
                attr(x, partial(START_RELEVANCE[self.start], y))
                advance()
        for magnitude in rec.magnitudes.values():  # every process's share of the images
            distributed.all_reduce(magnitude)
        return {n: normalize_per_layer(rec.magnitudes.get(n, torch.zeros(m.weight.shape[0])))
                for n, m in layers.items()}


def true_class_logit(labels: Tensor, output: Tensor) -> Tensor:
    """Initial relevance: the output times the one-hot true label."""
    return output * nn.functional.one_hot(labels.long(), output.shape[-1]).to(output)


def true_class_one(labels: Tensor, output: Tensor) -> Tensor:
    """Initial relevance 1 on the true class, whatever its logit: the authors'
    `output * T / (output * T).sum(1)` (without its 0/0 at a zero logit)."""
    return nn.functional.one_hot(labels.long(), output.shape[-1]).to(output)


START_RELEVANCE = {"logit": true_class_logit, "one": true_class_one}


@dataclass
class LogitLRP(LRP, name="lrp-logit"):
    """`lrp` as edgeprune ran it before following the authors' code: every sample starts from
    its true-class logit, and alpha1-beta0 keeps the conv biases."""

    start: str = "logit"
    ignore_bias: bool = False
