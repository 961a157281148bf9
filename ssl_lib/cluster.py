"""The fine-tuning grid as independent cluster jobs, through submitit (SLURM job arrays).

At the paper's scale (Wolf et al. 2023: 5 inits x (COVID 4 fractions + OrganSMNIST 6 + brain
2 x 5 folds) x 5 seeds, about 500 ResNet50 runs at 224 px) the grid is many GPU-hours. With an
executor, :func:`ssl_lib.finetune.run_grid` hands its pending runs to :class:`GridExecutor`
instead of its own worker processes:

* every job of a **job array** runs one fine-tuning run (``per_job="run"``, the default) or all
  runs of one task and init that share the frozen features (``per_job="group"``), on
  ``gpus_per_job`` GPUs of ``partition`` for at most ``time_min`` minutes, at most
  ``array_parallelism`` jobs at a time (submitit's ``slurm_array_parallelism``);
* a job writes its model, curves and predictions as a serial run does, and each finished run
  one **row file** (``finetune/jobs/rows/<profile>/<task>/<init>/<run>.csv``, written to a
  temporary name and renamed);
* the parent is the results table's **one writer**: it merges finished row files into
  ``finetune/results.csv`` (the whole table rewritten to a temporary file and renamed, so a
  reader never sees half a table), skipping any run already in it (nothing is merged twice),
  and deletes a row file once merged;
* **resumable**: a run already in the table is not handed over at all (``run_grid``); a row
  file left by a job whose parent had stopped is merged without rerunning; a job that ended
  without its row file (failed, killed, out of time) is resubmitted ``retries`` times (default
  once), then reported by :class:`GridJobError` with each run and its job's log file (relative
  to the study folder), after the runs that did finish are merged; the next call reruns only
  what is missing. An interrupt of the parent cancels its submitted jobs.

``kind``: ``"slurm"`` (submitit's SLURM executor: ``sbatch --array``) or ``"submitit-local"``
(submitit's local executor: the same jobs as subprocesses of this machine; what the tests use).
``"local"`` is no executor: ``run_grid``'s worker processes (:func:`make_executor` returns ``None``).

**One GPU per job.** A fine-tuning run trains on one device, so ``gpus_per_job`` is 0 or 1 (more
would be allocated and left idle: refused). On SLURM, the scheduler gives each job its own GPU.
On ``submitit-local`` this class does it (submitit's local executor would set
``CUDA_VISIBLE_DEVICES=0`` for every job, so all of them would share the first GPU): with a CUDA
``device`` each job gets one of the GPUs this process sees (:func:`visible_gpus`) as its only
``CUDA_VISIBLE_DEVICES``, and at most one job runs per GPU (and at most ``array_parallelism``);
a new job starts on a GPU as soon as its previous job ends. On the CPU the jobs see no GPU, at
most ``array_parallelism`` at a time.

    from ssl_lib import cluster, finetune as ft
    ex = cluster.GridExecutor("slurm", partition="gpu", gpus_per_job=1, time_min=240, array_parallelism=32)
    ft.run_grid("outputs/paper", profile="paper", device="cuda", executor=ex)

Jobs import ``ssl_lib`` from the submitting process's working directory and environment (SLURM
exports both by default): start the study from the repository root, or install the package.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import SslCtError
from .paths import StudyPaths
from .runs import merge_row_files, run_name, write_row_file

EXECUTORS = ("local", "slurm", "submitit-local")


class GridJobError(SslCtError, RuntimeError):
    """Grid jobs that ended without their results; the message names each run and its job's log."""


