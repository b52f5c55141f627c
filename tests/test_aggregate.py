"""Aggregation from hand-made records: intervals, ranks, baseline differences, failures, report."""

import json
import math

import pandas as pd
import pytest

from bench.report.aggregate import write_reports
from bench.report.statistics import t_interval
from bench.cli import main
from bench.core.errors import UserError

CLASSES = ["road", "car"]


def _record(results, backbone, seed, miou, status="ok", protocol="frozen", train_size=16, curve=True, versions=None):
    cell = {"backbone": backbone, "method": "m", "arch": "resnet18", "dataset": "synth", "protocol": protocol,
            "decoder": "monodepth2", "train_size": train_size, "seed": seed}
    ok = status == "ok"
    record = {
        "cell": cell, "status": status, "error": None if ok else "loss became nan at step 3",
        "init": {"requested": "auto", "effective": "encoder"}, "config": {"init": "auto"},
        "metrics": {"miou": miou / 100, "pixel_acc": (miou + 10) / 100, "mean_class_acc": (miou + 5) / 100,
                    "per_class_iou": {"road": (miou + 10) / 100, "car": (miou - 10) / 100}} if ok else None,
        "curve": [{"step": s, "loss": 1.0 / s, "miou": miou / 100 * s / 20, "pixel_acc": 0.5} for s in (10, 20)]
        if ok and curve else [],
        "versions": versions or {"torch": "2.14.1", "torchvision": "0.29.1", "timm": "1.0.31"},
    }
    folder = results / "runs" / f"{backbone}__synth__{protocol}__monodepth2__n{train_size}__s{seed}"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    (r / "runs").mkdir(parents=True)
    (r / "manifest.resolved.json").write_text(json.dumps({"backbones": [{"name": "imagenet"}, {"name": "depth"},
                                                                         {"name": "single"}]}))
    for seed, miou in enumerate([60.0, 62.0, 64.0]):
        _record(r, "imagenet", seed, miou)
    _record(r, "imagenet", 3, 0.0, status="failed")  # never averaged in
    for seed, miou in enumerate([70.0, 71.0]):
        _record(r, "depth", seed, miou)
    _record(r, "depth", 2, 0.0, status="diverged")
    _record(r, "single", 0, 65.0)  # one seed: no interval
    return r


def test_t_interval_by_hand():
    mean, std, lo, hi = t_interval([60.0, 62.0, 64.0])
    # std = 2; t(0.975, 2) = 4.302653; half-width = 4.302653 * 2 / sqrt(3) = 4.968275.
    assert (mean, std) == pytest.approx((62.0, 2.0))
    assert (lo, hi) == pytest.approx((62.0 - 4.968275, 62.0 + 4.968275), abs=1e-5)
    assert math.isnan(t_interval([65.0])[2]) and t_interval([65.0])[0] == 65.0
    assert all(math.isnan(v) for v in t_interval([]))


