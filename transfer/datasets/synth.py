"""`synth`: the generated driving world of `bench data synth` (the embedded default).

Layout: `ROOT/meta.json` and `ROOT/<sequence>/{rgb,label}/<frame>.png`. Labels are already train
ids (255 = ignore). Splits: `train` are the world's training sequences, `eval` the held-out last
quarter (never seen by pre-training either). The validation split holds whole training sequences
out (adjacent frames would leak). Stems are `<sequence>_<frame>`.
"""

from __future__ import annotations

from bench.core.errors import UserError
from bench.core.synth import load_meta
from bench.core.synth.split import frame_ids, split_sequences
from transfer.datasets.base import register_dataset
from transfer.datasets.base import (IGNORE_INDEX, LabelMapping, Sample, SegmentationDataset, read_index_png,
                                    require_dir)


@register_dataset
class Synth(SegmentationDataset):
    name = "synth"
    description = "the generated world's semantic labels (held-out sequences for evaluation)"
    splits = ("train", "eval")
    train_split, eval_split = "train", "eval"
    validation_size = 10**9  # a fifth of the training frames, as whole sequences

    def __init__(self, root, classes=None):
        super().__init__(root, classes)
        self.meta = load_meta(self.root)
        self.class_names = tuple(self.meta["classes"])
        self.palette = tuple(tuple(c) for c in self.meta["palette"])
        ids = {i: i for i in range(len(self.class_names))}
        self.mapping = LabelMapping({**ids, IGNORE_INDEX: IGNORE_INDEX})
        self._sequence_of: dict[str, str] = {}

    def samples(self, split: str) -> list[Sample]:
        self.check_split(split)
        out = []
        for seq in split_sequences(self.meta)[split]:
            require_dir(self.root / seq / "rgb", f"frames of sequence {seq}")
            for fid in frame_ids(self.root, seq):
                label = self.root / seq / "label" / f"{fid}.png"
                if not label.is_file():
                    raise UserError(f"{label}: missing label for image {seq}/rgb/{fid}.png")
                out.append(Sample(f"{seq}_{fid}", self.root / seq / "rgb" / f"{fid}.png", label))
                self._sequence_of[f"{seq}_{fid}"] = seq
        if not out:
            raise UserError(f"{self.root}: split {split} of the generated world holds no frames")
        return out

    def validation_group(self, sample: Sample) -> str:
        return self._sequence_of[sample.stem]

    def read_label(self, sample: Sample):
        return self.mapping(read_index_png(sample.label), sample.label)
