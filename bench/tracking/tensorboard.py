"""TensorBoard sink: one log dir per job, ROOT/<matrix>/<job name>, written with PyTorch's
SummaryWriter (which needs the `tensorboard` package: the `track` extra).

Each job's dir holds its curves as scalars at their steps, its resolved config as text and as
hparams (TensorBoard's HParams dashboard then compares jobs on their headline numbers). A job
logged again -- its record changed, e.g. a cell re-run after a manifest edit -- replaces its
earlier event files, so the dir always shows the record on disk, never two runs overlaid.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.tracking.base import JobLog, Sink

EVENTS_GLOB = "events.out.tfevents.*"


class TensorBoardSink(Sink):
    def __init__(self, root: Path, matrix: str):
        from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard
        from torch.utils.tensorboard.summary import hparams

        self._writer_class, self._hparams = SummaryWriter, hparams
        self.root = Path(root) / matrix
        self.key = f"tensorboard:{self.root}"

    def log_dir(self, job_name: str) -> Path:
        return self.root / job_name

    def log(self, job: JobLog) -> None:
        log_dir = self.log_dir(job.name)
        for old in log_dir.glob(EVENTS_GLOB):  # ours alone: this dir is the sink's
            old.unlink()
        writer = self._writer_class(log_dir=str(log_dir))
        try:
            for tag, series in job.metrics.items():
                for step, value in series:
                    writer.add_scalar(tag, value, step)
            # Markdown: a 4-space indent renders the JSON as a code block.
            text = json.dumps(job.params, indent=2, sort_keys=True)
            writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
            # In this job's own dir (SummaryWriter.add_hparams would open a sub-dir per call).
            for summary in self._hparams(dict(sorted(job.params.items())), job.summary):
                writer.file_writer.add_summary(summary)
        finally:
            writer.close()
