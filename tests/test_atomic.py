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
