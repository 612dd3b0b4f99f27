"""Several processes on PyTorch's own engine (`torch.distributed`), as `torchrun` starts them.

`torchrun --nproc-per-node N -m edgeprune compress ...` sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address in each process's environment; `init_from_env` joins the group (NCCL
when CUDA is present, else gloo). Everything here is a no-op in a single process, so the
stages call these helpers unconditionally: `rank()` 0 and `world_size()` 1 then, reductions
return their input, and `broadcast` returns what it was given.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
TIMEOUT = dt.timedelta(hours=6)  # rank 0 alone exports and measures while the others wait


_alone = {"depth": 0}


def active() -> bool:
    """True inside a process group of more than one process (and not in `alone()`)."""
    return (not _alone["depth"] and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


@contextmanager
def alone() -> Iterator[None]:
    """Work this process does by itself while the others wait: inside, the helpers act as
    in a single process (no collective would find its partners)."""
    _alone["depth"] += 1
    try:
        yield
    finally:
        _alone["depth"] -= 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints results."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); True
    when this process is one of several. CUDA processes use NCCL on their LOCAL_RANK's GPU,
    CPU processes gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return active()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return True


def _device_of(tensor: torch.Tensor) -> torch.device:
    """Where a collective on `tensor` runs: NCCL needs CUDA tensors, gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`tensor` reduced over every process ("sum", "min" or "max"), in place and returned."""
    if not active():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    work = tensor.to(_device_of(tensor))
    dist.all_reduce(work, op=ops[op])
    tensor.copy_(work.to(tensor.device))
    return tensor


def broadcast(value: T) -> T:
    """Rank 0's `value` on every process (any picklable object: it comes from this same
    program in another process, never from a file)."""
    if not active():
        return value
    box: list[Any] = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: list[T]) -> list[T]:
    """This process's share of `items`: every world_size-th one from its rank."""
    return items[rank()::world_size()]
