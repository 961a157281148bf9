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


def batch_run() -> bool:
    """Whether this kernel runs a notebook in batch (the study runner), not for a person."""
    return os.environ.get(BATCH_ENV, "") not in ("", "0")


def batch_note():
    """What a browser shows in a batch run: the note, as Markdown."""
    from IPython.display import Markdown

    return Markdown(f"*{NOTE}*")
