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


@pytest.mark.slow
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
    ex = cluster.make_executor("slurm", partition="gpu", gpus_per_job=1, time_min=90, array_parallelism=8)
    assert (ex.kind, ex.partition, ex.gpus_per_job, ex.time_min, ex.array_parallelism) == ("slurm", "gpu", 1, 90, 8)
    for kind in ("slurm", "submitit-local"):  # a run trains on one GPU: more per job would sit idle
        with pytest.raises(ValueError, match=r"gpus_per_job=2: a fine-tuning run trains on one GPU.*gpus_per_job=1"):
            cluster.make_executor(kind, gpus_per_job=2)
    with pytest.raises(ValueError, match="unknown executor"):
        cluster.make_executor("pbs")
    with pytest.raises(ValueError, match="time_min"):
        cluster.GridExecutor("slurm", time_min=0)
    with pytest.raises(ValueError, match="per_job"):
        cluster.GridExecutor("slurm", per_job="task")
    with pytest.raises(ValueError, match="worker processes"):
        cluster.GridExecutor("local")


class FakeJob:
    """A local job that ends after ``polls`` checks, writing its runs' rows then (as a real job would)."""

    def __init__(self, output_dir, unit, gpus, polls, log):
        self.output_dir, self.unit, self.gpus, self.polls, self.log = output_dir, unit, gpus, polls, log
        self.job_id, self.ended = str(len(log)), False

    def done(self):
        if not self.ended:
            self.polls -= 1
            if self.polls <= 0:
                self.ended = True
                for j in self.unit:
                    cluster.write_row(self.output_dir, j, {**dict(zip(ft.RUN_KEY, j["key"])), "accuracy": 0.5})
        return self.ended

    def cancel(self, check=False):
        self.ended = True


class FakeLocal:
    """submitit's LocalExecutor as ``GridExecutor`` drives it: parameters, then one ``map_array`` per job."""

    def __init__(self):
        self.parameters, self.jobs = {}, []

    def update_parameters(self, **kwargs):
        self.parameters.update(kwargs)

    def map_array(self, fn, outs, profs, devices, units, threads):
        running = [j for j in self.jobs if not j.ended]
        n, gpus = self.parameters["gpus_per_node"], tuple(self.parameters["visible_gpus"])
        assert n == len(gpus)  # CUDA_VISIBLE_DEVICES = exactly these
        job = FakeJob(outs[0], units[0], gpus, polls=1 + len(self.jobs) % 3, log=self.jobs)
        job.running_then = [r.gpus for r in running]
        self.jobs.append(job)
        return [job]


def _units(n):
    return [[{"task": "covid", "init": "byol", "fraction": 1.0, "seed": s, "pretrain_epoch": None,
              "key": ("covid", "byol", 1.0, s, -1, "smoke")}] for s in range(n)]


def test_local_jobs_get_one_gpu_each_and_never_share_it(tmp_path, monkeypatch):
    """submitit-local on a machine with 3 GPUs (a fake count): 7 runs, never more than 3 jobs at once, each with
    its own CUDA_VISIBLE_DEVICES (submitit alone would give every job GPU 0); on the CPU the jobs see none."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeLocal()

    class Local(cluster.GridExecutor):
        def _submitit(self, folder):
            return fake

    done = []
    ex = Local("submitit-local", gpus_per_job=1, array_parallelism=64, poll_s=0)
    ex.run(_units(7), tmp_path, PROF, "cuda", done.append)
    assert len(done) == 7 and len(ft.read_results(tmp_path)) == 7
    assert [len(j.gpus) for j in fake.jobs] == [1] * 7 and {j.gpus for j in fake.jobs} == {(0,), (1,), (2,)}
    for job in fake.jobs:  # when a job started, the jobs still running held the other GPUs
        assert len(job.running_then) < 3 and job.gpus not in job.running_then
    assert max(len(j.running_then) for j in fake.jobs) == 2  # all three GPUs were busy at some point

    # array_parallelism caps it further; CUDA_VISIBLE_DEVICES of this process maps the indices
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,9")
    assert cluster.visible_gpus() == [5, 7, 9]
    fake.jobs.clear()
    Local("submitit-local", gpus_per_job=1, array_parallelism=2, poll_s=0).run(_units(5), tmp_path / "b", PROF,
                                                                               "cuda:0", done.append)
    assert {j.gpus for j in fake.jobs} <= {(5,), (7,)} and all(len(j.running_then) < 2 for j in fake.jobs)

    # on the CPU: no GPU for any job
    fake.jobs.clear()
    Local("submitit-local", gpus_per_job=1, array_parallelism=2, poll_s=0).run(_units(3), tmp_path / "c", PROF,
                                                                               "cpu", done.append)
    assert [j.gpus for j in fake.jobs] == [()] * 3


def test_local_gpu_jobs_need_gpus_and_indices(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ex = cluster.GridExecutor("submitit-local", gpus_per_job=1, poll_s=0)
    with pytest.raises(ValueError, match="this machine shows no GPU"):
        ex.run(_units(1), tmp_path, PROF, "cuda", lambda j: None)
    with pytest.raises(ValueError, match="needs a GPU per job, but gpus_per_job=0"):
        cluster.GridExecutor("slurm", gpus_per_job=0).run(_units(1), tmp_path, PROF, "cuda", lambda j: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c,GPU-11aa")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES names GPU 'GPU-8f2c' by more than an index"):
        cluster.visible_gpus()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="a real local job (Linux)")
def test_a_local_job_sees_only_its_gpu(tmp_path):
    """The real submitit local executor, set up as GridExecutor does it: the job's CUDA_VISIBLE_DEVICES is its GPU."""
    ex = cluster.GridExecutor("submitit-local", time_min=5)
    sub = ex._submitit(tmp_path)
    seen = []
    for gpus in ((1,), ()):
        ex._use_gpus(sub, gpus)
        seen.append(sub.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result())
    assert seen == ["1", ""]


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
                       "--gpus-per-job", "1", "--time-limit", "90", "--array-parallelism", "16"]) == 0
    assert seen == {"executor": "slurm", "executor_options": {"partition": "gpu", "gpus_per_job": 1, "time_min": 90,
                                                              "array_parallelism": 16}}
    ex = cluster.make_executor(seen["executor"], **seen["executor_options"])
    assert (ex.partition, ex.gpus_per_job, ex.time_min, ex.array_parallelism) == ("gpu", 1, 90, 16)
    with pytest.raises(SystemExit, match="gpus_per_job=2: a fine-tuning run trains on one GPU"):
        study.main(["study", "--output", str(tmp_path), "--executor", "submitit-local", "--gpus-per-job", "2"])
    with pytest.raises(SystemExit, match="--partition needs --executor slurm"):
        study.main(["study", "--output", str(tmp_path), "--partition", "gpu"])
    with pytest.raises(SystemExit, match="time_min"):
        study.main(["study", "--output", str(tmp_path), "--executor", "slurm", "--time-limit", "0"])
    import papermill as pm

    for nb in ("06_finetune", "07_reduction"):  # the steps that run the grid take both parameters
        params = pm.inspect_notebook(str(Path(study.REPO) / "notebooks" / f"{nb}.ipynb"))
        assert params["executor"]["default"] == '"local"' and params["executor_options"]["default"] == "None"
