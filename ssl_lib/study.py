"""The study runner: executes the notebook templates with papermill, then builds the book.

``python -m ssl_lib study --profile quick --output outputs/quick`` runs every step of
:data:`STEPS` (each notebook executed into ``<output>/notebooks/``), times each step, then
stages the book (the repository's ``_config.yml``, ``_toc.yml`` and ``book/`` plus the
executed notebooks) under ``<output>/book`` and builds HTML with Jupyter Book into
``<output>/book/_build/html``. Steps read only what earlier steps wrote under the output folder,
so a step can be rerun alone (``--steps``).

Steps run as soon as the steps they read from (``Step.after``) are done, up to ``jobs`` at a
time (``--jobs``; default two on a CPU-only machine with two or more cores, else one): the four
pre-trainings run two by two. Each step's notebook is executed by its own process, and every
kernel gets an even share of the cores through ``OMP_NUM_THREADS``, so two single-threaded
pre-trainings fill two cores where one two-threaded run leaves part of them idle (Python,
data and plotting work is single-threaded). The largest steps (``Step.cost``) start first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .kernel import jupyter_env
from .paths import StudyPaths
from .widgets import BATCH_ENV

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Step:
    """A notebook of the study: ``after`` names the steps whose outputs it reads; ``cost`` is a
    relative size hint (among steps ready at once, the largest starts first)."""

    name: str
    notebook: str  # relative to the repository root
    after: tuple[str, ...] = ()
    cost: float = 1.0

    @property
    def template(self) -> Path:
        return REPO / self.notebook


_PRETRAIN = ("pretrain_byol", "pretrain_swav", "pretrain_mocov2", "pretrain_spark")

#: The study's steps in book order; each notebook takes at least ``profile`` and ``output_dir``.
#: Costs: the quick profile's minutes on 2 cores.
STEPS: tuple[Step, ...] = (
    Step("preprocess", "notebooks/01_preprocess.ipynb"),
    Step("pretrain_byol", "notebooks/02_pretrain_byol.ipynb", ("preprocess",), 2.4),
    Step("pretrain_swav", "notebooks/03_pretrain_swav.ipynb", ("preprocess",), 3.0),
    Step("pretrain_mocov2", "notebooks/04_pretrain_mocov2.ipynb", ("preprocess",), 1.7),
    Step("pretrain_spark", "notebooks/05_pretrain_spark.ipynb", ("preprocess",), 2.6),
    Step("finetune", "notebooks/06_finetune.ipynb", _PRETRAIN),
    Step("reduction", "notebooks/07_reduction.ipynb", ("finetune",)),  # reuses 06's runs
    Step("gradcam", "notebooks/08_gradcam.ipynb", ("reduction",)),
    Step("results", "notebooks/09_results.ipynb", ("gradcam",)),
)

BOOK_FILES = ("_config.yml", "_toc.yml", "book")


class StudyError(RuntimeError):
    """A step of the study failed; the message names the step and its executed notebook."""


def _notebook_parameters(path: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(path)).keys())


def default_jobs() -> int:
    """Steps run side by side by default: 2 on a CPU-only machine with 2+ cores, else 1 (a GPU is not shared)."""
    import torch

    return 1 if torch.cuda.is_available() or (os.cpu_count() or 1) < 2 else 2


def _step_params(step: Step, paths: StudyPaths, profile: str, extra: dict | None) -> dict:
    params = {"profile": profile, "output_dir": str(paths.root.resolve())}
    accepted = _notebook_parameters(step.template)
    params.update({k: v for k, v in (extra or {}).items() if k in accepted})
    return params


@dataclass
class _Running:
    step: Step
    proc: subprocess.Popen
    error_file: Path
    start: float
    threads: int | None


def _launch(step: Step, paths: StudyPaths, profile: str, extra: dict | None, log_output: bool,
            threads: int | None) -> _Running:
    """Start executing ``step``'s notebook in a child process (its kernel limited to ``threads``)."""
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    out_nb = paths.notebooks / Path(step.notebook).name
    fd, error_file = tempfile.mkstemp(prefix=f".{step.name}-", suffix=".json", dir=paths.notebooks)
    os.close(fd)
    env = jupyter_env()  # the study's kernel spec: no "TCP without encryption" warning per step
    # figures must reach the executed notebook: the kernel inherits the environment, and a
    # non-interactive MPLBACKEND (Agg, common on servers and in CI) would swallow every plot
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env[BATCH_ENV] = "1"  # browsers show a note, not live widgets (see ssl_lib.widgets)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "ssl_lib", "_notebook", str(step.template), str(out_nb), error_file,
           json.dumps(_step_params(step, paths, profile, extra))] + (["--log-output"] if log_output else [])
    return _Running(step, subprocess.Popen(cmd, env=env, cwd=str(REPO)), Path(error_file), time.perf_counter(),
                    threads)


