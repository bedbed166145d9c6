"""Atomic files and staged directories: the final name holds the old or the new content, never a mix."""

import os
import stat

import pytest

from megatron_cod.data.atomic import atomic_file, replace_path, staged_directory, write_text_atomic


def _siblings(directory):
    return sorted(p.name for p in directory.iterdir())


def test_a_file_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_file(target, "wb") as handle:
            handle.write(b"half")
            raise OSError("disk full")
    assert target.read_text() == "old" and _siblings(target.parent) == ["a.txt"]
    with atomic_file(target) as handle:
        handle.write("new")
    assert target.read_text() == "new" and _siblings(target.parent) == ["a.txt"]


def test_files_and_directories_get_the_permissions_open_and_mkdir_would_give(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f", "x")
        with staged_directory(tmp_path / "d"):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "report"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with staged_directory(final) as staging:
        assert staging.parent == final.parent.resolve() and staging != final.resolve()
        (staging / "new.txt").write_text("new")
        assert (final / "stale.txt").exists()  # untouched until the block succeeds
    assert _siblings(final) == ["new.txt"] and _siblings(tmp_path) == ["report"]


def test_a_failed_staged_directory_keeps_the_old_one_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "report"
    final.mkdir()
    (final / "kept.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(final) as staging:
            (staging / "half.txt").write_text("x")
            raise KeyboardInterrupt
    assert _siblings(final) == ["kept.txt"] and _siblings(tmp_path) == ["report"]


def test_replace_path_moves_a_file_or_a_directory_over_an_existing_one(tmp_path):
    (tmp_path / "new_file").write_text("new")
    (tmp_path / "file").write_text("old")
    replace_path(tmp_path / "new_file", tmp_path / "file")
    (tmp_path / "new_dir").mkdir()
    (tmp_path / "new_dir" / "x").write_text("new")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "y").write_text("old")
    replace_path(tmp_path / "new_dir", tmp_path / "dir")
    assert (tmp_path / "file").read_text() == "new" and _siblings(tmp_path / "dir") == ["x"]
    assert _siblings(tmp_path) == ["dir", "file"]
