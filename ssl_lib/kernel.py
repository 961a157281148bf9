"""The study's Jupyter kernel: IPython's kernel without two log records that are noise.

- ipykernel logs ``Kernel is running over TCP without encryption ...`` to the terminal each time
  a kernel starts on a local TCP socket (every notebook of a study run, every notebook opened in
  JupyterLab). On one machine, talking to 127.0.0.1, the warning says nothing.
- ``KeyboardInterrupt caught in kernel.``: jupyter_client's ``shutdown_kernel`` interrupts the
  kernel (SIGINT) before asking it to shut down, and when that interrupt lands while the kernel
  is still handling a message (not running a cell), ipykernel logs this error and carries on.
  Papermill shuts the kernel down after every notebook of a study run, so the line appeared
  among a run's progress now and then, after a step that had finished normally. An interrupt
  of a running cell is not affected: it ends the cell with its KeyboardInterrupt traceback.

This launcher drops those records (a :class:`logging.Filter` on the kernel application's
logger) and leaves every other message alone. The kernel spec
``ssl_lib/jupyter/kernels/python3/kernel.json`` runs it; the study runner and ``make lab`` put
``ssl_lib/jupyter`` on ``JUPYTER_PATH`` (:func:`jupyter_env`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

#: Folder with ``kernels/python3/kernel.json`` (an entry for ``JUPYTER_PATH``).
JUPYTER_DIR = Path(__file__).resolve().parent / "jupyter"
#: The messages this kernel drops: ipykernel.kernelapp.IPKernelApp.init_sockets, and
#: ipykernel.kernelbase.Kernel.dispatch_shell on an interrupt between cells (kernel shutdown).
TCP_WARNING = "Kernel is running over TCP without encryption"
SHUTDOWN_INTERRUPT = "KeyboardInterrupt caught in kernel"
DROPPED = (TCP_WARNING, SHUTDOWN_INTERRUPT)


class DropNoise(logging.Filter):
    """Drops the kernel's log records that contain one of :data:`DROPPED`; passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in DROPPED)


def jupyter_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's environment) with :data:`JUPYTER_DIR` first on ``JUPYTER_PATH``."""
    env = dict(os.environ if env is None else env)
    parts = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(JUPYTER_DIR)]
    env["JUPYTER_PATH"] = os.pathsep.join([str(JUPYTER_DIR), *parts])
    return env


def main() -> None:
    """Start an IPython kernel (the arguments of ``python -m ipykernel_launcher``) with :class:`DropNoise`."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.log.addFilter(DropNoise())
    app.initialize()
    app.start()


if __name__ == "__main__":
    main()
