"""The study's Jupyter kernel: IPython's kernel without its "TCP without encryption" warning.

ipykernel logs ``Kernel is running over TCP without encryption ...`` to the terminal each time a
kernel starts on a local TCP socket (every notebook of a study run, every notebook opened in
JupyterLab). On one machine, talking to 127.0.0.1, the warning is noise; this launcher drops
that one record (a :class:`logging.Filter` on the kernel application's logger) and leaves every
other message alone. The kernel spec ``ssl_lib/jupyter/kernels/python3/kernel.json`` runs it; the
study runner and ``make lab`` put ``ssl_lib/jupyter`` on ``JUPYTER_PATH`` (:func:`jupyter_env`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

#: Folder with ``kernels/python3/kernel.json`` (an entry for ``JUPYTER_PATH``).
JUPYTER_DIR = Path(__file__).resolve().parent / "jupyter"
#: The one message this kernel drops (ipykernel.kernelapp.IPKernelApp.init_sockets).
TCP_WARNING = "Kernel is running over TCP without encryption"


class DropTcpWarning(logging.Filter):
    """Drops the kernel's TCP-without-encryption warning; passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TCP_WARNING not in record.getMessage()


def jupyter_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's environment) with :data:`JUPYTER_DIR` first on ``JUPYTER_PATH``."""
    env = dict(os.environ if env is None else env)
    parts = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(JUPYTER_DIR)]
    env["JUPYTER_PATH"] = os.pathsep.join([str(JUPYTER_DIR), *parts])
    return env


def main() -> None:
    """Start an IPython kernel (the arguments of ``python -m ipykernel_launcher``) with the filter."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.log.addFilter(DropTcpWarning())
    app.initialize()
    app.start()


if __name__ == "__main__":
    main()
