import json

import pytest

from litft.io import atomic_dir, atomic_write, atomic_write_text


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, json.dumps({"v": 1}))
    atomic_write_text(target, json.dumps({"v": 2}))
    assert json.loads(target.read_text()) == {"v": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"good")

    def half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_dir_swaps_and_keeps_old_on_failure(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "w.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "w.txt").write_text("two, half")
            raise RuntimeError("crash")
    assert (out / "w.txt").read_text() == "one"
    with atomic_dir(out) as tmp:
        (tmp / "x.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["x.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_dir_without_replace_keeps_a_folder_another_process_built(tmp_path):
    out = tmp_path / "converted"
    with atomic_dir(out, replace=False) as tmp:
        (tmp / "w").write_text("mine")
        out.mkdir()  # another process finished the same folder first
        (out / "w").write_text("theirs")
    assert (out / "w").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]  # no temp folder left
    with atomic_dir(out) as tmp:  # the default replaces
        (tmp / "w").write_text("new")
    assert (out / "w").read_text() == "new"
