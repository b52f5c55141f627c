"""configs/kitti_depth_study.yaml, the worked GPU study, loads and expands: its placeholder roots
are pointed at tiny official-layout trees (tests/fixtures) and `bench run --dry-run` lists its
cells, after opening the datasets and checking that 16-shot subsets fit their pools. A dry run
trains nothing and needs no GPU."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kitti_depth_study.yaml"


def _with_fixture_roots(tmp_path: Path) -> Path:
    """The manifest, copied, with every root pointing at a fixture tree of its dataset (KITTI
    semantics: the benchmark's 200 frames, which a dry run lists and splits like the real set)."""
    from fixtures.kitti import build_kitti_200
    from fixtures.pretrain_layouts import build_kitti_raw

    raw = yaml.safe_load(CONFIG.read_text())
    for b in raw["backbones"]:
        if (b.get("pretrain") or {}).get("root"):
            assert b["pretrain"]["dataset"] == "kitti_raw", "teach this test the builder of the new reader"
            b["pretrain"]["root"] = str(build_kitti_raw(tmp_path / "kitti_raw"))
    for d in raw["datasets"]:
        assert d["name"] == "kitti", "teach this test the builder of the new dataset"
        build_kitti_200(tmp_path / "data_semantics")
        d["root"] = str(tmp_path / "data_semantics")
    raw["out"] = str(tmp_path / "results")
    path = tmp_path / "configs" / CONFIG.name
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_kitti_study_dry_runs(tmp_path, capsys):
    path = _with_fixture_roots(tmp_path)
    assert main(["run", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    cells = out.split()
    # 2 backbones x 1 dataset x (full, frozen with monodepth2; linear with linear) x 16 images x 3 seeds
    assert len(cells) == 18 and "18 cells" in err
    assert {c.split("__")[0] for c in cells} == {"random", "depth_video"}
    assert all("__kitti__" in c and "__n16__" in c for c in cells)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing
