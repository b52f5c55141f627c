"""depth2seg-bench: does monocular-depth pre-training transfer to semantic segmentation?

Two layers live here:

- `bench.core`, the ground floor: errors, atomic writes, records and fingerprints, the registry,
  options, sizes, progress, seeding, the checkpoint format, metrics, the MATLAB readers, the
  harness version, the backbones (`bench.core.models`) and the generated world
  (`bench.core.synth`). It is the only part of `bench` that `pretrain/` and `transfer/` import,
  and it imports nothing above it.
- the orchestration on top: the CLI (`bench.cli`), manifests and their matrix, the runner, the
  executors, checkpoint imports, status, aggregation, plots and CKA. It calls `pretrain.api`
  and `transfer.api` and never the other way round.

`pretrain` and `transfer` never import each other. `tests/test_imports.py` checks all of this.
"""

from bench.core.version import __version__  # noqa: F401
