"""What several verbs share: option groups as argparse parents, and small readers of flags.

A parent holds flags that mean the same in every verb that takes them (`--root`, `--out`,
`--progress/--no-progress`, `--classes`, `--eval-resize`, the training geometry, the import options), so
their spelling and help cannot drift apart between verbs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.core.errors import UserError


class BenchParser(argparse.ArgumentParser):
    """A usage mistake is one line and a pointer to the help, not the whole usage block:
    `bench run: error: the following arguments are required: manifest (see bench run --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def root_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--root", required=True, help="dataset folder (docs/datasets.md and docs/pretraining.md give "
                   "each layout; for synth: a folder written by `bench data synth`)")
    return p


def out_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--out", required=True, help="output folder")
    return p


def progress_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress on stderr: bars in a terminal, a plain line every 10%% or 30 s otherwise "
                   "(default: on)")
    return p


def plots_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="draw plots/ and the report's figures (default: on); --no-plots writes the leaderboards, "
                   "tables and report.html without them, in seconds where a large matrix's figures take minutes "
                   "(`bench aggregate` draws them later)")
    return p


def classes_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--classes", type=int, help="class set where a dataset has several (nyuv2: 40 or 13)")
    return p


def eval_resize_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--eval-resize", default="default", help="evaluation image size: HxW, a short side, or native; "
                   "metrics are always on native-size labels (default: the dataset's)")
    return p


def import_parent() -> argparse.ArgumentParser:
    """How a foreign checkpoint is read (`bench convert`, `bench submit`)."""
    p = _parent()
    p.add_argument("--format", default="auto", help="checkpoint layout: auto (detected) or one of "
                   "`bench list formats` (docs/adding-a-backbone.md)")
    p.add_argument("--key-map", help="YAML/JSON list of [regex, replacement] renames applied after unwrapping; "
                   "a null replacement drops the key")
    p.add_argument("--allow-partial", action="store_true", help="accept fewer than all encoder tensors "
                   "(recorded with every run of this backbone)")
    p.add_argument("--normalization", help="the input normalisation the weights expect, over the format's own: "
                   "imagenet, monodepth2 (0.45/0.225), half (0.5/0.5), or MEAN/STD, e.g. 0.45/0.225 or "
                   "0.5,0.4,0.3/0.2,0.2,0.2 (default: the format's; monodepth2-family formats use 0.45/0.225)")
    return p


def positive_int(text: str) -> int:
    """An argparse type for counts that must be at least 1 (`--workers 0` would run nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def existing_dir(path: str, flag: str = "--root") -> Path:
    """The folder, resolved; one line when it is not there."""
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: folder not found")
    return folder


def key_values(pairs: list[str] | None, flag: str) -> dict:
    """`-o KEY=VALUE` pairs as a dict, each value read as YAML (so 0.9, true and [1, 2] are typed)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
