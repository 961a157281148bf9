"""Interactive browsers (ipywidgets) in batch runs: pre-rendered frames in their place.

The notebooks' browsers (:func:`ssl_lib.data.views.slice_browser`,
:func:`ssl_lib.pretrain.view_browser`, :func:`ssl_lib.explain_figures.heatmap_browser`,
:func:`ssl_lib.present.reduction_browser`) are live widgets in JupyterLab. When the study runner
executes the notebooks (papermill) it sets ``SSL_CT_BATCH=1`` in the kernels' environment, and
the browsers return a :func:`ssl_lib.viewer.frame_viewer` instead: plain HTML that works in the
static book without a kernel, where widgets could not. Building an ``interactive``/``Output``
widget under nbclient also intermittently leaves the cell waiting forever (jupyter/nbclient#312,
jupyter/nbconvert#2029), which once stalled a whole study run. :func:`batch_note` is the plain
note for a browser that has no frames to show.
"""

from __future__ import annotations

import os

#: Environment variable the study runner sets for its kernels.
BATCH_ENV = "SSL_CT_BATCH"
NOTE = "(interactive widget: open this notebook in JupyterLab to use it)"


#: Programs that execute notebooks without a person (their command line names one of these): a
#: kernel they start shows pre-rendered frames as under the study runner.
BATCH_EXECUTORS = ("papermill", "nbconvert", "nbclient")


def _parent_command() -> str:
    """The command line of this process's parent ('' where it cannot be read)."""
    try:
        import psutil

        return " ".join(psutil.Process().parent().cmdline())
    except Exception:  # noqa: BLE001 - no parent, or no access: not a batch executor we can name
        return ""


def batch_run() -> bool:
    """Whether this kernel runs a notebook in batch, not for a person: the study runner (which
    sets ``SSL_CT_BATCH=1``; ``SSL_CT_BATCH=0`` forces live widgets), or a kernel that papermill's
    or nbconvert's command line started (a user's ``papermill notebooks/07_reduction.ipynb out.ipynb``
    gets the same pre-rendered frames as the runner's pages)."""
    value = os.environ.get(BATCH_ENV, "")
    if value:
        return value != "0"
    return any(name in _parent_command() for name in BATCH_EXECUTORS)


def batch_note():
    """What a browser shows in a batch run: the note, as Markdown."""
    from IPython.display import Markdown

    return Markdown(f"*{NOTE}*")
