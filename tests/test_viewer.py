"""The static book's browsers (ssl_lib.viewer): one frame per combination, plain HTML controls."""

import base64
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest

matplotlib.use("Agg")

from ssl_lib.viewer import VIEWER_CLASS, evenly_spaced, frame_viewer


def test_one_frame_per_combination_first_shown():
    plt.close("all")  # figures other tests left open are not this viewer's
    calls = []

    def render(i, j):
        calls.append((i, j))
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.text(0.5, 0.5, f"{i}{j}")
        return fig

    page = frame_viewer(render, [("slice", ["a", "b", "c", "d", "e"]), ("method", ["X", "Y"])], title="T").data
    assert sorted(calls) == [(i, j) for i in range(5) for j in range(2)]
    keys = re.findall(r'<img data-key="([\d,]+)"', page)
    assert keys == [f"{i},{j}" for i in range(5) for j in range(2)]
    visible = re.findall(r'<img data-key="([\d,]+)"[^>]*src="[^"]+"(?! hidden)', page)
    assert visible == ["0,0"]  # only the first frame is shown before a control moves
    assert VIEWER_CLASS in page and 'type="range"' in page and "<select" in page
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 10 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch
    assert len(plt.get_fignums()) == 0  # frames are closed, not shown twice in the notebook


def test_png_bytes_are_taken_as_they_are_and_labels_escaped():
    page = frame_viewer(lambda i: b"\x89PNG-fake", [('<b>"x"</b>', ["1", "2"])], slider=[False]).data
    assert page.count(base64.b64encode(b"\x89PNG-fake").decode()) == 2
    assert "<b>" not in page and "&lt;b&gt;" in page


def test_bad_axes_are_an_error():
    with pytest.raises(ValueError):
        frame_viewer(lambda: None, [])
    with pytest.raises(ValueError):
        frame_viewer(lambda i: b"", [("empty", [])])


def test_evenly_spaced():
    assert evenly_spaced(3, 10) == [0, 1, 2]
    assert evenly_spaced(100, 5) == [0, 25, 50, 74, 99]
    assert evenly_spaced(7, 1) == [0]
