"""Atomic writes: whole files only, and the mode an ordinary open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from dsaml_utils.io.atomic import FILE_MODE, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_whole_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one\n")
    atomic_write_text(path, "two\n")
    assert path.read_text() == "two\n" and list(path.parent.iterdir()) == [path]  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o666 & ~mask


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "b.bin"
    atomic_write_bytes(path, b"old")