def _finish(run: _Running, paths: StudyPaths) -> None:
    """Raise :class:`StudyError` if ``run`` (finished) failed; tidy its error file."""
    text = run.error_file.read_text() if run.error_file.is_file() else ""
    run.error_file.unlink(missing_ok=True)
    if run.proc.returncode == 0:
        return
    out_nb = paths.notebooks / Path(run.step.notebook).name
    info = json.loads(text) if text.strip() else {}
    if "ename" in info:
        raise StudyError(f"step {run.step.name!r} failed in cell {info.get('exec_count')}: {info['ename']}: "
                         f"{info['evalue']}\nsee the executed notebook {out_nb}")
    raise StudyError(f"step {run.step.name!r} stopped with exit code {run.proc.returncode}"
                     f"{': ' + info['error'] if 'error' in info else ''}\nsee the executed notebook {out_nb}")


def execute_notebook(template: str, out_nb: str, error_file: str, params: dict, log_output: bool = False) -> int:
    """Run one notebook with papermill (the child side of :func:`_launch`); 0, or 1 with the error in ``error_file``."""
    import papermill as pm

    try:
        pm.execute_notebook(template, out_nb, parameters=params, cwd=str(REPO), kernel_name="python3",
                            progress_bar=False, log_output=log_output)
    except pm.PapermillExecutionError as err:
        Path(error_file).write_text(json.dumps({"exec_count": err.exec_count, "ename": err.ename,
                                                "evalue": str(err.evalue)}))
        return 1
    except Exception as err:  # noqa: BLE001 - kernel died, bad template, ...: reported by the parent
        Path(error_file).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        return 1
    return 0


def stage_book(paths: StudyPaths) -> Path:
    """Copy the book sources and the executed notebooks into ``<output>/book`` (the build root).

    Each notebook becomes a page as :func:`_copy_without_widget_state` prepares it: no live
    widgets or progress bars, no local paths, and the synthetic-data notice where any source was
    synthetic (:func:`ssl_lib.present.synthetic_notice`).
    """
    from .present import synthetic_notice

    stage = paths.root / "book"
    if stage.exists():
        for item in stage.iterdir():
            if item.name != "_build":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    stage.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, stage / name)
    (stage / "notebooks").mkdir(exist_ok=True)
    notice = synthetic_notice(paths.root)
    for step in STEPS:
        executed = paths.notebooks / Path(step.notebook).name
        # a step not run yet appears with its template (prose, no outputs)
        _copy_without_widget_state(executed if executed.exists() else step.template,
                                   stage / "notebooks" / executed.name, paths, notice if executed.exists() else "")
    if paths.timings.exists():
        _append_timings(stage / "book" / "reproduce.md", pd.read_csv(paths.timings))
    return stage


#: Output types that are only ever progress bars or live widgets: nothing a static page can show.
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _path_replacements(paths: StudyPaths | None) -> list[tuple[str, str]]:
    """(absolute path, what the page shows instead), longest first: the output folder (relative to
    the repository when inside it, else a placeholder), the repository, the home folder."""
    pairs = []
    if paths is not None:
        root = paths.root.resolve()
        try:
            shown = root.relative_to(REPO).as_posix()
        except ValueError:
            shown = "<output folder>"
        pairs.append((str(root), shown))
    pairs += [(str(REPO), "."), (str(Path.home()), "~")]
    return sorted({a: b for a, b in pairs if len(a) > 1}.items(), key=lambda p: -len(p[0]))


def _strip_paths(value, pattern, table: dict):
    """``value`` (a notebook's JSON tree) with every absolute path in ``table`` replaced; image data is left alone."""
    if isinstance(value, str):
        return pattern.sub(lambda m: table[m.group(0)], value)
    if isinstance(value, list):
        return [_strip_paths(v, pattern, table) for v in value]
    if isinstance(value, dict):
        return {k: v if k.startswith("image/") else _strip_paths(v, pattern, table) for k, v in value.items()}
    return value


def _is_progress_bar(out: dict) -> bool:
    text = out.get("text", "") if out.get("output_type") == "stream" else ""
    return out.get("name") == "stderr" and ("\r" in text or "it/s]" in text or "s/it]" in text)


