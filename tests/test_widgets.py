"""Batch runs are recognised: the runner's kernels (SSL_CT_BATCH) and kernels that papermill's or
nbconvert's command line started show pre-rendered frames, a person's kernel live widgets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_lib import widgets
from tools.nbtemplate import write_notebook


def test_batch_run_reads_the_variable_then_the_parent(monkeypatch):
    monkeypatch.delenv(widgets.BATCH_ENV, raising=False)
    monkeypatch.setattr(widgets, "_parent_command", lambda: "/venv/bin/python /venv/bin/jupyter-lab --port 8888")
    assert not widgets.batch_run()  # a person in JupyterLab
    monkeypatch.setattr(widgets, "_parent_command", lambda: "/venv/bin/python /venv/bin/papermill a.ipynb b.ipynb")
    assert widgets.batch_run()
    monkeypatch.setenv(widgets.BATCH_ENV, "0")  # forced live
    assert not widgets.batch_run()
    monkeypatch.setenv(widgets.BATCH_ENV, "1")
    monkeypatch.setattr(widgets, "_parent_command", lambda: "")
    assert widgets.batch_run()


@pytest.mark.slow
def test_a_papermill_command_line_run_gets_the_pre_rendered_frames(tmp_path):
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [("params", "out = 'x'"),
                        ("code", "from pathlib import Path\nfrom ssl_lib.widgets import batch_run\n"
                                 "Path(out).write_text(str(batch_run()))")])
    env = {k: v for k, v in os.environ.items() if k != widgets.BATCH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    papermill = Path(sys.executable).parent / "papermill"
    subprocess.run([str(papermill), str(nb), str(tmp_path / "done.ipynb"), "-p", "out", str(tmp_path / "seen.txt"),
                    "-k", "python3", "--no-progress-bar"], env=env, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "seen.txt").read_text() == "True"
    assert json.loads((tmp_path / "done.ipynb").read_text())["cells"]


def test_a_batch_run_gets_a_text_progress_bar_not_a_widget(monkeypatch):
    import tqdm.auto

    from ssl_lib import finetune

    class Widget:  # what tqdm.auto gives in a notebook kernel (a widget bar)
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setattr(tqdm.auto, "tqdm", Widget)
    monkeypatch.setenv(widgets.BATCH_ENV, "0")
    assert isinstance(finetune._progress(3, True, "grid"), Widget)  # a person: the widget
    monkeypatch.setenv(widgets.BATCH_ENV, "1")
    bar = finetune._progress(3, True, "grid")
    assert not isinstance(bar, Widget)  # a batch run: plain text
    bar.close()
    assert finetune._progress(3, False, "grid") is None
