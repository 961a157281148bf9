"""The study runner: papermill execution, timings, failures, and the offline book build."""

import html as html_text
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


@pytest.mark.slow
def test_run_study_executes_and_times_steps(tmp_path, tiny_steps, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as on a headless server: figures must still be kept
    out = tmp_path / "out"
    timings = study.run_study(out, "smoke", extra={"devices": 2}, book=False)
    assert (out / "seen.txt").read_text() == "smoke 2"  # parameters reached the notebook
    executed = nbformat.read(StudyPaths(out).notebooks / "01_good.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
    saved = pd.read_csv(StudyPaths(out).timings)
    assert list(saved["step"]) == ["good"] and list(timings["step"]) == ["good"] and list(timings["status"]) == ["ran"]
    assert (saved["seconds"] > 0).all()


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert "widget-view" not in page and "IntSlider(value=3)" not in page  # live widgets dropped from the static page
    text = html_text.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))  # as read: Sphinx splits literals
    assert str(out) not in page and '"<output folder>"' in text  # no local path: a placeholder instead
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


def _timed_notebook(path, name, sleep):
    write_notebook(path, [
        ("params", "profile = 'quick'\noutput_dir = 'x'"),
        ("code", f"import os, time, json\nfrom pathlib import Path\nstart = time.time()\ntime.sleep({sleep})\n"
                 f"Path(output_dir, '{name}.json').write_text(json.dumps({{'start': start, 'end': time.time(), "
                 f"'threads': os.environ.get('OMP_NUM_THREADS')}}))"),
    ])
    return path