def _copy_without_widget_state(src: Path, dst: Path, paths: StudyPaths | None = None, notice: str = "") -> None:
    """Copy a notebook as a page of the book (and its "Download .ipynb").

    * live widgets (their state and views) and progress bars go: a static page cannot use them,
      and widget state would make the build load require.js and the widget manager from a CDN.
      The notebooks' browsers show pre-rendered frames in batch runs (:mod:`ssl_lib.viewer`).
    * absolute paths (the output folder, the repository, the home folder) become relative ones
      in sources, outputs and metadata (papermill's injected ``output_dir`` among them).
    * ``notice`` (Markdown), if any, goes right under the page's title.
    """
    import re

    import nbformat

    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [out for out in cell.get("outputs", [])
                        if _WIDGET_VIEW not in out.get("data", {}) and not _is_progress_bar(out)]
    table = dict(_path_replacements(paths))
    pattern = re.compile("(?<![A-Za-z0-9+/=_.-])(?:" + "|".join(re.escape(a) for a in table) + ")(?![A-Za-z0-9+=_.-])")
    nb = nbformat.from_dict(_strip_paths(dict(nb), pattern, table))
    if notice:
        at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# ") else 0
        cell = nbformat.v4.new_markdown_cell(notice)
        cell["id"] = "synthetic-data-notice"
        nb.cells.insert(at, cell)
    nbformat.write(nb, dst)


def wall_seconds(timings: pd.DataFrame) -> float:
    """The study's wall-clock time: the last step's end (steps overlap when run side by side)."""
    if "start_s" in timings:
        return float((timings["start_s"] + timings["seconds"]).max())
    return float(timings["seconds"].sum())


def _append_timings(page: Path, timings: pd.DataFrame) -> None:
    total = wall_seconds(timings)
    if "start_s" not in timings:
        timings = timings.assign(start_s=timings["seconds"].cumsum() - timings["seconds"])
    if "threads" not in timings:
        timings = timings.assign(threads="")
    lines = ["", "## Timing of the last run", "",
             f"Profile `{timings['profile'].iloc[0]}`, measured by the study runner on "
             f"{timings['machine'].iloc[0]}: **{total / 60:.1f} minutes** from start to finished book.", "",
             "Steps whose inputs are ready run side by side (the pre-trainings two by two on a CPU), "
             "each on its share of the cores (*threads*); *share* is a step's time over the total, "
             "so overlapping steps add up to more than 100 %.", "",
             "| step | start (min) | minutes | threads | share |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.step} | {r.start_s / 60:.2f} | {r.seconds / 60:.2f} | {r.threads} | "
              f"{100 * r.seconds / max(total, 1e-9):.1f} % |" if r.seconds > 0 or r.step != "book" else
              f"| book | {r.start_s / 60:.2f} | (this build) | {r.threads} | |" for r in timings.itertuples()]
    with open(page, "a") as fh:
        fh.write("\n".join(lines) + "\n")


