"""The study runner: papermill execution, timings, failures, and the offline book build."""

import re

import nbformat
import pandas as pd
import pytest

from ssl_lib import study
from ssl_lib.paths import StudyPaths
from tools.nbtemplate import write_notebook


@pytest.fixture
def tiny_steps(tmp_path, monkeypatch):
    good = tmp_path / "01_good.ipynb"
    write_notebook(good, [
        ("md", "# A step\n\nSome prose with math $a^2 + b^2$."),
        ("params", "profile = 'quick'\noutput_dir = 'x'\ndevices = 1"),
        ("code", "from pathlib import Path\nPath(output_dir, 'seen.txt').write_text(f'{profile} {devices}')\nprint('hello')"),
        ("code", "import ipywidgets\nipywidgets.IntSlider(value=3)"),
        ("code", "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);"),
    ])
    bad = tmp_path / "02_bad.ipynb"
    write_notebook(bad, [("params", "profile = 'quick'\noutput_dir = 'x'"), ("code", "raise ValueError('broken input')")])
    monkeypatch.setattr(study, "STEPS", (study.Step("good", str(good)),))
    return good, bad


def test_run_study_executes_and_times_steps(tmp_path, tiny_steps, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as on a headless server: figures must still be kept
    out = tmp_path / "out"
    timings = study.run_study(out, "smoke", extra={"devices": 2, "not_a_param": 5}, book=False)
    assert (out / "seen.txt").read_text() == "smoke 2"  # parameters reached the notebook
    executed = nbformat.read(StudyPaths(out).notebooks / "01_good.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
    saved = pd.read_csv(StudyPaths(out).timings)
    assert list(saved["step"]) == ["good"] and list(timings["step"]) == ["good"]
    assert (saved["seconds"] > 0).all()


def test_failing_step_names_step_and_notebook(tmp_path, tiny_steps, monkeypatch):
    _, bad = tiny_steps
    monkeypatch.setattr(study, "STEPS", (study.Step("bad", str(bad)),))
    with pytest.raises(study.StudyError, match=r"step 'bad' failed.*broken input") as err:
        study.run_study(tmp_path / "out", "smoke", book=False)
    assert "02_bad.ipynb" in str(err.value)
    with pytest.raises(study.StudyError, match="unknown step"):
        study.run_study(tmp_path / "out", "smoke", steps=["nope"], book=False)


def test_cli_parses_params():
    assert study._parse_extra(["devices=4", "lidc_root=/data/x", "seeds=[0, 1]"]) == {
        "devices": 4, "lidc_root": "/data/x", "seeds": [0, 1]}
    with pytest.raises(SystemExit):
        study._parse_extra(["novalue"])


def test_book_builds_offline_with_executed_notebook(tmp_path, tiny_steps, monkeypatch):
    """The staged book builds to HTML; math is served from _static (no CDN); timings are on the reproduce page."""
    good, _ = tiny_steps
    (tmp_path / "toc").mkdir()
    toc = "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/01_good\n  - file: book/reproduce\n"
    (tmp_path / "toc" / "_toc.yml").write_text(toc)
    monkeypatch.setattr(study, "BOOK_FILES", ("_config.yml", "book"))
    out = tmp_path / "out"
    study.run_study(out, "smoke", book=False)
    pd.DataFrame([{"step": "good", "seconds": 3.0, "profile": "smoke", "machine": "test"}]).to_csv(
        StudyPaths(out).timings, index=False)
    stage = study.stage_book(StudyPaths(out))
    (stage / "_toc.yml").write_text(toc)
    monkeypatch.setattr(study, "stage_book", lambda paths: stage)
    index = study.build_book(StudyPaths(out))
    html = index.parent
    page = (html / "notebooks" / "01_good.html").read_text()
    assert "hello" in page  # the executed output is in the book
    assert "interactive widget" in page and "widget-view" not in page
    scripts = " ".join(re.findall(r'<script[^>]*src="([^"]+)"', page))
    assert "mathjax" in scripts.lower() and "cdn" not in scripts.lower() and "https://" not in scripts
    assert "Timing of the last run" in (html / "book" / "reproduce.html").read_text()


def test_cli_pretrain_subcommand(tmp_path, capsys):
    """``python -m ssl_lib pretrain`` (the cluster entry point) trains and exports encoders."""
    import numpy as np

    from ssl_lib.data.store import SliceRecord, write_store

    rng = np.random.default_rng(0)
    records = (SliceRecord((rng.random((32, 32)) * 255).astype(np.uint8), f"p{i // 4}", -1, "train", str(i))
               for i in range(24))
    write_store(records, StudyPaths(tmp_path).store("lidc"), size=32, name="lidc")
    assert study.main(["pretrain", "byol", "--output", str(tmp_path), "--profile", "smoke", "--epochs", "1",
                       "--num-workers", "0"]) == 0
    assert "encoders in" in capsys.readouterr().out
    assert list((StudyPaths(tmp_path).pretrain("byol") / "encoders").glob("epoch_*.pt"))
