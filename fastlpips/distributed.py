"""torch.distributed in the few forms fastlpips' scoring and training use: start from torchrun's
environment, the rank and world size (1 process when no group is initialized), and gathering
Python objects. Everything runs unchanged in one process."""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "gather_objects", "barrier",
           "broadcast_object", "shutdown"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: Optional[torch.device] = None) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment; gloo on
    CPU, nccl on CUDA); False (one process) when not launched that way or already initialized.
    On CUDA each process takes the GPU ``LOCAL_RANK``."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def gather_objects(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in one process)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (if one is initialized): a clean teardown of the gloo / nccl
    threads before the interpreter exits (without it a process can abort at exit with
    "terminate called without an active exception", seen once in ~10 torchrun runs here)."""
    if is_distributed():
        dist.destroy_process_group()
