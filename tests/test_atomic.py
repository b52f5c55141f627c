import pytest

from bench.core.atomic import atomic_path, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text_atomic(tmp_path / "r.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a reco")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_successful_write_replaces(tmp_path):
    target = write_text_atomic(tmp_path / "sub" / "r.json", "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and len(list(target.parent.iterdir())) == 1


def test_remove_temp_files_takes_a_killed_writers_temps_and_nothing_else(tmp_path):
    from bench.core.atomic import remove_temp_files

    (tmp_path / "predictions").mkdir()
    (tmp_path / "explain").mkdir()
    (tmp_path / ".wide.tmp").mkdir()  # a folder: not a temp file of atomic_path
    debris = [tmp_path / ".record.json.k3cs8v0g.tmp", tmp_path / "predictions" / ".eval00000_pred.png.x1.tmp"]
    kept = [tmp_path / "record.json", tmp_path / "explain" / ".layer4_eval00000.png.x2.tmp",
            tmp_path / ".claim.json.x3.tmp", tmp_path / "notes.tmp", tmp_path / "predictions" / "eval00000_pred.png"]
    for path in debris + kept:
        path.write_text("x")
    removed = remove_temp_files(tmp_path, skip_dirs=("explain",), keep_prefixes=(".claim.json.",))
    assert removed == sorted(debris)
    assert not any(p.exists() for p in debris) and all(p.exists() for p in kept)
    assert (tmp_path / ".wide.tmp").is_dir()
