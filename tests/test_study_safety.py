"""The study runner never loses the user's work (issue 16): its own folder, one run at a time, no
mixed profiles, clean interrupts, skipping unchanged steps, parameters checked before any work."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from ssl_lib import study
from ssl_lib.runfolder import MARK, TEMP_NAME, RunFolder, StudyError
from tools.nbtemplate import write_notebook

pytestmark = pytest.mark.slow  # studies, training runs or subprocesses: minutes (make test-fast skips)

REPO = Path(__file__).resolve().parent.parent


def _step_notebook(path: Path, name: str, extra_params: str = "", writes: str = "") -> Path:
    """A tiny step: records each execution in ``<out>/runs.log``; ``writes`` is an output folder it fills."""
    code = (f"from pathlib import Path\nwith open(Path(output_dir, 'runs.log'), 'a') as fh:\n"
            f"    fh.write('{name} ' + profile + chr(10))\n")
    if writes:
        code += f"Path(output_dir, '{writes}').mkdir(exist_ok=True)\nPath(output_dir, '{writes}', 'data.txt').write_text(profile)\n"
    write_notebook(path, [("params", f"profile = 'quick'\noutput_dir = 'x'\n{extra_params}"), ("code", code)])
    return path


@pytest.fixture
def two_steps(tmp_path, monkeypatch):
    """``a`` writes ``a_out/`` and takes ``size``; ``b`` reads it and takes ``n_boot``."""
    a = _step_notebook(tmp_path / "a.ipynb", "a", "size = 1\ndata_root = ''", writes="a_out")
    b = _step_notebook(tmp_path / "b.ipynb", "b", "n_boot = 10")
    monkeypatch.setattr(study, "STEPS", (study.Step("a", str(a), outputs=("a_out",)),
                                         study.Step("b", str(b), after=("a",))))
    return tmp_path / "out"


def _runs(out: Path) -> list[str]:
    return (out / "runs.log").read_text().split("\n")[:-1]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_an_unrelated_folder_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "book").mkdir(parents=True)
    (out / "book" / "thesis.md").write_text("# my thesis\n")
    (out / "notes.txt").write_text("notes")
    (out / "timings.csv").write_text("mine,1\n")
    before = _snapshot(out)
    assert study.main(["study", "--profile", "smoke", "--steps", "preprocess", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "was not made by the study runner" in err and "Traceback" not in err
    assert _snapshot(out) == before and not (out / MARK).exists()
    assert study.main(["book", "--output", str(out)]) == 1 and "not a study output folder" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_bad_parameters_fail_before_anything_is_written(tmp_path, two_steps, monkeypatch):
    out = two_steps
    (tmp_path / "a_file").write_text("x")
    cases = [
        ({"extra": {"data_rot": "/x"}}, r"unknown parameter 'data_rot' \(did you mean 'data_root'\?\)"),
        ({"extra": {"data_root": str(tmp_path / "missing")}}, r"data_root=.*missing: no such file or folder"),
        ({"extra": {"profile": "quick"}}, r"profile is set by --profile"),
        ({"steps": ["bb"]}, r"unknown step 'bb' \(did you mean 'b'\?\)"),
        ({"jobs": 0}, r"--jobs must be at least 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(StudyError, match=message):
            study.run_study(out, "smoke", book=False, **kwargs)
        assert not out.exists()
    with pytest.raises(StudyError, match="is a file, not a folder"):
        study.run_study(tmp_path / "a_file" / "out", "smoke", book=False)
    # several problems: all of them in one message
    with pytest.raises(StudyError, match=r"(?s)not started.*unknown step.*--jobs"):
        study.run_study(out, "smoke", steps=["zz"], jobs=0, book=False)
    # a profile the machine cannot run: refused unless forced
    monkeypatch.setattr(study, "_has_gpu", lambda: False)
    with pytest.raises(StudyError, match=r"profile 'paper' needs a GPU.*--force"):
        study.run_study(out, "paper", book=False, jobs=1)
    monkeypatch.setattr(study, "_total_memory_gb", lambda: 4.0)
    with pytest.raises(StudyError, match=r"about 3 GB of memory per step, 6 GB for 2 steps side by side.*4.0 GB; use fewer --jobs"):
        study.run_study(out, "quick", book=False, jobs=2)
    assert not out.exists()
    assert study.check_request(out, "quick", None, {}, 2, force=True)  # --force goes ahead


def _check_in_child_as_nobody(path: str, conn) -> None:
    os.setuid(65534)
    try:
        RunFolder(path).check_writable()
        conn.send("ok")
    except StudyError as err:
        conn.send(str(err))


def test_an_unwritable_output_folder_is_refused():
    import multiprocessing

    base = Path(tempfile.mkdtemp(prefix="ssl-ct-ro-"))
    try:
        base.chmod(0o755)
        (base / "ro").mkdir(mode=0o555)
        (base / "ro").chmod(0o555)
        target = str(base / "ro" / "out")
        if os.geteuid() == 0:  # root writes anywhere: check as an ordinary user
            parent, child = multiprocessing.get_context("fork").Pipe()
            proc = multiprocessing.get_context("fork").Process(target=_check_in_child_as_nobody, args=(target, child))
            proc.start()
            answer = parent.recv()
            proc.join()
        else:
            with pytest.raises(StudyError) as err:
                RunFolder(target).check_writable()
            answer = str(err.value)
        assert "is not writable" in answer and "ro" in answer
    finally:
        (base / "ro").chmod(0o755)
        import shutil

        shutil.rmtree(base)


def test_parameter_names_are_those_papermill_finds():
    import papermill as pm

    for step in study.STEPS:
        assert set(study.template_parameters(step.template)) == set(pm.inspect_notebook(str(step.template)))


def test_a_second_run_on_a_folder_is_refused_while_the_first_holds_it(tmp_path, two_steps, capsys):
    out = two_steps
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ssl_lib.runfolder import RunFolder\n"
         "with RunFolder(sys.argv[1]).locked('smoke'):\n    print('locked', flush=True)\n    time.sleep(120)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StudyError, match=rf"another study run is using .*pid {holder.pid} on .*started"):
            study.run_study(out, "smoke", book=False)
        assert not (out / "runs.log").exists()
    finally:
        holder.kill()
        holder.wait()
    study.run_study(out, "smoke", book=False)  # the killed holder's lock is gone; its record is reported
    assert f"the run of pid {holder.pid}" in capsys.readouterr().out and _runs(out) == ["a smoke", "b smoke"]


def test_rerun_skips_unchanged_steps_and_reruns_what_a_changed_parameter_touches(two_steps, monkeypatch):
    out = two_steps
    built = []

    def fake_build(paths):  # the real build is tested in test_study.py; here: whether it is called
        built.append(1)
        index = paths.root / "book" / "_build" / "html" / "index.html"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text("book")
        return index

    monkeypatch.setattr(study, "build_book", fake_build)
    study.run_study(out, "smoke")
    notebook = out / "notebooks" / "b.ipynb"
    stamp = notebook.stat().st_mtime_ns
    timings = study.run_study(out, "smoke")  # a finished study: nothing runs, the book is not rebuilt
    assert list(timings["status"]) == ["skipped"] * 3 and len(built) == 1
    assert _runs(out) == ["a smoke", "b smoke"] and notebook.stat().st_mtime_ns == stamp
    # a changed parameter of b (nothing but its notebook to lose): b alone reruns, then the book
    timings = study.run_study(out, "smoke", extra={"n_boot": 20})
    assert dict(zip(timings["step"], timings["status"])) == {"a": "skipped", "b": "ran", "book": "ran"}
    assert _runs(out)[2:] == ["b smoke"]
    # a changed parameter of a, whose outputs b read: refused (it would mix), named, and untouched
    before = _snapshot(out)
    with pytest.raises(StudyError, match=r"(?s)step a: size: 1 -> 2.*--overwrite.*step\(s\) a, b"):
        study.run_study(out, "smoke", extra={"n_boot": 20, "size": 2})
    assert _snapshot(out) == before
    # a deleted output: the step reruns (and what reads it)
    (out / "a_out" / "data.txt").unlink()
    (out / "a_out").rmdir()
    study.run_study(out, "smoke", extra={"n_boot": 20}, book=False)
    assert _runs(out)[3:] == ["a smoke", "b smoke"]


def test_a_profile_mix_is_refused_and_overwrite_removes_only_the_runners_outputs(two_steps, capsys):
    out = two_steps
    study.run_study(out, "smoke", book=False)
    (out / "my_notes.txt").write_text("keep me")  # the user's files in the runner's folder
    (out / "book").mkdir()
    (out / "book" / "thesis.md").write_text("mine")
    with pytest.raises(StudyError, match="holds book, which the study runner did not write"):
        study.run_study(out, "smoke")  # the book is staged only in a folder of the runner's own
    (out / "book" / "thesis.md").unlink()
    (out / "book").rmdir()
    before = _snapshot(out)
    assert study.main(["study", "--profile", "quick", "--steps", "a", "--output", str(out), "--no-book"]) == 1
    err = capsys.readouterr().err
    assert "holds the 'smoke' profile's study and this run asks for 'quick'" in err
    assert "new folder" in err and "--overwrite" in err and "Traceback" not in err
    assert _snapshot(out) == before
    study.run_study(out, "quick", steps=["a"], book=False, overwrite=True)
    assert (out / "a_out" / "data.txt").read_text() == "quick"  # rerun with the new profile
    assert not (out / "notebooks" / "b.ipynb").exists()  # b read smoke outputs: removed, not rerun
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert json.loads((out / MARK / "manifest.json").read_text())["profile"] == "quick"
    # the manifest keeps a given source as a salted fingerprint, never its path
    src = out.parent / "my_private_data"
    src.mkdir()
    study.run_study(out, "quick", steps=["a"], extra={"data_root": str(src)}, book=False, overwrite=True)
    assert "my_private_data" not in (out / MARK / "manifest.json").read_text()
    with pytest.raises(StudyError, match="data_root: a given path -> ''"):
        study.run_study(out, "quick", steps=["a"], extra={"data_root": ""}, book=False)


# ---------------------------------------------------------------------------------------------
# Interrupts: Ctrl-C and SIGKILL during a pre-training-like step and a fine-tuning grid
# ---------------------------------------------------------------------------------------------
PRETRAIN_LIKE = """import os, time
from pathlib import Path
ck = Path(output_dir, 'pretrain', 'x', 'checkpoints')
ck.mkdir(parents=True, exist_ok=True)
for epoch in range(1, 4):
    done = ck / f'epoch_{epoch:04d}.ckpt'
    if done.exists():
        continue
    tmp = ck / f'.{done.name}.tmp-{os.getpid()}'
    tmp.write_text('half written')
    with open(Path(output_dir, 'trained.log'), 'a') as fh:
        fh.write(f'{epoch}' + chr(10))
    while epoch == 2 and Path(output_dir).parent.joinpath('hold').exists():
        time.sleep(0.1)
    os.replace(tmp, done)"""

GRID = """from ssl_lib import finetune as ft
import tests.interrupt_steps as its
ft._grid_group = its.sleepy_group
ft._run_parallel([[{'g': 0}], [{'g': 1}]], output_dir, ft.get_profile('smoke'), 'cpu', 2, lambda job, row: None, ft.FeatureCache())"""


@pytest.fixture
def interruptible(tmp_path, monkeypatch):
    pre, grid = tmp_path / "pre.ipynb", tmp_path / "grid.ipynb"
    write_notebook(pre, [("params", "profile = 'quick'\noutput_dir = 'x'"), ("code", PRETRAIN_LIKE)])
    write_notebook(grid, [("params", "profile = 'quick'\noutput_dir = 'x'"), ("code", GRID)])
    steps = (study.Step("pre", str(pre), outputs=("pretrain/x",)), study.Step("grid", str(grid), outputs=("grid",)))
    monkeypatch.setattr(study, "STEPS", steps)
    out = tmp_path / "out"
    driver = (f"import sys\nfrom ssl_lib import study\nstudy.STEPS = (study.Step('pre', {str(pre)!r}, outputs=('pretrain/x',)),"
              f" study.Step('grid', {str(grid)!r}, outputs=('grid',)))\n"
              f"sys.exit(study.main(['study', '--profile', 'smoke', '--output', {str(out)!r}, '--no-book', '--jobs', '2']))")
    return out, driver


def _wait_for(condition, what: str, limit: float = 240.0):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _interrupt_and_resume(out: Path, driver: str, sig: int, start_ignoring_sigint: bool = False):
    hold = out.parent / "hold"  # the steps wait while it exists
    hold.write_text("")
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if start_ignoring_sigint else None
    runner = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                              preexec_fn=ignore)
    ck = out / "pretrain" / "x" / "checkpoints"
    _wait_for(lambda: len(list((out / "grid").glob("worker-*"))) == 2 and list(ck.glob(".epoch_0002.ckpt.tmp-*")),
              "both steps to be mid-way")
    tree = psutil.Process(runner.pid).children(recursive=True)
    assert len(tree) >= 6  # 2 step processes, 2 kernels, 2 grid workers
    runner.send_signal(sig)
    _, err = runner.communicate(timeout=120)
    _wait_for(lambda: all(_gone(p) for p in tree), "every child of the runner to end", 60)
    kernels = RunFolder(out)
    kernels.load()
    left = [p.name for p in out.rglob("*") if TEMP_NAME.match(p.name)] + \
        [f"kernel:{p.name}" for p in kernels.system_tmp.rglob("*.json")]
    # the next run removes what was left, and resumes
    hold.unlink()
    timings = study.run_study(out, "smoke", book=False, jobs=2)
    assert set(timings["status"]) == {"ran"}
    assert (out / "trained.log").read_text().split() == ["1", "2", "2", "3"]  # epoch 1 was not trained again
    assert not [p for p in out.rglob("*") if TEMP_NAME.match(p.name)]
    assert not kernels.system_tmp.exists() and not list((out / MARK / "tmp").rglob("*.json"))
    assert study.run_study(out, "smoke", book=False, jobs=2)["status"].eq("skipped").all()
    return runner.returncode, err, left


def test_ctrl_c_stops_every_child_and_says_how_to_resume(interruptible):
    out, driver = interruptible
    rc, err, left = _interrupt_and_resume(out, driver, signal.SIGINT)
    assert rc == 130 and "Traceback" not in err and left == []  # the runner tidied up at once
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "Run the same command again to resume" in lines[0] and "stopped" in lines[0]


def test_ctrl_c_stops_a_runner_started_with_sigint_ignored(interruptible):
    """A shell's background job (``make study &`` in a script, ``nohup ... &``) starts with SIGINT
    ignored; the runner still stops on it, as on Ctrl-C."""
    out, driver = interruptible
    rc, err, left = _interrupt_and_resume(out, driver, signal.SIGINT, start_ignoring_sigint=True)
    assert rc == 130 and "Traceback" not in err and left == []


def test_sigkill_leaves_no_process_and_the_next_run_cleans_up_and_resumes(interruptible):
    out, driver = interruptible
    rc, _, left = _interrupt_and_resume(out, driver, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert ".epoch_0002.ckpt.tmp-" in " ".join(left) and any(n.startswith("kernel:") for n in left)  # (removed later)


def test_sigterm_stops_the_study_like_ctrl_c(tmp_path):
    nb = tmp_path / "wait.ipynb"
    write_notebook(nb, [("params", "profile = 'quick'\noutput_dir = 'x'"),
                        ("code", "import os, time\nfrom pathlib import Path\n"
                                 "Path(output_dir, f'kernel-{os.getpid()}.pid').touch()\ntime.sleep(300)")])
    out = tmp_path / "out"
    driver = (f"import sys\nfrom ssl_lib import study\nstudy.STEPS = (study.Step('wait', {str(nb)!r}),)\n"
              f"sys.exit(study.main(['study', '--profile', 'smoke', '--output', {str(out)!r}, '--no-book']))")
    runner = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    _wait_for(lambda: list(out.glob("kernel-*.pid")), "the step to run")
    tree = psutil.Process(runner.pid).children(recursive=True)
    assert len(tree) >= 2  # the step's process and its kernel
    runner.terminate()
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert "interrupted (SIGTERM): 0 of 1 step(s) finished; stopped wait. Run the same command again" in err
    _wait_for(lambda: all(_gone(p) for p in tree), "every child of the runner to end", 60)


def test_grid_workers_die_with_a_killed_parent(tmp_path):
    """The real fine-tuning pool (its worker initializer) in a process that is then SIGKILLed."""
    out = tmp_path / "grid_out"
    out.mkdir()
    (tmp_path / "hold").write_text("")
    code = (f"import sys\nfrom ssl_lib import finetune as ft\nimport tests.interrupt_steps as its\n"
            f"ft._grid_group = its.sleepy_group\n"
            f"ft._run_parallel([[{{}}], [{{}}]], {str(out)!r}, ft.get_profile('smoke'), 'cpu', 2, lambda j, r: None, ft.FeatureCache())")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(lambda: len(list((out / "grid").glob("worker-*"))) == 2, "two workers")
        workers = [psutil.Process(int(p.name.split("-")[1])) for p in (out / "grid").glob("worker-*")]
        parent.kill()
        parent.wait()
        _wait_for(lambda: all(_gone(w) for w in workers), "the workers to end", 60)
    finally:
        parent.kill()
        (tmp_path / "hold").unlink()  # lets workers that outlived the test end


def test_the_tasks_parameter_is_read_and_its_sources_checked_before_work(tmp_path):
    """``tasks`` holds JSON with data paths inside: it is parsed as the study will parse it, each
    task's source must exist, and a valid value with existing sources is accepted (not taken for
    one missing path because it holds a slash)."""
    src = tmp_path / "liver"
    src.mkdir()
    out = tmp_path / "out"
    good = json.dumps(["covid", {"name": "liver", "reader": "folder", "source": str(src)}])
    assert study.check_request(out, "smoke", None, {"tasks": good}, 1)
    missing = json.dumps([{"name": "liver", "reader": "folder", "source": str(tmp_path / "gone")}])
    with pytest.raises(StudyError, match=r"task 'liver': .*gone: no such file or folder"):
        study.check_request(out, "smoke", None, {"tasks": missing}, 1)
    with pytest.raises(StudyError, match=r"--param tasks: .*JSON list"):
        study.check_request(out, "smoke", None, {"tasks": "[oops"}, 1)
    assert not out.exists()
