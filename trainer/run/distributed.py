"""torchrun and DDP: the process group from torchrun's environment, and sums across ranks.

``torchrun --nproc_per_node N -m kdcache train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; each rank then uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is present, the CPU
with gloo otherwise. Without those variables the run is a single process and nothing here
communicates.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.utils import distribute_bn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def start_world(device_name: str) -> tuple[World, torch.device]:
    """Join the process group when started by torchrun; return the world and this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), _device(device_name, 0)
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    device = _device(device_name, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def stop_world(world: World) -> None:
    """Leave the process group (after the last collective)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(values: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """Each key's sum over all ranks (the values themselves when alone)."""
    if not world.distributed or not values:
        return values
    names = sorted(values)
    packed = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(names, packed.tolist(), strict=True))


def gather_across(value, world: World) -> list:
    """Every rank's ``value`` (plain values and CPU tensors), by rank."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def check_in_sync(model: torch.nn.Module, world: World, device: torch.device) -> None:
    """Raise if the ranks' weights differ (DDP keeps them equal; a mismatch is a bug)."""
    if not world.distributed:
        return
    with torch.no_grad():
        total = sum(p.double().sum() for p in model.parameters()).reshape(1).to(device)
    low, high = total.clone(), total.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(
            f"rank {world.rank}: weights differ across ranks (sums {low.item()} .. {high.item()})"
        )


def share_buffers(net: torch.nn.Module, ema, world: World) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, for the model and its EMA.

    Parameters stay equal under DDP, but each rank's last training forwards update its own
    running statistics: without this, each rank would evaluate a different model and the
    summed test counts would match no saved checkpoint (timm's ``distribute_bn``, broadcast).
    """
    if not world.distributed:
        return
    for module in (net, ema.module if ema is not None else None):
        if module is not None:
            distribute_bn(module, world.size, reduce=False)
