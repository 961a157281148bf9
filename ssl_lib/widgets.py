"""Interactive browsers (ipywidgets) in batch runs: a note in their place.

The notebooks' browsers (:func:`ssl_lib.data.views.slice_browser`,
:func:`ssl_lib.pretrain.view_browser`, :func:`ssl_lib.explain.heatmap_browser`) need a live
kernel and a person; every cell that shows one also draws a static figure. When the study runner
executes the notebooks (papermill) it sets ``SSL_CT_BATCH=1`` in the kernels' environment, and
the browsers return a short note instead of widgets: nobody could use them there, and building
an ``interactive``/``Output`` widget under nbclient intermittently leaves the cell waiting
forever (jupyter/nbclient#312, jupyter/nbconvert#2029), which once stalled a whole study run.
"""

from __future__ import annotations

import os

#: Environment variable the study runner sets for its kernels.
BATCH_ENV = "SSL_CT_BATCH"
NOTE = "(interactive widget: open this notebook in JupyterLab to use it)"


def batch_run() -> bool:
    """Whether this kernel runs a notebook in batch (the study runner), not for a person."""
    return os.environ.get(BATCH_ENV, "") not in ("", "0")


def batch_note():
    """What a browser shows in a batch run: the note, as Markdown."""
    from IPython.display import Markdown

    return Markdown(f"*{NOTE}*")
