"""One home for atomic file writes: write beside the target, then ``os.replace``.

A reader (or a killed run's successor) sees either the old file or the whole new one, never half a
file. The temporary file lies in the target's folder (a rename across file systems would be a copy)
and is named ``.<name>.tmp-<pid>``, the pattern :mod:`ssl_lib.runfolder` removes when a run was
killed mid-write.

- :func:`atomic_path`: a context manager that yields the temporary path to write with any writer
  (``torch.save``, ``np.savez_compressed``, ``DataFrame.to_csv``) and renames it on success.
- :func:`atomic_write`: text or bytes in one call.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write", "temp_name"]


def temp_name(path: str | os.PathLike) -> Path:
    """The temporary name used for ``path``: ``<folder>/.<name>.tmp-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``, else it is removed.

    ``fsync=True`` flushes the file to disk before the rename (checkpoints a crash must not lose).
    The parent folder is created. Writers that append a suffix of their own (``np.savez`` adds
    ``.npz`` to names without it) must be given a file object, or the name must already end in it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` (``str`` as UTF-8, or ``bytes``) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path
