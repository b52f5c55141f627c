"""`bench run --dry-run`: the real data it names checked before anything is written or rendered;
`--manifest-only` for a manifest written before its data."""

from __future__ import annotations

import textwrap

import pytest

from bench.cli import main
from bench.study.manifest import load_manifest
from bench.study.runner import uses_world
from fixtures.voc import build_voc
from tests.conftest import tiny_manifest, write_manifest


def _voc_manifest(tmp_path, root, train_sizes="[1]", extra=""):
    path = tmp_path / "voc.yaml"
    path.write_text(textwrap.dedent(f"""
        name: voc
        out: {tmp_path / 'results'}
        backbones:
          - {{name: random, arch: resnet10t}}
        {extra}
        datasets:
          - {{name: voc, root: {root}}}
        transfer: {{protocols: [linear], train_sizes: {train_sizes}, seeds: [0], steps: 2}}
        """))
    return path


@pytest.fixture
def voc_root(tmp_path):
    build_voc(tmp_path / "data")  # a training pool of 1 image
    return tmp_path / "data" / "VOCdevkit" / "VOC2012"


def test_a_dry_run_of_present_data_lists_the_cells_and_writes_nothing(tmp_path, voc_root, capsys):
    assert main(["run", str(_voc_manifest(tmp_path, voc_root)), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["random__voc__linear__linear__n1__s0"]
    assert not (tmp_path / "results").exists()


def test_a_dry_run_finds_every_data_problem_at_once(tmp_path, voc_root, capsys):
    (tmp_path / "empty").mkdir()
    extra = f"  - {{name: cls, arch: resnet10t, pretrain: {{method: classification, steps: 2, " \
            f"dataset: image_folder, root: {tmp_path / 'empty'}}}}}"
    path = _voc_manifest(tmp_path, voc_root, train_sizes="[1, 4]", extra=extra)
    assert main(["run", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"error: {path}: 2 problems:"
    assert "transfer.train_sizes: 4 exceeds the 1 labelled training images of voc" in lines[1]
    assert lines[2].startswith("  backbones.cls.pretrain: ") and "no class folders found" in lines[2]
    assert not (tmp_path / "results").exists()  # found before any world was rendered


def test_a_dry_run_names_a_dataset_folder_of_the_wrong_layout(tmp_path, capsys):
    (tmp_path / "not-voc").mkdir()
    path = _voc_manifest(tmp_path, tmp_path / "not-voc")
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: datasets[0] (voc): ") and "\n" not in err


def test_manifest_only_checks_a_manifest_before_its_data_exists(tmp_path, capsys):
    extra = "  - {name: mine, arch: resnet10t, checkpoint: later.safetensors}"
    path = _voc_manifest(tmp_path, tmp_path / "not-yet", extra=extra)
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "datasets[0].root: folder not found" in err and "checkpoint: file not found" in err
    assert main(["run", str(path), "--dry-run", "--manifest-only"]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    # Still validated: a bad key is a problem with or without the data.
    path.write_text(path.read_text().replace("steps: 2", "stepz: 2"))
    assert main(["run", str(path), "--dry-run", "--manifest-only"]) == 2
    assert "transfer.stepz: unknown key" in capsys.readouterr().err


def test_manifest_only_needs_a_dry_run(tmp_path, capsys):
    assert main(["run", str(tiny_manifest(tmp_path)), "--manifest-only"]) == 2
    assert "needs --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_the_world_is_rendered_only_for_a_manifest_that_uses_it(tmp_path, voc_root):
    synth = load_manifest(tiny_manifest(tmp_path))
    assert uses_world(synth, synth.backbones)
    voc = load_manifest(_voc_manifest(tmp_path, voc_root))
    assert not uses_world(voc, voc.backbones)
    pre = load_manifest(_voc_manifest(tmp_path, voc_root, extra="  - {name: d, arch: resnet10t, pretrain: "
                                                                  "{method: depth_supervised, steps: 2}}"))
    assert uses_world(pre, pre.backbones) and not uses_world(pre, pre.backbones[:1])


def test_a_run_on_real_data_alone_renders_no_world(tmp_path, voc_root, monkeypatch):
    import bench.study.runner as runner

    rendered = []

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # stage 2 reached: enough to know whether the world was rendered

    monkeypatch.setattr(runner, "ensure_world", lambda *a, **k: rendered.append(a))
    monkeypatch.setattr(runner, "publish_splits", stop)
    assert main(["run", str(_voc_manifest(tmp_path, voc_root)), "--no-progress"]) == 130
    assert rendered == [] and not (tmp_path / "results" / "data").exists()
    assert main(["run", str(tiny_manifest(tmp_path)), "--no-progress"]) == 130
    assert len(rendered) == 1


def test_sizes_no_encoder_can_take_refuse_the_run_before_anything_is_written(tmp_path, capsys):
    # A resolution study with one size too small: found at once, every one, with no data needed,
    # rather than as a failed pre-training and failed cells after the rest has run.
    path = write_manifest(
        tmp_path, name="small", out=tmp_path / "results",
        backbones=("  - {name: depth, variant: half, arch: resnet10t, pretrain: {method: depth_supervised, steps: 2, resize: 24x72}}\n"
                   "  - {name: depth, variant: crop, arch: resnet10t, pretrain: {method: depth_supervised, steps: 2, crop: 40x96}}\n"),
        datasets=("  - {name: synth, variant: small, resize: 24x72}\n"
                  "  - {name: synth, variant: short, resize: 20}\n"
                  "  - {name: synth, variant: eval, eval_resize: 16x48}\n"
                  "  - {name: synth, variant: ok}\n"),
        transfer="transfer: {protocols: [linear], train_sizes: [2], seeds: [0], steps: 2}\n")
    for argv in (["run", str(path)], ["run", str(path), "--dry-run", "--manifest-only"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "4 problems" in err
        assert "datasets[0] (synth@small): resize 24x72 is too small" in err
        assert "datasets[1] (synth@short): resize a short side of 20 is too small" in err
        assert "datasets[2] (synth@eval): eval_resize 16x48 is too small" in err
        assert "backbones.depth@half.pretrain: resize 24x72 is too small" in err
        assert "synth@ok" not in err and "depth@crop" not in err
        assert not (tmp_path / "results").exists()
    # The world's own size counts where a stage keeps it.
    path.write_text(path.read_text().replace("height: 48", "height: 32"))
    assert main(["run", str(path), "--dry-run", "--manifest-only"]) == 2
    assert "datasets[3] (synth@ok): the world's size 32x144 is too small" in capsys.readouterr().err
