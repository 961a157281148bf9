"""The study runner's own output folder: ownership, one run at a time, a manifest, temp-file cleanup.

A folder made by the runner holds ``.ssl-ct/`` (issue 16)::

    out/.ssl-ct/manifest.json   what the runner wrote: profile, salted fingerprints of the sources
                                (never a source path), the paths it owns, each step's fingerprint
    out/.ssl-ct/lock            held (``fcntl.flock``) by the running study; names its pid, host, start
    out/.ssl-ct/tmp/            per-run scratch: step error files
    $TMPDIR/ssl-ct-<id>/        the step processes' temp folder (kernels' connection files), kept
                                short for socket paths; <id> is a salted hash of the folder

* :meth:`RunFolder.check_ownable` refuses, before anything is written, a non-empty folder without
  a manifest (someone else's files);
* :meth:`RunFolder.locked` takes the folder's lock; the operating system releases it on any exit
  of the process (also SIGKILL), and a lock file still naming a process (a run that was killed)
  is reported as stale and taken over;
* :meth:`RunFolder.claim` / :meth:`RunFolder.remove` — the runner writes only paths it claimed
  (new ones) and deletes only paths it owns;
* :meth:`RunFolder.clean_temp` removes what interrupted runs leave: the scratch folder and, in the
  owned paths, temporary files of atomic writes (``.NAME.tmp-<pid>`` checkpoints, ``.NAME.tmp-*``
  store folders, ``*.tmp`` / ``*.tmp.npz`` files).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

MARK = ".ssl-ct"
FORMAT = 1
#: Names of temporary files/folders that atomic writes in ssl_lib leave when killed mid-write.
TEMP_NAME = re.compile(r"^\..+\.tmp-[^/]+$|.+\.tmp$|.+\.tmp\.npz$")


class StudyError(RuntimeError):
    """The study cannot run or a step failed; the message says what and what to do."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


