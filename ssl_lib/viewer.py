"""Browsers that work in the static book: pre-rendered frames and plain HTML controls.

The notebooks' browsers (slices and masks, augmented views, SparK reconstructions, Grad-CAM
heat maps, reduction curves) are ipywidgets in JupyterLab, where a kernel redraws the figure
for each choice. The built book has no kernel, so there each browser is a :func:`frame_viewer`:
every choice is drawn once while the notebook runs (a small PNG per combination of the
controls' values), and the page switches between them with a slider or a drop-down. The HTML
is self-contained (images as ``data:`` URIs, the switching code in the controls' ``oninput``
attributes): no script file, no widget manager, no network, so it works from ``file://`` and
over http alike, and in the downloaded notebook.

``frame_viewer(render, [("slice", labels), ("method", labels)])`` calls ``render(i, j)`` for
every index pair and returns an :class:`IPython.display.HTML`.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from typing import Callable, Sequence

#: CSS class of a viewer's outer element (the browser test and the book's stylesheet find viewers by it).
VIEWER_CLASS = "sslct-viewer"

# Runs in the page when a control moves: the key of the controls' values picks the frame to show.
_SWITCH = (
    "var v=this.closest('.%s'),c=v.querySelectorAll('[data-axis]'),k=[];"
    "for(var i=0;i<c.length;i++){k.push(c[i].value);var o=v.querySelector('output[data-for=\"'+i+'\"]');"
    "if(o)o.textContent=JSON.parse(c[i].dataset.labels)[c[i].value];}"
    "k=k.join(',');var m=v.querySelectorAll('img[data-key]');"
    "for(var j=0;j<m.length;j++)m[j].hidden=(m[j].dataset.key!==k);" % VIEWER_CLASS
)


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards, so the notebook does not show it again)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def evenly_spaced(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def frame_viewer(render: Callable[..., object], axes: Sequence[tuple[str, Sequence[str]]], *,
                 title: str = "", slider: Sequence[bool] | None = None, dpi: int = 100):
    """A browser of pre-rendered frames for the static book.

    ``axes``: one ``(name, labels)`` per control; ``render(i0, i1, ...)`` returns the matplotlib
    figure (or PNG bytes) for those label indices and is called once per combination.
    ``slider``: per axis, a range slider (default for ordered axes with more than 4 labels) or a
    drop-down. Returns an :class:`IPython.display.HTML` (the first frame shown).
    """
    from IPython.display import HTML

    axes = [(str(name), [str(x) for x in labels]) for name, labels in axes]
    if not axes or any(len(labels) == 0 for _, labels in axes):
        raise ValueError("frame_viewer needs at least one axis, each with at least one label")
    slider = list(slider) if slider is not None else [len(labels) > 4 for _, labels in axes]
    handler = html.escape(_SWITCH, quote=True)
    controls = []
    for k, ((name, labels), as_slider) in enumerate(zip(axes, slider)):
        data = f'data-axis="{k}" data-labels="{html.escape(json.dumps(labels), quote=True)}"'
        label = f'<label style="margin-right:1em">{html.escape(name)} '
        if as_slider:
            controls.append(f'{label}<input type="range" min="0" max="{len(labels) - 1}" step="1" value="0" '
                            f'{data} oninput="{handler}" aria-label="{html.escape(name)}"> '
                            f'<output data-for="{k}">{html.escape(labels[0])}</output></label>')
        else:
            options = "".join(f'<option value="{i}">{html.escape(x)}</option>' for i, x in enumerate(labels))
            controls.append(f'{label}<select {data} oninput="{handler}" onchange="{handler}">{options}</select></label>')
    frames = []
    for key in itertools.product(*(range(len(labels)) for _, labels in axes)):
        out = render(*key)
        png = out if isinstance(out, (bytes, bytearray)) else figure_png(out, dpi)
        alt = ", ".join(f"{name} {labels[i]}" for (name, labels), i in zip(axes, key))
        frames.append(f'<img data-key="{",".join(map(str, key))}" alt="{html.escape(alt, quote=True)}" '
                      f'src="data:image/png;base64,{base64.b64encode(png).decode()}"'
                      f'{"" if not any(key) else " hidden"} style="max-width:100%">')
    head = f'<div style="font-weight:600;margin-bottom:0.3em">{html.escape(title)}</div>' if title else ""
    return HTML(f'<div class="{VIEWER_CLASS}" style="margin:0.5em 0">{head}'
                f'<div style="margin-bottom:0.4em">{"".join(controls)}</div>'
                f'<div>{"".join(frames)}</div></div>')


def browser(render: Callable[..., object], axes: Sequence[tuple[str, Sequence[str]]], *,
            title: str = "", slider: Sequence[bool] | None = None):
    """:func:`frame_viewer` in a batch run (the book); in JupyterLab the same controls as live
    ipywidgets, each choice drawn by ``render`` when it is made."""
    from .widgets import batch_run

    if batch_run():
        return frame_viewer(render, axes, title=title, slider=slider)
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    axes = [(str(name), [str(x) for x in labels]) for name, labels in axes]
    slider = list(slider) if slider is not None else [len(labels) > 4 for _, labels in axes]
    controls = {f"a{k}": (widgets.IntSlider(min=0, max=len(labels) - 1, value=0, description=name,
                                            continuous_update=False) if as_slider else
                          widgets.Dropdown(options=[(x, i) for i, x in enumerate(labels)], description=name))
                for k, ((name, labels), as_slider) in enumerate(zip(axes, slider))}

    def show(**values):
        out = render(*(values[f"a{k}"] for k in range(len(axes))))
        if isinstance(out, (bytes, bytearray)):
            from IPython.display import Image, display

            display(Image(out))
        else:
            plt.show()

    return widgets.interactive(show, **controls)
