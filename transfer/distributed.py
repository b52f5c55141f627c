"""Data-parallel cells: `processes > 1` runs one cell as that many DDP ranks.

torchrun semantics: every rank gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and
joins one process group (NCCL on GPUs, one GPU per rank; gloo on CPU). `bench` starts the ranks
itself (`spawn_cell`, on the machine the executor gave the cell); a cell started by `torchrun`
finds the variables already set and joins directly. Inside the trainer:

- every rank draws the same step batch from the (seed, step) generator and trains on its own
  slice of it, so the global batch and the data order do not depend on the number of ranks;
- `torch.nn.parallel.DistributedDataParallel` averages the gradients (BatchNorm becomes
  SyncBatchNorm on GPUs; on CPU each rank normalises its own slice);
- evaluation images are split between ranks and the confusion matrices summed, so the metrics
  are over the whole evaluation set;
- rank 0 alone writes the record, the state and the weights; the other ranks log to
  `log.rank<R>.txt`.
"""

from __future__ import annotations

from bench.core.distributed import (all_reduce_sum, join_process_group, launched_by_torchrun,  # noqa: F401
                                    rank_and_world, spawn_ranks)


def spawn_cell(fn, config: dict, out_dir, processes: int, progress: bool) -> None:
    """`fn(config, out_dir, progress=...)` as `processes` ranks of one cell."""
    spawn_ranks(fn, config, out_dir, processes, progress, what="the cell")