class RunFolder:
    """One study output folder as the runner sees it (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.meta = self.root / MARK
        self.manifest_path = self.meta / "manifest.json"
        self.lock_path = self.meta / "lock"
        self.tmp = self.meta / "tmp"
        self.manifest: dict = {}
        self.stale: dict | None = None  # the lock record of a run that did not end cleanly

    # ---- checks before anything is written -----------------------------------------------------
    def check_writable(self) -> None:
        """The folder can be created/written: its nearest existing ancestor is a writable folder."""
        probe = self.root.absolute()
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StudyError(f"cannot use output folder {self.root}: {probe} is a file, not a folder")
        for path in (probe, self.meta):
            if path.exists() and not os.access(path, os.W_OK | os.X_OK):
                raise StudyError(f"cannot write to output folder {self.root}: {path} is not writable "
                                 "(choose another --output)")

    def is_ours(self) -> bool:
        return self.manifest_path.is_file()

    def check_ownable(self) -> None:
        """Refuse a non-empty folder the runner did not make (its files are never touched)."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise StudyError(f"output {self.root} is a file, not a folder")
        if self.is_ours():
            return
        others = sorted(p.name for p in self.root.iterdir() if p.name != MARK)
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            older = {"notebooks", "timings.csv"} <= set(others)  # what runners before the manifest left
            raise StudyError(f"output folder {self.root} is not empty ({shown}) and was not made by the study "
                             f"runner (no {MARK}/manifest.json); nothing was changed. Choose a new or empty "
                             "folder with --output" + (", or delete this one if it is the output of an older "
                                                       "version of the runner." if older else "."))

    # ---- one run at a time ---------------------------------------------------------------------
    @contextmanager
    def locked(self, profile: str):
        """Hold the folder's exclusive lock for the block; a held lock is a :class:`StudyError` naming its run."""
        self.meta.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_json(os.pread(fd, 65536, 0))
                who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                       f" (profile {holder.get('profile')})" if holder else "a process that has not written its name yet")
                raise StudyError(f"another study run is using {self.root}: {who}. Wait for it to finish, or stop "
                                 "it first; two runs on one folder would mix their outputs.") from None
            previous = _read_json(os.pread(fd, 65536, 0))
            self.stale = previous or None
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                                 "profile": profile}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            try:
                yield self
            finally:
                os.ftruncate(fd, 0)  # an empty lock file: the last run ended cleanly
        finally:
            os.close(fd)  # releases the flock

    # ---- manifest ------------------------------------------------------------------------------
    def load(self) -> dict:
        if self.manifest_path.is_file():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as err:
                raise StudyError(f"{self.manifest_path} is damaged ({err}); start over in a new --output "
                                 "folder") from None
            if self.manifest.get("format") != FORMAT:
                raise StudyError(f"{self.manifest_path} has format {self.manifest.get('format')}, this runner "
                                 f"reads {FORMAT}; start over in a new --output folder")
        else:
            self.manifest = {"format": FORMAT, "salt": secrets.token_hex(16), "created": _now(), "profile": None,
                             "owned": [], "steps": {}}
            self.save()
        return self.manifest

    def save(self) -> None:
        tmp = self.meta / f".manifest.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def fingerprint(self, text: str) -> str:
        """A salted hash (the salt is this folder's own): equal inputs compare equal, the text is not stored."""
        return hashlib.sha256((self.manifest["salt"] + "\0" + text).encode()).hexdigest()[:16]

    # ---- what the runner owns ------------------------------------------------------------------
    def owns(self, rel: str) -> bool:
        return rel in self.manifest["owned"]

    def foreign(self, rels) -> list[str]:
        """Those of ``rels`` that exist but were not written by the runner."""
        return [r for r in rels if (self.root / r).exists() and not self.owns(r)]

    def claim(self, rels) -> None:
        """Record ``rels`` as the runner's (each must be new or already the runner's)."""
        foreign = self.foreign(rels)
        if foreign:
            raise StudyError(f"{self.root} holds {', '.join(foreign)}, which the study runner did not write; "
                             "move it away or choose another --output")
        new = [r for r in rels if not self.owns(r)]
        if new:
            self.manifest["owned"] = sorted(set(self.manifest["owned"]) | set(new))
            self.save()

    def remove(self, rel: str) -> bool:
        """Delete an owned path (and the folders above it that it leaves empty); others are left alone."""
        if not self.owns(rel):
            return False
        path = self.root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        self.manifest["owned"].remove(rel)
        self.save()
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        return True

    # ---- debris of interrupted runs ------------------------------------------------------------
    @property
    def system_tmp(self) -> Path:
        """The step processes' temp folder (``TMPDIR``): kernels' connection files and the like."""
        return Path(tempfile.gettempdir()) / f"ssl-ct-{self.fingerprint('tmp')[:12]}"

    def clean_temp(self, rels=None) -> int:
        """Remove the scratch folders and temporary files in the owned paths (or in ``rels``); returns a count."""
        count = 0
        for scratch in (self.tmp, self.system_tmp):
            if scratch.exists():
                count += sum(1 for p in scratch.rglob("*") if not p.is_dir())
                shutil.rmtree(scratch, ignore_errors=True)
        for path in self.meta.glob(".*.tmp-*"):
            path.unlink()
            count += 1
        for rel in (self.manifest.get("owned", []) if rels is None else rels):
            count += _remove_temp_files(self.root / rel)
        return count


def _remove_temp_files(path: Path) -> int:
    if not path.exists():
        return 0
    if TEMP_NAME.match(path.name):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return 1
    count = 0
    if path.is_dir() and not path.is_symlink():
        for top, dirs, files in os.walk(path):
            for name in [d for d in dirs if TEMP_NAME.match(d)]:
                shutil.rmtree(Path(top, name))
                dirs.remove(name)
                count += 1
            for name in files:
                if TEMP_NAME.match(name):
                    Path(top, name).unlink()
                    count += 1
    return count


def _read_json(data: bytes) -> dict:
    try:
        return json.loads(data.decode()) if data.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return {}
