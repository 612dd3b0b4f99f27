"""The criterion interface and its registry: a criterion turns (model, data) into one score per
output channel of every prunable layer; the pruner decides what to remove."""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import Tensor, nn

from edgeprune import distributed
from edgeprune.errors import EdgepruneError

Batches = Iterable[tuple[Tensor, Tensor]]
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


class Criterion(ABC):
    """Scores output channels: `score(model, batches)` -> {layer name: 1-D tensor}, higher = keep.

    Keys are qualified module names (`model.named_modules()`) of every Conv2d and Linear layer;
    each tensor has one entry per output channel. A criterion never modifies the model it is
    given and leaves no hooks or attributes on it.

    A subclass declared with a name (`class L1(Criterion, name="l1")`) is registered under it;
    `get_criterion(name)` builds it.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool]
    reduces_across_processes: ClassVar[bool] = False
    """True when `score` sums its per-channel statistics over every process of a
    `torch.distributed` group (`edgeprune.distributed.all_reduce`), so each process may see
    only its share of the reference images; see `across_processes`."""

    def __init_subclass__(cls, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            CRITERIA[name] = cls

    @abstractmethod
    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        """One score per output channel of every prunable layer of `model`."""

    def with_keep_counts(self, counts: dict[str, int]) -> Criterion | None:
        """This criterion set to score for known per-layer keep counts (layer name -> output
        channels kept), or None when its scores do not depend on them (the default). The
        pruner scores such a criterion again once it knows the counts."""
        return None

    def require_batches(self, batches: Batches | None) -> list[tuple[Tensor, Tensor]]:
        """The reference batches as a list; EdgepruneError when this data criterion got none."""
        data = list(batches) if batches is not None else []
        if not data:
            raise EdgepruneError(f"criterion {self.name!r} needs reference data; pass batches "
                                 "of (images, labels)")
        return data


class AcrossProcesses(Criterion):
    """A criterion run by every process of a `torch.distributed` group (torchrun): one that
    `reduces_across_processes` scores each process's share of the reference batches and
    all-reduces its sums; any other scores on rank 0, which sends the scores to the rest.
    Every process gets the same scores either way, so all of them prune alike."""

    def __init__(self, inner: Criterion) -> None:
        self.inner = inner

    def __getattr__(self, attr: str) -> object:  # name, needs_data, redundancy, votes, options
        return getattr(self.__dict__["inner"], attr)

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = list(batches) if batches is not None else None
        if self.inner.reduces_across_processes and (
                data is None or len(data) >= distributed.world_size()):
            return self.inner.score(model, distributed.shard(data) if data else data)
        scores = None
        if distributed.is_main():
            with distributed.alone():
                scores = self.inner.score(model, data)
        return distributed.broadcast(scores)

    def with_keep_counts(self, counts: dict[str, int]) -> Criterion | None:
        inner = self.inner.with_keep_counts(counts)
        return None if inner is None else AcrossProcesses(inner)


def across_processes(criterion: Criterion) -> Criterion:
    """`criterion` ready for every process of a torchrun group (itself in one process)."""
    return AcrossProcesses(criterion) if distributed.active() else criterion


CRITERIA: dict[str, type[Criterion]] = {}


def list_criteria() -> list[str]:
    """Names of the registered criteria."""
    return sorted(CRITERIA)


def _hint(name: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(choices)}"


def get_criterion(name: str, **options: object) -> Criterion:
    """Build a registered criterion; unknown names and options raise EdgepruneError."""
    cls = CRITERIA.get(name)
    if cls is None:
        raise EdgepruneError(f"unknown criterion {name!r}; {_hint(name, CRITERIA)}")
    allowed = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for key in options:
        if key not in allowed:
            extra = _hint(key, allowed) if allowed else "it takes no options"
            raise EdgepruneError(f"criterion {name!r} has no option {key!r}; {extra}")
    return cls(**options)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers criteria score, by qualified name: every Conv2d and Linear."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def normalize_per_layer(values: Tensor) -> Tensor:
    """v / sum|v| (the LRP paper's per-layer v / sum v, sign-safe); all-zero stays zero."""
    values = values.detach().double()
    total = values.abs().sum()
    out = values / total if total > 0 else torch.zeros_like(values)
    return out.float()
