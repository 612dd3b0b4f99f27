"""Quantization-aware training (QAT) with PyTorch's PT2E flow, for int8 files that lose too much
accuracy when quantized after training.

The model is captured with `torch.export`, prepared with litert-torch's `PT2EQuantizer`
(XNNPACK-style: symmetric int8, per-channel weights, conv-BatchNorm folded with fake
quantization in training), fine-tuned for a few epochs by distillation from the unpruned model
with fake-quantized weights and activations, and converted (`convert_pt2e`); litert-torch turns
the result into a fully int8 TFLite file (`edgeprune.export`, precision `int8-qat`). torchao
provides the PT2E functions on current PyTorch (`torch.ao.quantization.quantize_pt2e` is gone).

litert-torch 0.10's conv-BatchNorm annotator hands torchao a plain function where torchao 0.18
expects a module; `_annotator_takes_functions()` wraps it for the duration of the prepare call
only (the fix the two libraries' later releases make).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeprune.console import info, progress_bar
from edgeprune.data import DataBundle, iterate_batches
from edgeprune.models.copying import clone
from edgeprune.training.loop import TrainConfig, optimize, random_crop_flip, training_loss

MAX_BATCH = 4096
"""The largest batch the captured graph accepts (its batch dimension is dynamic up to this)."""


@dataclass
class QATResult:
    """The converted int8 model (a torch.fx GraphModule: call it, do not train it), the
    quantizer litert-torch must convert it with, its top-1 on the test split, and timings."""

    model: torch.fx.GraphModule
    quantizer: Any
    accuracy: float
    wall_s: float
    images: int

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.wall_s if self.wall_s > 0 else None


@contextmanager
def _annotator_takes_functions() -> Iterator[None]:
    import litert_torch.quantize.pt2e_quantizer_utils as annotators
    from torchao.quantization.pt2e import WrapperModule
    from torchao.quantization.pt2e.utils import _get_aten_graph_module_for_pattern as pattern

    original = annotators._get_aten_graph_module_for_pattern

    def wrapped(p: Any, example: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        return pattern(p if isinstance(p, nn.Module) else WrapperModule(p), example, is_cuda,
                       **kwargs)

    annotators._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        annotators._get_aten_graph_module_for_pattern = original


def quantizer() -> Any:
    """litert-torch's PT2E quantizer for QAT: symmetric int8, per-channel weights."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    return PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=True))


RANDOM_LAYERS = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                           "FeatureAlphaDropout", "StochasticDepth", "DropPath", "DropBlock2d"})
"""Layers that draw random numbers in training mode (torch.nn, torchvision.ops, timm): QAT
captures them in their eval behaviour, so the converted int8 graph holds no sampling op."""


def prepare(model: nn.Module, example: torch.Tensor, quant: Any) -> torch.fx.GraphModule:
    """A copy of `model` captured with a dynamic batch and fake-quantized for training, its
    RANDOM_LAYERS in eval mode."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    net = clone(model).cpu().train()
    for module in net.modules():  # random layers in train mode capture ops the int8
        if type(module).__name__ in RANDOM_LAYERS:  # converter cannot lower (aten.bernoulli)
            module.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(net, (example.repeat(2, 1, 1, 1),),
                                  dynamic_shapes=({0: batch},))
    # litert-torch's add+relu annotator print()s "Relu partition has more than one output
    # node" for a ReLU module used twice (every torchvision-style residual block); stdout
    # carries results (`compress --json`), so the library's chatter goes to stderr.
    with _annotator_takes_functions(), redirect_stdout(sys.stderr):
        return prepare_qat_pt2e(program.module(), quant)


@torch.no_grad()
def _accuracy(model: torch.fx.GraphModule, data: DataBundle, limit: int | None) -> float:
    correct = total = 0
    for x, y in iterate_batches(data.loader("test", batch_size=256, limit=limit)):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_qat(model: nn.Module, data: DataBundle, config: TrainConfig,
              teacher: nn.Module | None = None, eval_limit: int | None = None,
              description: str = "quantization-aware training",
              evaluate: bool = True) -> QATResult:
    """Fine-tune a fake-quantized copy of `model` for `config.epochs` (SGD, cosine, at
    `config.lr`, distilling from `teacher` when given) and convert it to int8; `model` itself
    is left untouched. Runs on the CPU, where the PT2E graph is captured. With `evaluate`,
    the int8 model's top-1 on the test split is measured (the level search, which must not
    read a test image, passes False)."""
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    torch.manual_seed(config.seed)
    quant = quantizer()
    example = torch.zeros(1, *data.spec.shape)
    qat = prepare(model, example, quant)
    move_exported_model_to_train(qat)
    teacher = clone(teacher).cpu().eval() if teacher is not None else None
    loader = data.loader("train", config.batch_size, shuffle=True, limit=config.train_limit,
                         seed=config.seed)
    steps = max(1, round(config.epochs * len(loader)))
    opt = torch.optim.SGD(qat.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(config.seed)
    t0, step, images = time.perf_counter(), 0, 0
    with progress_bar(steps, description) as advance:
        while step < steps:
            for x, y in iterate_batches(loader):
                if step >= steps:
                    break
                x = random_crop_flip(x, generator=g) if config.augment else x
                loss = training_loss(qat(x), x, y, config, teacher)
                optimize(loss, opt, sched)
                step, images = step + 1, images + len(y)
                advance(status=f"loss {loss.item():.3f}")
    wall = time.perf_counter() - t0
    move_exported_model_to_eval(qat)
    int8 = convert_pt2e(qat, fold_quantize=False)  # folded weights break litert-torch
    int8.training = False
    accuracy = _accuracy(int8, data, eval_limit) if evaluate else None
    top1 = f", int8 top-1 {accuracy * 100:.2f}% (PyTorch)" if accuracy is not None else ""
    info(f"qat: {config.epochs:g} epochs, {images / wall:.0f} images/s{top1}, {wall:.0f} s")
    return QATResult(int8, quant, accuracy, wall, images)
