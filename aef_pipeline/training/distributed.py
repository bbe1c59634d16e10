"""One process or many: the process group torchrun asks for, and the device each rank uses.

    torchrun --nproc-per-node 2 -m aef_pipeline.cli train --data train.zarr --out runs/r1 ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address); a plain
`aef-pipeline train` has none and runs alone. Ranks talk over gloo on CPU and NCCL on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aef_pipeline.encode import check_device_name
from aef_pipeline.errors import UserInputError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def leader(self) -> bool:
        """The rank that writes files and draws the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(device: str) -> World:
    """This process's World; under torchrun, joins the process group first."""
    check_device_name(device)
    rank, size, local = (int(os.environ.get(name, default)) for name, default in _TORCHRUN)
    chosen = _device(device, local, size)
    if chosen.type == "cuda":
        # Every collective (NCCL's barrier, all_gather_object) runs on the current device: without
        # this each rank would use GPU 0, and the first barrier hangs.
        torch.cuda.set_device(chosen)
    if size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=chosen)
        else:
            dist.init_process_group(backend="gloo")
    return World(rank, size, local, chosen)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def mean_over_ranks(world: World, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (for logging: every rank saw a different part of the batch)."""
    if not world.distributed:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=world.device)
    dist.all_reduce(packed)
    return dict(zip(values, (packed / world.size).tolist(), strict=True))


def any_rank(world: World, flag: bool) -> bool:
    """Whether any rank raised `flag`: every rank must stop at the same step."""
    if not world.distributed:
        return flag
    packed = torch.tensor([float(flag)], device=world.device)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return bool(packed.item())


def gather_strings(world: World, value: str) -> list[str]:
    """`value` from every rank, in rank order (small strings: parameter digests)."""
    if not world.distributed:
        return [value]
    gathered: list[str | None] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return [str(v) for v in gathered]


_TORCHRUN = (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"))


def _device(name: str, local_rank: int, world_size: int) -> torch.device:
    """ "auto": this rank's GPU when there is one, else the CPU. Refuses a rank without its own GPU."""
    wants_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    present = torch.cuda.device_count()
    if name.startswith("cuda:"):
        index = int(name[5:])
        if world_size > 1:
            raise UserInputError(
                f"--device {name} names one GPU for all {world_size} processes: under torchrun use --device cuda "
                "(each process takes the GPU of its local rank)"
            )
        if index >= present:
            raise UserInputError(f"--device {name}: this node has {present} GPU(s), numbered from 0")
        return torch.device(name)
    if local_rank >= present:
        raise UserInputError(
            f"process {local_rank} of this node needs GPU {local_rank} but the node has {present} GPU(s): start "
            f"torchrun with --nproc-per-node {max(1, present)} or fewer, or train with --device cpu"
        )
    return torch.device("cuda", local_rank)