def build_book(paths: StudyPaths) -> Path:
    """Build the staged book to HTML offline; returns the path of ``index.html``."""
    stage = stage_book(paths)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage), "--quiet", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StudyError(f"the book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return stage / "_build" / "html" / "index.html"


def _machine() -> str:
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {device}"


def run_study(output: str | os.PathLike, profile: str = "quick", steps: list[str] | None = None,
              extra: dict | None = None, book: bool = True, log_output: bool = False,
              jobs: int | None = None) -> pd.DataFrame:
    """Run the study's steps (all, or those named in ``steps``) and build the book; returns timings.

    ``jobs``: steps run side by side (``None``: :func:`default_jobs`). A step starts once the
    steps in its ``after`` (among those chosen) are done; a failed step stops the study (steps
    still running are ended) with a :class:`StudyError` naming it and its executed notebook.
    """
    paths = StudyPaths(output)
    paths.root.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in STEPS if steps is None or s.name in steps]
    unknown = set(steps or []) - {s.name for s in STEPS}
    if unknown:
        raise StudyError(f"unknown step(s) {sorted(unknown)}; the steps are {[s.name for s in STEPS]}")
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise StudyError(f"jobs must be at least 1, got {jobs}")
    cpus = os.cpu_count() or 1
    names = {s.name for s in chosen}
    rows: list[dict] = []
    machine = _machine()
    t0 = time.perf_counter()
    pending, running, done = list(chosen), [], set()
    n = len(chosen)

    def save():
        pd.DataFrame(rows).to_csv(paths.timings, index=False)  # kept current so the book shows progress

    try:
        while pending or running:
            ready = [s for s in pending if all(d in done or d not in names for d in s.after)]
            ready.sort(key=lambda s: -s.cost)
            while ready and len(running) < jobs:
                step = ready.pop(0)
                pending.remove(step)
                # share the cores among the steps that run (or could run) now; a lone step gets all
                share = min(jobs, len(running) + 1 + len(ready))
                threads = max(1, cpus // share) if jobs > 1 else None
                print(f"[{n - len(pending)}/{n}] {step.name} ({step.notebook}) started"
                      + (f" on {threads} thread(s)" if threads else "") + " ...", flush=True)
                running.append(_launch(step, paths, profile, extra, log_output, threads))
            time.sleep(0.2)
            for run in [r for r in running if r.proc.poll() is not None]:
                running.remove(run)
                _finish(run, paths)
                seconds = time.perf_counter() - run.start
                done.add(run.step.name)
                rows.append({"step": run.step.name, "start_s": round(run.start - t0, 1), "seconds": round(seconds, 1),
                             "threads": run.threads or cpus, "profile": profile, "machine": machine})
                save()
                print(f"    {run.step.name} done in {seconds / 60:.1f} min", flush=True)
    finally:
        for run in running:  # only after a failure or an interrupt
            run.proc.terminate()
            run.proc.wait()
            run.error_file.unlink(missing_ok=True)
    if book:
        print("[book] building HTML ...", flush=True)
        start = time.perf_counter()
        rows.append({"step": "book", "start_s": round(start - t0, 1), "seconds": 0.0, "threads": cpus,
                     "profile": profile, "machine": machine})
        save()
        index = build_book(paths)
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
        save()
        print(f"[book] done: {index}", flush=True)
    timings = pd.DataFrame(rows)
    total = time.perf_counter() - t0
    print(f"\nstep timings ({jobs} at a time; share = the step's time over the total wall-clock time):")
    print(f"  {'step':<16} {'start':>6} {'minutes':>8} {'share':>7}")
    for r in rows:
        print(f"  {r['step']:<16} {r['start_s'] / 60:6.2f} {r['seconds'] / 60:8.2f} "
              f"{100 * r['seconds'] / max(total, 1e-9):6.1f} %")
    print(f"  {'total (wall)':<16} {'':>6} {total / 60:8.2f}")
    return timings


def _parse_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--param expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            import ast

            extra[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[key] = value
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssl_lib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{study,book,pretrain}")
    p_study = sub.add_parser("study", help="run the study's notebooks and build the book")
    p_study.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    p_study.add_argument("--output", default=None, help="output folder (default outputs/<profile>)")
    p_study.add_argument("--steps", nargs="*", default=None, help=f"run only these steps: {[s.name for s in STEPS]}")
    p_study.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="notebook parameter passed to every step that declares it (e.g. devices=4, lidc_root=/data/LIDC-IDRI)")
    p_study.add_argument("--jobs", type=int, default=None,
                         help="steps run side by side (default: 2 on a CPU-only machine with 2+ cores, else 1)")
    p_study.add_argument("--no-book", action="store_true", help="skip the book build")
    p_study.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    p_book = sub.add_parser("book", help="build the book from an output folder's executed notebooks")
    p_book.add_argument("--output", required=True)
    p_pre = sub.add_parser("pretrain", help="one pre-training run outside a notebook (for srun/torchrun on clusters)")
    p_pre.add_argument("method", choices=["byol", "swav", "mocov2", "spark"])
    p_pre.add_argument("--output", required=True, help="study output folder (reads stores/lidc, writes pretrain/<method>)")
    p_pre.add_argument("--profile", default="paper", choices=["smoke", "quick", "paper"])
    p_pre.add_argument("--store", default=None, help="slice store (default <output>/stores/lidc)")
    p_pre.add_argument("--epochs", type=int, default=None)
    p_pre.add_argument("--batch-size", type=int, default=None, help="per device")
    p_pre.add_argument("--devices", type=int, default=1, help="GPUs per node")
    p_pre.add_argument("--nodes", type=int, default=1)
    p_pre.add_argument("--num-workers", type=int, default=4)
    p_nb = sub.add_parser("_notebook", help=argparse.SUPPRESS)  # internal: one step's notebook, for the runner
    p_nb.add_argument("template")
    p_nb.add_argument("out")
    p_nb.add_argument("error_file")
    p_nb.add_argument("params")
    p_nb.add_argument("--log-output", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "_notebook":
            return execute_notebook(args.template, args.out, args.error_file, json.loads(args.params), args.log_output)
        if args.command == "study":
            # a folder given on the command line is relative to the working folder; the default
            # (and any relative folder a notebook names) to the repository root
            out = Path(args.output).resolve() if args.output else f"outputs/{args.profile}"
            run_study(out, args.profile, args.steps, _parse_extra(args.param), book=not args.no_book,
                      log_output=args.log_output, jobs=args.jobs)
        elif args.command == "pretrain":
            from .pretrain import pretrain

            paths = StudyPaths(Path(args.output).resolve())
            result = pretrain(args.method, args.store or paths.store("lidc"), paths.pretrain(args.method),
                              profile=args.profile, epochs=args.epochs, batch_size=args.batch_size,
                              devices=args.devices, num_nodes=args.nodes, num_workers=args.num_workers)
            print(f"{args.method}: {result.epochs_done} epochs, encoders in {result.run_dir / 'encoders'}")
        else:
            print(build_book(StudyPaths(Path(args.output).resolve())))
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
