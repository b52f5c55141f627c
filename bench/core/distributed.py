"""Data-parallel processes, for pre-trainings and transfer cells alike.

torchrun semantics: every rank gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and
joins one process group (NCCL on GPUs, one GPU per rank; gloo on CPU). `bench` starts the ranks
itself (`spawn_ranks`, on the machine the executor gave the job); a job started by `torchrun`
finds the variables already set and joins directly. What each trainer does with its ranks is
in its own module (transfer/distributed.py, pretrain/loop.py).
"""

from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist

from bench.core.errors import UserError


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def join_process_group(use_cuda: bool | None = None) -> torch.device:
    """Join the group the environment describes; the rank's device (`use_cuda` None: CUDA when
    there is a GPU)."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn: Callable, world: int, port: int, config: dict, out_dir: str, progress: bool) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    fn(config, out_dir, progress=progress and rank == 0)


def spawn_ranks(fn: Callable, config: dict, out_dir, processes: int, progress: bool, *, use_cuda: bool | None = None,
                what: str = "the job") -> None:
    """Run `fn(config, out_dir, progress=...)` as `processes` ranks on this machine and wait for
    them. `fn` (`transfer.api.run_cell`, `pretrain.api.run_pretrain`) finds the torchrun
    variables set and joins the group; it is handed in, so this module knows nothing of it."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if use_cuda and torch.cuda.device_count() < processes:
        raise UserError(f"{what} asks for {processes} processes but this machine has "
                        f"{torch.cuda.device_count()} GPUs")
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(fn, processes, _free_port(), config, str(out_dir), progress), nprocs=processes,
             join=True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if rank_and_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
