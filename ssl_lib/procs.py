"""Process trees of the study runner: children that die with their parent, and stopping a whole tree.

The study runner (:mod:`ssl_lib.study`) starts one process per notebook step; that process starts
a Jupyter kernel (in a session of its own, so a terminal's Ctrl-C does not reach it), and the
kernel may start fine-tuning worker processes (:func:`ssl_lib.finetune.run_grid`) or data-loader
workers. Nothing of that tree may outlive an interrupted study (issue 16):

* :func:`stop_tree` ends a process and every descendant (SIGTERM, then SIGKILL after a grace
  period) — what the runner does on Ctrl-C/SIGTERM and what a step process does when its runner
  dies;
* :func:`die_with_parent` makes the calling process receive a signal when its parent dies (the
  Linux parent-death signal, ``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread that polls the
  parent), so a SIGKILL of the runner (which runs no handler) still ends the step processes and
  the grid workers. A Jupyter kernel already ends itself when its parent goes (ipykernel's
  parent poller, enabled by jupyter_client's ``JPY_PARENT_PID``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import psutil

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """Have ``sig`` delivered to this process when its parent process ends.

    ``parent_pid``: the parent expected (the pid that started this process); if it is already
    gone (the parent died before this call), the signal is raised at once.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        def poll() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), sig)

        threading.Thread(target=poll, name="die-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent ended before the signal was armed
        os.kill(os.getpid(), sig)


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (children, grandchildren, ...); empty if it is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_tree(pid: int, grace: float = 5.0, include_root: bool = True) -> None:
    """End ``pid`` (unless ``include_root`` is false) and all its descendants.

    Everything is sent SIGTERM at once (the tree is found through parent links, so a kernel in a
    session of its own is included; workers started after the snapshot end through their
    parent-death signal); whatever still lives after ``grace`` seconds is killed.
    """
    procs = descendants(pid)
    if include_root:
        try:
            procs.insert(0, psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    me = os.getpid()
    for proc in procs:
        if proc.pid == me:
            continue
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs([p for p in procs if p.pid != me], timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def stop_children_on(sig: int = signal.SIGTERM, exit_code: int = 143) -> None:
    """On ``sig``, end every descendant of this process, then exit at once with ``exit_code``.

    For the runner's step processes: the runner sends SIGTERM to stop a step, and the
    parent-death signal (:func:`die_with_parent`) is SIGTERM too, so a killed runner also
    ends the step's kernel and its workers.
    """
    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        stop_tree(os.getpid(), include_root=False)
        os._exit(exit_code)

    signal.signal(sig, handler)