@dataclass
class GridExecutor:
    """Runs groups of grid runs as submitit jobs (see the module docstring).

    ``partition``: SLURM partition (``None``: the cluster's default); ``gpus_per_job``: GPUs
    per job (``--gpus-per-node``; 0 or 1, see the module docstring); ``cpus_per_job``: CPU cores per job (also the job's torch
    threads; ``None``: the scheduler's default, or on ``submitit-local`` an even share of this
    machine's cores); ``mem_gb``: memory per job (``None``: the
    default); ``time_min``: time limit per job in minutes; ``array_parallelism``: jobs of the
    array running at once; ``per_job``: ``"run"`` or ``"group"``; ``retries``: resubmissions
    of a job that ended without its results; ``poll_s``: seconds between checks of the jobs;
    ``slurm_extra``: further ``slurm_*`` parameters of submitit (e.g. ``{"slurm_account": "x"}``).
    """

    kind: str = "slurm"
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_min: int = 240
    array_parallelism: int = 64
    per_job: str = "run"
    retries: int = 1
    poll_s: float | None = None
    slurm_extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("slurm", "submitit-local"):
            raise ValueError(f"grid executor kind must be 'slurm' or 'submitit-local', got {self.kind!r} "
                             "('local' runs the grid on this machine's worker processes: pass no executor)")
        if self.per_job not in ("run", "group"):
            raise ValueError(f"per_job must be 'run' or 'group', got {self.per_job!r}")
        for name in ("gpus_per_job", "retries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if self.gpus_per_job > 1:
            raise ValueError(f"gpus_per_job={self.gpus_per_job}: a fine-tuning run trains on one GPU, so a job "
                             "would hold GPUs it leaves idle; use gpus_per_job=1 (jobs run side by side, one per "
                             "GPU) or 0 for CPU jobs")
        for name in ("time_min", "array_parallelism"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.cpus_per_job is not None and (not isinstance(self.cpus_per_job, int) or self.cpus_per_job < 1):
            raise ValueError(f"cpus_per_job must be a positive int or None, got {self.cpus_per_job!r}")

    # ----------------------------------------------------------------- submitit
    def _submitit(self, folder: Path):
        import submitit

        if self.kind == "submitit-local":  # its GPUs are set per job (_use_gpus)
            ex = submitit.LocalExecutor(folder=str(folder))
            ex.update_parameters(timeout_min=int(self.time_min))
            return ex
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        params = {"timeout_min": int(self.time_min), "gpus_per_node": int(self.gpus_per_job),
                  "cpus_per_task": self.cpus_per_job, "mem_gb": self.mem_gb, "name": "ssl-ct-finetune",
                  "slurm_array_parallelism": int(self.array_parallelism)}
        if self.partition:
            params["slurm_partition"] = self.partition
        params.update(self.slurm_extra)
        ex.update_parameters(**params)
        return ex

    @staticmethod
    def _use_gpus(ex, gpus: tuple[int, ...]) -> None:
        """The next local job sees exactly ``gpus`` (``CUDA_VISIBLE_DEVICES``; none for ``()``)."""
        ex.update_parameters(gpus_per_node=len(gpus), visible_gpus=tuple(gpus))

    def _slots(self, device: str) -> list[tuple[int, ...]] | None:
        """The local executor's job slots (the GPUs each job sees); ``None`` on SLURM (the scheduler's job)."""
        cuda = str(device).startswith("cuda")
        if cuda and self.gpus_per_job == 0:
            raise ValueError(f"device {device!r} needs a GPU per job, but gpus_per_job=0")
        if self.kind == "slurm":
            return None
        if not cuda:
            return [()] * self.array_parallelism
        gpus = visible_gpus()
        if not gpus:
            raise ValueError(f"submitit-local on device {device!r}: this machine shows no GPU to give the jobs")
        return [(g,) for g in gpus][: self.array_parallelism]

    def _poll(self) -> float:
        return self.poll_s if self.poll_s is not None else (30.0 if self.kind == "slurm" else 0.5)

    # ----------------------------------------------------------------- the grid's side
    def run(self, groups: Sequence[list[dict]], output_dir, prof, device, on_done: Callable[[dict], None]) -> None:
        """Run the grid's pending ``groups`` (lists of job dicts with ``task``, ``init``, ``fraction``,
        ``seed``, ``pretrain_epoch`` and ``key``: :data:`ssl_lib.runs.RUN_KEY`) and merge their rows.

        ``on_done(job)`` is called for each run once its row is in the results table.
        """
        paths = StudyPaths(output_dir)
        results = paths.results
        todo: list[list[dict]] = []
        for g in groups:  # rows a previous call's jobs left behind: merge, do not rerun
            left = [j for j in g if not row_file(output_dir, j).is_file()]
            ready = [j for j in g if j not in left]
            if ready:
                merge_rows(results, [(j, row_file(output_dir, j)) for j in ready])
                for j in ready:
                    on_done(j)
            if left:
                todo.append(left)
        units = todo if self.per_job == "group" else [[j] for g in todo for j in g]
        if not units:
            return
        slots = self._slots(str(device))
        folder = paths.finetune / "jobs" / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        ex = self._submitit(folder)
        threads = self.cpus_per_job  # local subprocesses share this machine's cores evenly
        if threads is None and slots is not None:
            threads = max(1, (os.cpu_count() or 1) // min(len(slots), len(units)))
        failed: list[tuple[dict, str]] = []
        for attempt in range(self.retries + 1):
            failed = self._run_units(ex, units, str(output_dir), prof, str(device), threads, results, on_done,
                                     paths.root, slots)
            if not failed:
                return
            again = {id(j) for j, _ in failed}
            units = [[j for j in u if id(j) in again] for u in units]
            units = [u for u in units if u]
        lines = [f"  {j['task']} / {j['init']} / fraction {j['fraction']} / seed {j['seed']}: see {log}"
                 for j, log in failed]
        raise GridJobError(f"{len(failed)} fine-tuning run(s) ended without results after {self.retries + 1} "
                           f"attempt(s); the other runs are in the results table, and the next call reruns only "
                           f"these:\n" + "\n".join(lines))

    def _run_units(self, ex, units, output_dir: str, prof, device: str, threads, results: Path, on_done,
                   root: Path, slots: list[tuple[int, ...]] | None = None) -> list[tuple[dict, str]]:
        """Submit ``units`` and merge their rows as jobs end.

        ``slots``: ``None`` submits all units as one job array (SLURM runs them); otherwise one job per
        slot at a time, each seeing the slot's GPUs only, the next unit starting when a slot frees.
        Returns the runs without a row file once their job ended, with the job's log (relative).
        """
        failed: list[tuple[dict, str]] = []
        queue = list(range(len(units)))
        pending: dict[int, tuple] = {}  # unit index -> (job, slot)
        free = list(slots or [])
        if slots is None:
            jobs = ex.map_array(run_jobs, [output_dir] * len(units), [prof] * len(units), [device] * len(units),
                                [_plain(u) for u in units], [threads] * len(units))
            pending, queue = {i: (job, None) for i, job in enumerate(jobs)}, []
        try:
            while pending or queue:
                while queue and free:
                    i, slot = queue.pop(0), free.pop(0)
                    self._use_gpus(ex, slot)
                    (job,) = ex.map_array(run_jobs, [output_dir], [prof], [device], [_plain(units[i])], [threads])
                    pending[i] = (job, slot)
                time.sleep(self._poll())
                finished = [i for i, (job, _) in pending.items() if job.done()]
                ready = []
                for i in list(pending):
                    u = units[i]
                    have = [j for j in u if row_file(output_dir, j).is_file()]
                    if i in finished:
                        ready += have
                        missing = [j for j in u if j not in have and not j.get("_merged")]
                        failed += [(j, _log_of(pending[i][0], root)) for j in missing]
                        if pending[i][1] is not None:
                            free.append(pending[i][1])
                        del pending[i]
                    else:  # a group job's runs that are already done are merged as they come
                        ready += [j for j in have if not j.get("_merged")]
                ready = [j for j in ready if not j.get("_merged")]
                if ready:
                    merge_rows(results, [(j, row_file(output_dir, j)) for j in ready])
                    for j in ready:
                        j["_merged"] = True
                        on_done(j)
        except BaseException:
            for job, _ in pending.values():
                job.cancel(check=False)
            raise
        return failed


def visible_gpus() -> list[int]:
    """The GPUs this process sees, as the indices ``CUDA_VISIBLE_DEVICES`` gives a child process.

    ``torch.cuda.device_count()`` GPUs: ``0 .. n-1``, or, when this process runs with
    ``CUDA_VISIBLE_DEVICES`` set, the first ``n`` of its entries (a job must name the same
    physical GPU). Entries that are not indices (GPU UUIDs, MIG ids) are an error: submitit's
    local executor hands out indices only.
    """
    import torch

    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [x.strip() for x in env.split(",") if x.strip()][:n] if env is not None else [str(i) for i in range(n)]
    odd = [x for x in names if not x.isdigit()]
    if odd:
        raise ValueError(f"CUDA_VISIBLE_DEVICES names GPU {odd[0]!r} by more than an index; submitit-local gives "
                         "each job one GPU by index: list the GPUs by index (e.g. 0,1,2,3) or unset it")
    return [int(x) for x in names]


def make_executor(kind: str = "local", **options) -> GridExecutor | None:
    """The grid executor of the runner's ``--executor``: ``None`` for ``"local"`` (worker processes)."""
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {EXECUTORS}")
    return None if kind == "local" else GridExecutor(kind, **(options or {}))


# --------------------------------------------------------------------- files
def row_file(output_dir, job: dict) -> Path:
    """The row file of one run: ``finetune/jobs/rows/<profile>/<task>/<init>/<run>.csv``."""
    task, init, fraction, seed, fold, profile = job["key"]
    return StudyPaths(output_dir).finetune / "jobs" / "rows" / profile / task / init / (
        run_name(fraction, seed, fold) + ".csv")


def _plain(unit: list[dict]) -> list[dict]:
    return [{k: v for k, v in j.items() if not k.startswith("_")} for j in unit]


def _log_of(job, root: Path) -> str:
    """The job's stderr log, relative to the study folder (no absolute paths in messages)."""
    try:
        path = Path(job.paths.stderr)
        return str(path.resolve().relative_to(root.resolve()))
    except Exception:  # noqa: BLE001 - only a hint in an error message
        return f"finetune/jobs/logs (job {job.job_id})"


def write_row(output_dir, job: dict, row: dict) -> Path:
    """Write one run's results row to its row file (atomically: never half a file, :func:`ssl_lib.runs.write_row_file`)."""
    return write_row_file(row_file(output_dir, job), row)


def merge_rows(results: Path, items: Sequence[tuple[dict, Path]]) -> int:
    """Merge row files into the results CSV in one atomic rewrite; rows whose run is in it already are skipped.

    ``items``: ``(job, row file)`` pairs. The merged row files are deleted afterwards. Returns
    the number of rows added (:func:`ssl_lib.runs.merge_row_files`).
    """
    return merge_row_files(results, [path for _, path in items])


# --------------------------------------------------------------------- the job's side
def run_jobs(output_dir: str, prof, device: str, jobs: list[dict], threads: int | None = None) -> int:
    """One array job: run ``jobs`` (one task and init) in order, writing a row file after each; returns the count.

    Runs whose row file exists already (an earlier attempt of this job got that far) are skipped.
    """
    import torch

    from .finetune import FeatureCache, finetune_run, load_task_data

    if threads:
        torch.set_num_threads(int(threads))
    data = {}
    features = FeatureCache()  # this job's runs of one task and init share the frozen features
    done = 0
    for j in jobs:
        if row_file(output_dir, j).is_file():
            continue
        if j["task"] not in data:
            data.clear()
            data[j["task"]] = load_task_data(output_dir, j["task"], prof.image_size)
        row = finetune_run(output_dir, j["task"], j["init"], fraction=j["fraction"], seed=j["seed"], profile=prof,
                           pretrain_epoch=j["pretrain_epoch"], data=data[j["task"]], device=device, save=True,
                           record=False, features=features)
        write_row(output_dir, j, {k: v for k, v in row.items() if not k.startswith("_")})
        done += 1
    return done