@pytest.mark.slow
def test_steps_run_side_by_side_once_their_inputs_are_done(tmp_path, monkeypatch):
    import json
    import os

    a, b, c = (_timed_notebook(tmp_path / f"{n}.ipynb", n, 4) for n in "abc")
    monkeypatch.setattr(study, "STEPS", (study.Step("a", str(a), share=0.5), study.Step("b", str(b), share=0.5),
                                         study.Step("c", str(c), after=("a", "b"))))
    out = tmp_path / "out"
    timings = study.run_study(out, "smoke", book=False, jobs=2)
    seen = {n: json.loads((out / f"{n}.json").read_text()) for n in "abc"}
    assert seen["a"]["start"] < seen["b"]["end"] and seen["b"]["start"] < seen["a"]["end"]  # a and b overlapped
    assert seen["c"]["start"] >= max(seen["a"]["end"], seen["b"]["end"])  # c waited for both
    cpus = os.cpu_count()
    assert seen["a"]["threads"] == seen["b"]["threads"] == str(max(1, cpus // 2))  # their fixed share
    assert seen["c"]["threads"] == str(cpus)  # share 1: all of them
    saved = pd.read_csv(StudyPaths(out).timings)
    assert set(saved["step"]) == {"a", "b", "c"} and {"start_s", "threads"} <= set(saved.columns)
    wall = study.wall_seconds(saved)
    assert wall < saved["seconds"].sum() and wall == pytest.approx((saved["start_s"] + saved["seconds"]).max())
    assert list(timings["step"])[-1] == "c"
    assert list(saved.set_index("step").loc[["a", "b", "c"], "threads"]) == [max(1, cpus // 2)] * 2 + [cpus]
    # one at a time: the steps do not overlap, and each keeps its thread count (the results
    # must not depend on scheduling)
    monkeypatch.setattr(study, "STEPS", (study.Step("a", str(a), share=0.5), study.Step("b", str(b))))
    study.run_study(tmp_path / "serial", "smoke", book=False, jobs=1)
    seen = {n: json.loads((tmp_path / "serial" / f"{n}.json").read_text()) for n in "ab"}
    assert seen["b"]["start"] >= seen["a"]["end"]
    assert seen["a"]["threads"] == str(max(1, cpus // 2)) and seen["b"]["threads"] == str(cpus)


@pytest.mark.slow
def test_a_failing_step_ends_the_steps_running_beside_it(tmp_path, tiny_steps, monkeypatch):
    import time

    _, bad = tiny_steps
    slow = _timed_notebook(tmp_path / "slow.ipynb", "slow", 120)
    monkeypatch.setattr(study, "STEPS", (study.Step("slow", str(slow)), study.Step("bad", str(bad))))
    start = time.perf_counter()
    with pytest.raises(study.StudyError, match=r"step 'bad' failed.*broken input"):
        study.run_study(tmp_path / "out", "smoke", book=False, jobs=2)
    assert time.perf_counter() - start < 100 and not (tmp_path / "out" / "slow.json").exists()


def test_reproduce_page_gets_the_wall_clock_table(tmp_path):
    page = tmp_path / "reproduce.md"
    page.write_text("# Reproduce\n")
    timings = pd.DataFrame([
        {"step": "a", "start_s": 0.0, "seconds": 60.0, "threads": 1, "profile": "quick", "machine": "m"},
        {"step": "b", "start_s": 0.0, "seconds": 120.0, "threads": 1, "profile": "quick", "machine": "m"},
        {"step": "c", "start_s": 120.0, "seconds": 60.0, "threads": 2, "profile": "quick", "machine": "m"},
        {"step": "book", "start_s": 180.0, "seconds": 0.0, "threads": 2, "profile": "quick", "machine": "m"}])
    study._append_timings(page, timings)
    text = page.read_text()
    assert "**3.0 minutes**" in text  # the wall clock, not the 4.0 minutes of step time
    assert "| b | 0.00 | 2.00 | 1 | 66.7 % |" in text and "| c | 2.00 | 1.00 | 2 | 33.3 % |" in text
    assert "| book | 3.00 | (this build) |" in text  # the page is written before the book is built


@pytest.mark.slow
def test_kernels_of_the_runner_know_they_run_in_batch(tmp_path, monkeypatch):
    nb = tmp_path / "w.ipynb"
    write_notebook(nb, [("params", "profile = 'quick'\noutput_dir = 'x'"),
                        ("code", "from pathlib import Path\nfrom ssl_lib.widgets import batch_run\n"
                                 "Path(output_dir, 'batch.txt').write_text(str(batch_run()))")])
    monkeypatch.setattr(study, "STEPS", (study.Step("w", str(nb)),))
    monkeypatch.delenv("SSL_CT_BATCH", raising=False)
    study.run_study(tmp_path / "out", "smoke", book=False, jobs=1)
    assert (tmp_path / "out" / "batch.txt").read_text() == "True"


@pytest.mark.slow
def test_the_largest_ready_step_starts_first(tmp_path, monkeypatch):
    import json

    small, large = (_timed_notebook(tmp_path / f"{n}.ipynb", n, 0) for n in ("small", "large"))
    monkeypatch.setattr(study, "STEPS", (study.Step("small", str(small), cost=1.0),
                                         study.Step("large", str(large), cost=5.0)))
    study.run_study(tmp_path / "out", "smoke", book=False, jobs=1)
    seen = {n: json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in ("small", "large")}
    assert seen["large"]["end"] <= seen["small"]["start"]  # listed second, started first


def test_each_step_has_a_fixed_thread_count():
    """Pre-trainings get half the cores, the other steps all, on every machine size and schedule."""
    for cpus in (1, 2, 16):
        for s in study.STEPS:
            assert study.step_threads(s, cpus) == (max(1, cpus // 2) if s.name.startswith("pretrain") else cpus)


FLAKY_KERNEL = """
import pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text() or 0) + 1 if count.exists() else 1
count.write_text(str(n))
if n <= int(sys.argv[2]):
    sys.exit(1)  # as a kernel whose port was taken: it ends before it answers
from ipykernel.kernelapp import launch_new_instance
sys.argv = [sys.argv[0], *sys.argv[3:]]
launch_new_instance()
"""


@pytest.mark.slow
@pytest.mark.parametrize("failures, expected", [(1, 0), (study.KERNEL_START_TRIES, 1)])
def test_a_kernel_that_ends_before_it_starts_is_started_again(tmp_path, monkeypatch, failures, expected):
    """A step's kernel that ends before answering (in CI: its TCP port taken by a step started
    beside it) is started again, up to KERNEL_START_TRIES times; then the step fails with the error."""
    import json
    import sys

    launcher, count = tmp_path / "flaky_kernel.py", tmp_path / "launches"
    launcher.write_text(FLAKY_KERNEL)
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(launcher), str(count), str(failures), "-f", "{connection_file}"],
        "display_name": "flaky", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb, out, err = tmp_path / "step.ipynb", tmp_path / "out.ipynb", tmp_path / "error.json"
    write_notebook(nb, [("params", "output_dir = 'x'"), ("code", "print('ran')")])
    assert study._execute(str(nb), str(out), str(err), {}, False) == expected
    if expected == 0:
        assert int(count.read_text()) == 2 and "ran" in out.read_text() and not err.exists()
    else:
        assert int(count.read_text()) == study.KERNEL_START_TRIES
        assert study.KERNEL_START_FAILED in json.loads(err.read_text())["error"]
