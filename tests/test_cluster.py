"""The grid as submitit jobs: real subprocess jobs on submitit's local executor, at smoke size."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import ssl_lib.finetune as ft
from ssl_lib import cluster
from test_finetune import PROFILE, export_encoders, make_stores

PROF = ft.get_profile(PROFILE, linear_epochs=2, full_epochs=1)
GRID = dict(tasks=["covid", "brain"], inits=["random", "byol"], fractions=[1.0, 0.5], seeds=[0], profile=PROF,
            progress=False, stop_f1=None)


class Counting(cluster.GridExecutor):
    """Records the runs handed to submitit; ``kill_first``: SIGKILL the first job's process once it runs."""

    def __init__(self, *args, kill_first=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted, self.kill_first = [], kill_first

    def _submitit(self, folder):
        ex = super()._submitit(folder)
        submit = ex.map_array

        def map_array(fn, *iterables):
            jobs = submit(fn, *iterables)
            self.submitted += [(j["task"], j["init"], j["fraction"]) for unit in iterables[3] for j in unit]
            if self.kill_first:
                self.kill_first = False
                _kill_task_of(int(jobs[0].job_id))
            return jobs

        ex.map_array = map_array
        return ex


def _kill_task_of(controller: int, timeout: float = 60.0) -> None:
    """SIGKILL the task process that submitit's local controller ``controller`` starts (its child)."""
    end = time.time() + timeout
    while time.time() < end:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == controller:  # ppid
                os.kill(int(stat.parent.name), signal.SIGKILL)
                return
        time.sleep(0.02)
    raise AssertionError("the job's task process never started")


def _local(**kw):
    return dict(kind="submitit-local", gpus_per_job=0, cpus_per_job=1, time_min=10, array_parallelism=2,
                per_job="group", poll_s=0.2) | kw


def _same_rows(a: pd.DataFrame, b: pd.DataFrame):
    key = ft.RUN_KEY
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    for col in ("accuracy", "auc", "f1", "train_size", "best_epoch", "val_f1"):
        np.testing.assert_allclose(a[col].astype(float), b[col].astype(float), atol=1e-6, err_msg=col)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the job's process in /proc (Linux)")
def test_grid_as_local_submitit_jobs_matches_serial_resumes_and_merges_once(tmp_path, monkeypatch):
    import shutil

    make_stores(tmp_path / "a")
    export_encoders(tmp_path / "a", "byol", [3])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # jobs import ssl_lib from here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs' thread count (cpus_per_job=1), so the arithmetic is the same
    try:
        serial = ft.run_grid(tmp_path / "a", workers=1, **GRID)
    finally:
        torch.set_num_threads(threads)
    assert len(serial) == 8

    # 1. one job is killed while it runs: the others' rows are merged, the failure names its log
    killer = Counting(**_local(retries=0), kill_first=True)
    with pytest.raises(cluster.GridJobError) as err:
        ft.run_grid(tmp_path / "b", executor=killer, **GRID)
    message = str(err.value)
    assert "finetune/jobs/logs/" in message and str(tmp_path) not in message  # relative log, no source paths
    killed = {(t, i, f) for t, i, f in killer.submitted[:2]}  # the first group job (fractions 1.0 and 0.5)
    partial = ft.read_results(tmp_path / "b", PROF.name)
    assert len(partial) == 6 and not partial.duplicated(ft.RUN_KEY).any()
    assert not {(r.task, r.init, r.fraction) for r in partial.itertuples()} & killed

    # 2. the next call reruns only the killed job's runs; rows equal the serial grid's
    again = Counting(**_local())
    rows = ft.run_grid(tmp_path / "b", executor=again, **GRID)
    assert set(again.submitted) == killed and len(again.submitted) == 2
    _same_rows(serial, rows)
    assert ft.run_file(tmp_path / "b", "models", "brain", "byol", 0.5, 0, 0).is_file()

    # 3. nothing left: no job is submitted, nothing is merged twice
    idle = Counting(**_local())
    assert len(ft.run_grid(tmp_path / "b", executor=idle, **GRID)) == 8 and idle.submitted == []
    assert not any((ft.StudyPaths(tmp_path / "b").finetune / "jobs" / "rows").rglob("*.csv"))


def test_row_left_by_a_job_is_merged_once_without_rerunning(tmp_path):
    make_stores(tmp_path)
    grid = GRID | dict(tasks=["covid"], inits=["random"], fractions=[1.0])
    row = ft.run_grid(tmp_path, **grid).iloc[0].to_dict()
    results = ft.StudyPaths(tmp_path).results
    results.unlink()
    job = {"task": "covid", "init": "random", "fraction": 1.0, "seed": 0,
           "key": ("covid", "random", 1.0, 0, -1, PROF.name)}
    cluster.write_row(tmp_path, job, row)  # as a job whose parent had stopped leaves it
    ex = Counting(**_local())
    rows = ft.run_grid(tmp_path, executor=ex, **grid)
    assert ex.submitted == [] and len(rows) == 1 and rows["accuracy"].iloc[0] == pytest.approx(row["accuracy"])
    path = cluster.write_row(tmp_path, job, row)  # the same run once more: not merged twice
    assert cluster.merge_rows(results, [(job, path)]) == 0 and not path.exists()
    assert len(ft.read_results(tmp_path)) == 1


def test_executor_options_are_checked():
    assert cluster.make_executor("local") is None
    ex = cluster.make_executor("slurm", partition="gpu", gpus_per_job=2, time_min=90, array_parallelism=8)
    assert (ex.kind, ex.partition, ex.gpus_per_job, ex.time_min, ex.array_parallelism) == ("slurm", "gpu", 2, 90, 8)
    with pytest.raises(ValueError, match="unknown executor"):
        cluster.make_executor("pbs")
    with pytest.raises(ValueError, match="time_min"):
        cluster.GridExecutor("slurm", time_min=0)
    with pytest.raises(ValueError, match="per_job"):
        cluster.GridExecutor("slurm", per_job="task")
    with pytest.raises(ValueError, match="worker processes"):
        cluster.GridExecutor("local")


def test_slurm_job_array_script(tmp_path, monkeypatch):
    """On SLURM the runs go out as one sbatch job array with the runner's options (fake srun/sbatch here)."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ex = cluster.GridExecutor("slurm", partition="gpu", gpus_per_job=1, cpus_per_job=8, time_min=240,
                              array_parallelism=2, slurm_extra={"slurm_account": "lab"})
    units = [[{"task": "covid", "init": "byol", "fraction": f, "seed": 0, "pretrain_epoch": None,
               "key": ("covid", "byol", f, 0, -1, "paper")}] for f in (1.0, 0.75, 0.5)]
    jobs = ex._submitit(tmp_path / "logs").map_array(cluster.run_jobs, *[[x] * 3 for x in ("out", PROF, "cuda")],
                                                      units, [8] * 3)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--array=0-2%2", "--partition=gpu", "--time=240", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--account=lab"):
        assert f"#SBATCH {line}" in script, line


def test_runner_cluster_options_become_notebook_parameters(monkeypatch, tmp_path):
    from ssl_lib import study

    seen = {}
    monkeypatch.setattr(study, "run_study", lambda out, profile, steps, extra, **kw: seen.update(extra))
    assert study.main(["study", "--output", str(tmp_path), "--executor", "slurm", "--partition", "gpu",
                       "--gpus-per-job", "2", "--time-limit", "90", "--array-parallelism", "16"]) == 0
    assert seen == {"executor": "slurm", "executor_options": {"partition": "gpu", "gpus_per_job": 2, "time_min": 90,
                                                              "array_parallelism": 16}}
    ex = cluster.make_executor(seen["executor"], **seen["executor_options"])
    assert (ex.partition, ex.gpus_per_job, ex.time_min, ex.array_parallelism) == ("gpu", 2, 90, 16)
    with pytest.raises(SystemExit, match="--partition needs --executor slurm"):
        study.main(["study", "--output", str(tmp_path), "--partition", "gpu"])
    with pytest.raises(SystemExit, match="time_min"):
        study.main(["study", "--output", str(tmp_path), "--executor", "slurm", "--time-limit", "0"])
    import papermill as pm

    for nb in ("06_finetune", "07_reduction"):  # the steps that run the grid take both parameters
        params = pm.inspect_notebook(str(Path(study.REPO) / "notebooks" / f"{nb}.ipynb"))
        assert params["executor"]["default"] == '"local"' and params["executor_options"]["default"] == "None"
