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
  zennit's own map, and Mish is added to them. Attention's softmax is *not* given CP-LRP's
  rule (which holds the attention weights constant): relevance crosses it as a gradient, so
  it is not conserved inside attention blocks (MobileViT, ViT), while the convs and linear
  layers around them are scored with their usual rules;
- scores are non-negative (absolute relevance): a filter whose output never changes the true
  class's logit, a dead one included, scores about 0 and goes first, while a filter that
  carries evidence against the true class (negative relevance, possible where the classifier's
  epsilon rule or a negative true-class logit lets it through) still counts as doing something.
"""

from __future__ import annotations

import copy
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


def canonical_model(model: nn.Module, example: Tensor) -> tuple[nn.Module, list[Canonizer]]:
    """An eval-mode copy of `model` ready for LRP and the canonizers to use with it."""
    work = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(work)
        ShapeProp(gm).propagate(example)
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
