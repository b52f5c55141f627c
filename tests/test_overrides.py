"""`bench run M --set KEY.PATH=VALUE`: overrides over the file, validated like it and recorded."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.study.manifest import load_manifest
from bench.study.overrides import apply_sets
from tests.conftest import tiny_manifest


def test_sets_reach_sections_and_named_list_entries(tmp_path):
    path = tiny_manifest(tmp_path)
    m = load_manifest(path, ["transfer.steps=500", "backbones.depth.pretrain.steps=2000",
                             "transfer.protocols=[linear]", "backbones.0.arch=resnet18", "executor.retries=3"])
    assert m.transfer.steps == 500 and m.transfer.protocols == ["linear"] and m.executor.retries == 3
    pre = {b.name: b.pretrain.steps for b in m.backbones if b.pretrain}
    assert pre == {"depth": 2000, "cls": 6}  # only the named entry
    assert m.backbones[0].arch == "resnet18"
    assert m.overrides == ["transfer.steps=500", "backbones.depth.pretrain.steps=2000", "transfer.protocols=[linear]",
                           "backbones.0.arch=resnet18", "executor.retries=3"]
    assert load_manifest(path).overrides == [] and load_manifest(path).transfer.steps == 6  # the file is untouched


def test_a_later_set_wins_and_the_input_is_not_changed():
    raw = {"transfer": {"steps": 1}}
    out, where = apply_sets(raw, ["transfer.steps=2", "transfer.steps=3"])
    assert out["transfer"]["steps"] == 3 and raw["transfer"]["steps"] == 1
    assert where == {"transfer.steps=2": ("transfer", "steps"), "transfer.steps=3": ("transfer", "steps")}


@pytest.mark.parametrize("sets, message", [
    (["transfer.stepz=5"], "--set transfer.stepz=5: transfer.stepz: unknown key"),
    (["transfer.steps=many"], "--set transfer.steps=many: transfer.steps: Input should be a valid integer"),
    (["backbones.nobody.arch=resnet18"], "--set backbones.nobody.arch=resnet18: backbones has no entry named "
                                         "'nobody' (entries: random, depth, cls)"),
    (["transfer.steps.more=1"], "transfer.steps is a value (6), not a section"),
    (["transfer.steps"], "expected KEY.PATH=VALUE"),
    (["workers=0"], "--set workers=0: workers: Input should be greater than or equal to 1"),
])
def test_a_bad_set_is_one_line_naming_it(tmp_path, capsys, sets, message):
    path = tiny_manifest(tmp_path)
    with pytest.raises(UserError) as err:
        load_manifest(path, sets)
    assert message in str(err.value) and "\n" not in str(err.value)
    argv = ["run", str(path), "--dry-run"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 2 and message in capsys.readouterr().err


def test_overrides_are_no_key_of_the_file(tmp_path):
    path = tiny_manifest(tmp_path)
    path.write_text(path.read_text() + "overrides: [transfer.steps=1]\n")
    with pytest.raises(UserError, match="overrides: unknown key"):
        load_manifest(path)


def test_a_dry_run_lists_the_overridden_matrix(tmp_path, capsys):
    path = tiny_manifest(tmp_path)
    assert main(["run", str(path), "--dry-run", "--set", "transfer.protocols=[linear]",
                 "--set", "transfer.seeds=[0, 1]"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 3 * 2 and all("__linear__" in i for i in ids)


def test_the_overrides_are_recorded_in_the_resolved_manifest(tmp_path, monkeypatch):
    """Recorded before any job runs: the executor is stopped at its first job."""
    import bench.study.runner as runner

    def no_world(*args, **kwargs):
        raise KeyboardInterrupt  # stop right after manifest.resolved.json is written

    monkeypatch.setattr(runner, "ensure_world", no_world)
    path = tiny_manifest(tmp_path)
    assert main(["run", str(path), "--set", "transfer.steps=2", "--no-progress"]) == 130
    resolved = json.loads((tmp_path / "results" / "manifest.resolved.json").read_text())
    assert resolved["overrides"] == ["transfer.steps=2"] and resolved["transfer"]["steps"] == 2
    from bench.study.status import matrix_status

    assert matrix_status(tmp_path / "results")["total"] == 9  # bench status still reads it
