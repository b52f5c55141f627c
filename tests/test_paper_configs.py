"""configs/paper/: the reproduction manifests validate (the manifest-only dry run: their data and
weights are not here), each has its published-number CSV, and every CSV row names a cell its
manifest's matrix produces, so that `bench aggregate RESULTS --compare CSV` can match it."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import pytest

from bench.report.aggregate import METRICS
from bench.cli import main
from transfer.protocols import PROTOCOLS

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
MANIFESTS = sorted(PAPER.glob("*.yaml"))
CSVS = sorted(PAPER.glob("*.csv"))
COLUMNS = ["backbone", "dataset", "protocol", "decoder", "train_size", "metric", "published", "source"]
# What --compare matches a published row on (contract 2 of issue 18); an empty train_size is
# "the dataset's whole training pool" and matches any.
MATCH_KEYS = ("backbone", "dataset", "protocol", "decoder", "train_size")



@functools.cache
def _dry_run_cells(path: Path) -> tuple[dict, ...]:
    """The cells of the manifest-only dry run, run in-process (the `--json` listing)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["run", str(path), "--dry-run", "--manifest-only", "--json"])
    assert status == 0, f"{path.name}: {err.getvalue().strip()}"
    return tuple(json.loads(out.getvalue()))


def _display(cell: dict, axis: str) -> str:
    """NAME, or NAME@LABEL for a variant (contract 1), as leaderboards and the CSVs name rows."""
    label = cell.get(f"{axis}_variant")
    return f"{cell[axis]}@{label}" if label else cell[axis]


def _cell_keys(cells) -> set[tuple]:
    return {(_display(c, "backbone"), _display(c, "dataset"), c["protocol"], c["decoder"], str(c["train_size"]))
            for c in cells}


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS, f"{path.name}: columns {reader.fieldnames}"
        return list(reader)


def _unmatched(rows: list[dict], cells) -> list[dict]:
    """The published rows no cell of the matrix matches."""
    keys = _cell_keys(cells)
    out = []
    for row in rows:
        want = tuple(row[k] for k in MATCH_KEYS)
        if want[-1] == "":
            hit = any(k[:-1] == want[:-1] for k in keys)
        else:
            hit = want in keys
        if not hit:
            out.append(row)
    return out



def test_there_is_a_manifest_per_published_result():
    stems = {p.stem for p in MANIFESTS}
    # Lao et al. Tables 1-6 and Figs. 3, 4, 8 (the list), Fig. 5's and Fig. 7's numbers, Depth Anything.
    for prefix in ("lao_table1_", "lao_table2_", "lao_table3_", "lao_table4_", "lao_table5_", "lao_table6_",
                   "lao_fig3_", "lao_fig4_", "lao_fig5_", "lao_fig7_", "lao_fig8_", "depth_anything_"):
        assert any(s.startswith(prefix) for s in stems), prefix


def test_every_manifest_has_its_csv_and_every_csv_its_manifest():
    assert {p.stem for p in MANIFESTS} == {p.stem for p in CSVS}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_a_paper_manifest_validates_in_the_manifest_only_dry_run(path):
    cells = _dry_run_cells(path)
    assert cells, f"{path.name}: no cells"
    assert len({c["id"] for c in cells}) == len(cells)


@pytest.mark.parametrize("path", CSVS, ids=lambda p: p.stem)
def test_a_published_csv_parses(path):
    rows = _read_csv(path)
    keys = [tuple(r[k] for k in (*MATCH_KEYS, "metric")) for r in rows]
    assert len(set(keys)) == len(keys), f"{path.name}: a cell and metric published twice"
    for i, row in enumerate(rows, start=2):
        where = f"{path.name}:{i}"
        assert row["protocol"] in PROTOCOLS, where
        assert row["metric"] in METRICS, where
        assert row["train_size"] == "" or (row["train_size"].isdigit() and int(row["train_size"]) >= 1), where
        value = float(row["published"])  # a ValueError names the bad cell
        assert math.isfinite(value) and 0 <= value <= 100, where  # percentages, as the leaderboard
        assert row["source"].strip(), where
        assert all(row[k].strip() for k in ("backbone", "dataset", "decoder")), where


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_published_row_names_a_cell_of_its_manifest(path):
    rows = _read_csv(path.with_suffix(".csv"))
    unmatched = _unmatched(rows, _dry_run_cells(path))
    assert not unmatched, f"{path.name}: no cell for {[tuple(r[k] for k in MATCH_KEYS) for r in unmatched]}"


def test_a_row_for_a_cell_the_matrix_lacks_is_unmatched():
    cells = [{"id": "x", "backbone": "depth", "dataset": "kitti", "protocol": "full", "decoder": "monodepth2",
              "train_size": 16}]
    row = dict(zip(COLUMNS, ["depth", "kitti", "full", "monodepth2", "16", "miou", "50.2", "Table 1"]))
    assert _unmatched([row], cells) == []
    assert _unmatched([{**row, "decoder": "deeplabv3"}], cells) != []
    assert _unmatched([{**row, "train_size": "32"}], cells) != []
    assert _unmatched([{**row, "backbone": "depth@crop256"}], cells) != []
    assert _unmatched([{**row, "backbone": "depth@crop256"}], [{**cells[0], "backbone_variant": "crop256"}]) == []
    assert _unmatched([{**row, "train_size": ""}], cells) == []


def test_table1_holds_the_numbers_quoted_from_the_paper():
    rows = _read_csv(PAPER / "lao_table1_kitti.csv")
    miou = {(r["backbone"], r["protocol"], r["decoder"]): float(r["published"]) for r in rows if r["metric"] == "miou"}
    # Lao et al. Table 1, ResNet18, U-Net: fine-tune all None / ImageNet / Depth, frozen ImageNet / Depth.
    assert miou[("none_r18", "full", "monodepth2")] == 41.35
    assert miou[("imagenet_r18", "full", "monodepth2")] == 45.15
    assert miou[("depth_r18", "full", "monodepth2")] == 50.20
    assert miou[("imagenet_r18", "frozen", "monodepth2")] == 33.33
    assert miou[("depth_r18", "frozen", "monodepth2")] == 46.53
    # The caption: best practice (Depth, ResNet50) improves common practice (ImageNet, DeepLabV3)
    # by 7.53 mIoU and 4.68 pixel accuracy.
    pacc = {(r["backbone"], r["decoder"]): float(r["published"]) for r in rows
            if r["metric"] == "pixel_acc" and r["protocol"] == "full"}
    assert round(miou[("depth_r50", "full", "monodepth2")] - miou[("imagenet_r50", "full", "deeplabv3")], 2) == 7.53
    assert round(pacc[("depth_r50", "monodepth2")] - pacc[("imagenet_r50", "deeplabv3")], 2) == 4.68
    assert len(rows) == 40  # 4 initialisations x 5 columns x (mIoU, P.Acc)


def test_the_readme_lists_every_manifest():
    readme = (PAPER / "README.md").read_text()
    for path in MANIFESTS:
        assert f"{path.stem}.yaml" in readme, path.name
