"""``ssl_lib.atomic``: the one atomic-write helper, and the error base class."""

import os

import pytest

from ssl_lib.atomic import atomic_path, atomic_write, temp_name
from ssl_lib.errors import SslCtError
from ssl_lib.runfolder import TEMP_NAME


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, fsync=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_temp_name_is_the_pattern_the_runner_cleans(tmp_path):
    tmp = temp_name(tmp_path / "last.ckpt")
    assert tmp.parent == tmp_path and tmp.name == f".last.ckpt.tmp-{os.getpid()}"
    assert TEMP_NAME.match(tmp.name)


def test_error_base_class_is_an_exception():
    assert issubclass(SslCtError, Exception) and not issubclass(SslCtError, ValueError)
