"""Progress that suits a cluster log: plain throttled lines off a terminal, one line per finished job."""

from __future__ import annotations

import re

from tqdm import tqdm

from bench.core.progress import PlainProgress, bar
from tests.conftest import write_manifest


class FakeClock:
    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def _plain(total, step_s, **kwargs) -> tuple[PlainProgress, list[str]]:
    lines: list[str] = []
    return PlainProgress(total=total, desc="cell", unit="step", clock=FakeClock(step_s), write=lines.append,
                         **kwargs), lines


def test_a_fast_job_prints_a_line_every_tenth():
    progress, lines = _plain(total=250, step_s=0.01)
    for _ in range(250):
        progress.update(1)
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[-1].startswith("cell: 250/250 step (100%)")


def test_a_slow_job_prints_a_line_every_30_seconds():
    progress, lines = _plain(total=10_000, step_s=7.5)  # 4 updates per 30 s, far from 10 %
    for _ in range(40):
        progress.update(1)
    assert len(lines) == 10 and all("%)" in line for line in lines)


def test_a_resumed_job_counts_from_where_it_was():
    progress, lines = _plain(total=100, step_s=0.01, initial=55)
    for _ in range(10):
        progress.update(1)
    assert [line.split()[1] for line in lines] == ["60/100"]


def test_postfix_and_disabled_progress():
    progress, lines = _plain(total=10, step_s=0.01)
    progress.set_postfix(loss="0.412")
    progress.update(10)
    assert lines == ["cell: 10/10 step (100%) 0s loss=0.412"]
    quiet, none = _plain(total=10, step_s=100, enabled=False)
    quiet.update(10)
    assert none == []


def test_bars_in_a_terminal_plain_lines_elsewhere():
    assert isinstance(bar(enabled=True, plain=False, total=3), tqdm)
    assert isinstance(bar(enabled=True, plain=True, total=3, position=2), PlainProgress)
    assert isinstance(bar(enabled=True, total=3), PlainProgress)  # pytest's stderr is no terminal


def test_a_run_logged_to_a_file_has_no_cursor_codes_and_a_line_per_finished_job(tmp_path, capfd):
    """`bench run` with stderr captured at the file-descriptor level (a file, as in a Slurm log)."""
    from bench.cli import main

    manifest = write_manifest(
        tmp_path, name="logs", out=tmp_path / "results",
        backbones=("  - {name: random, arch: resnet10t}\n"
                   "  - {name: depth, arch: resnet10t, pretrain: {method: depth_supervised, steps: 4, batch_size: 2}}\n"),
        transfer="transfer: {protocols: [linear], train_sizes: [4], seeds: [0], steps: 4, batch_size: 2}\n")
    assert main(["run", str(manifest), "--no-plots"]) == 0
    text = capfd.readouterr().err
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    cells = [line for line in lines if re.match(r"cell \S+: ok mIoU \d+\.\d\d \(\d+s\)$", line)]
    assert len(cells) == 2, text  # random, depth: one line each
    assert len([line for line in lines if re.match(r"pre-trained depth: final loss \d+\.\d{4} \(\d+s\) -> ", line)]) == 1
    # A pre-training of 4 steps, 2 cells of 4, the matrix of 2: at most one line per step, and a few more.
    assert len(lines) < 25, text