def test_leaderboard_intervals_ranks_baseline_and_failures(results):
    table = write_reports(results, plots=False)
    board = pd.read_csv(results / "leaderboard.csv").set_index("backbone")
    assert board.loc["imagenet", "n_seeds"] == 3 and board.loc["imagenet", "n_not_ok"] == 1
    assert board.loc["imagenet", "miou_mean"] == pytest.approx(62.0)  # the failed seed is not a 0
    assert board.loc["imagenet", "miou_ci_low"] == pytest.approx(57.0317, abs=1e-3)
    assert board.loc["depth", "n_seeds"] == 2 and board.loc["depth", "n_not_ok"] == 1
    # depth: mean 70.5, std 0.7071, t(0.975, 1) = 12.7062 -> half-width 6.3531.
    assert board.loc["depth", "miou_ci_high"] == pytest.approx(70.5 + 6.3531, abs=1e-3)
    assert math.isnan(board.loc["single", "miou_ci_low"])
    assert board["rank"].to_dict() == {"depth": 1, "single": 2, "imagenet": 3}
    # Baseline defaults to the manifest's first backbone. depth - imagenet, paired over the seeds
    # both ran (0, 1): differences 10 and 9, mean 9.5, std 0.7071, t(0.975, 1) = 12.7062 ->
    # [3.1469, 15.8531]: it excludes zero. (Unpaired, the two intervals [57.0, 67.0] and
    # [64.1, 76.9] overlap: pairing removes the subset-to-subset variation both share.)
    assert set(board["baseline"]) == {"imagenet"}
    assert board.loc["depth", "miou_diff"] == pytest.approx(9.5)
    assert (board.loc["depth", "diff_ci_low"], board.loc["depth", "diff_ci_high"]) == pytest.approx(
        (3.1469, 15.8531), abs=1e-3)
    assert board.loc["depth", "significant"] and board.loc["depth", "diff_interval"] == "paired t, n = 2 seeds"
    # One seed in common and no per-image counts: a difference, no interval, no verdict.
    assert board.loc["single", "miou_diff"] == pytest.approx(5.0) and pd.isna(board.loc["single", "significant"])
    assert board.loc["imagenet", "diff_interval"] == "baseline" and math.isnan(board.loc["imagenet", "miou_diff"])
    md = (results / "leaderboard.md").read_text()
    assert "| baseline " in md and "+0.00" not in md  # the baseline's row shows no difference
    assert "n = 1" in md and "+9.50 *" in md
    failures = pd.read_csv(results / "failures.csv")
    assert sorted(failures["status"]) == ["diverged", "failed"]
    assert "Failed or diverged cells" in (results / "leaderboard.md").read_text()
    assert table["markdown"].count("| depth") == 1


def test_per_class_table_averages_ok_seeds(results):
    write_reports(results, plots=False)
    per_class = pd.read_csv(results / "per_class.csv").set_index("backbone")
    assert per_class.loc["imagenet", "road"] == pytest.approx(72.0)
    assert per_class.loc["depth", "car"] == pytest.approx(60.5)


def test_explicit_baseline_and_unknown_baseline(results, capsys):
    write_reports(results, baseline="depth", plots=False)
    board = pd.read_csv(results / "leaderboard.csv").set_index("backbone")
    assert board.loc["imagenet", "miou_diff"] == pytest.approx(-9.5)  # paired over seeds 0 and 1
    with pytest.raises(UserError, match="not a backbone"):
        write_reports(results, baseline="nope", plots=False)
    assert main(["aggregate", str(results), "--baseline", "nope"]) == 2


def test_report_is_self_contained_with_every_plot(results, capsys):
    for seed, miou in enumerate([50.0, 52.0]):
        _record(results, "depth", seed, miou, protocol="full")
        _record(results, "imagenet", seed, miou - 3, protocol="full")
    assert main(["aggregate", str(results)]) == 0
    assert "report:" in capsys.readouterr().out
    pngs = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert any(n.startswith("bars_") for n in pngs) and any(n.startswith("frozen_vs_full_") for n in pngs)
    assert all((results / "plots" / n).with_suffix(".svg").is_file() for n in pngs)
    page = (results / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "http://" not in page and "https://" not in page  # viewable offline


def test_a_comparison_whose_records_come_from_other_library_versions_says_so(results):
    same = write_reports(results, plots=False)
    assert "Library versions differ" not in same["markdown"]
    # A second linear comparison: one backbone's records were made with an older torch.
    for seed in (0, 1):
        _record(results, "imagenet", seed, 50.0 + seed, protocol="linear")
        _record(results, "depth", seed, 55.0 + seed, protocol="linear",
                versions={"torch": "2.13.0", "torchvision": "0.28.0", "timm": "1.0.31"})
    sections = write_reports(results, plots=False)["markdown"].split("### ")[1:]
    linear = next(part for part in sections if part.startswith("synth · linear"))
    assert ("**Library versions differ** between its records: torch 2.13.0, torchvision 0.28.0, timm 1.0.31 (2 records); "
            "torch 2.14.1, torchvision 0.29.1, timm 1.0.31 (2 records)") in linear
    frozen = next(part for part in sections if part.startswith("synth · frozen"))
    assert "Library versions differ" not in frozen  # the frozen comparison's records agree
