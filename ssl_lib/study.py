"""The study runner: executes the notebook templates with papermill, then builds the book.

``python -m ssl_lib study --profile quick --output outputs/quick`` runs every step of
:data:`STEPS` in order (each notebook executed into ``<output>/notebooks/``), times each step,
then stages the book (the repository's ``_config.yml``, ``_toc.yml`` and ``book/`` plus the
executed notebooks) under ``<output>/book`` and builds HTML with Jupyter Book into
``<output>/book/_build/html``. Steps read only what earlier steps wrote under the output folder,
so a step can be rerun alone (``--steps``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .paths import StudyPaths

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Step:
    name: str
    notebook: str  # relative to the repository root

    @property
    def template(self) -> Path:
        return REPO / self.notebook


#: The study's steps in order; each notebook takes at least ``profile`` and ``output_dir``.
STEPS: tuple[Step, ...] = (
    Step("preprocess", "notebooks/01_preprocess.ipynb"),
    Step("pretrain_byol", "notebooks/02_pretrain_byol.ipynb"),
    Step("pretrain_swav", "notebooks/03_pretrain_swav.ipynb"),
    Step("pretrain_mocov2", "notebooks/04_pretrain_mocov2.ipynb"),
    Step("pretrain_spark", "notebooks/05_pretrain_spark.ipynb"),
    Step("finetune", "notebooks/06_finetune.ipynb"),
    Step("reduction", "notebooks/07_reduction.ipynb"),
    Step("gradcam", "notebooks/08_gradcam.ipynb"),
    Step("results", "notebooks/09_results.ipynb"),
)

BOOK_FILES = ("_config.yml", "_toc.yml", "book")


class StudyError(RuntimeError):
    """A step of the study failed; the message names the step and its executed notebook."""


def _notebook_parameters(path: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(path)).keys())


def run_step(step: Step, paths: StudyPaths, profile: str, extra: dict | None = None, log_output: bool = False) -> float:
    """Execute one step's notebook into ``<output>/notebooks``; returns its wall-clock seconds."""
    import papermill as pm

    paths.notebooks.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "output_dir": str(paths.root.resolve())}
    accepted = _notebook_parameters(step.template)
    for key, value in (extra or {}).items():
        if key in accepted:
            params[key] = value
    out_nb = paths.notebooks / Path(step.notebook).name
    # figures must reach the executed notebook: the kernel inherits the environment, and a
    # non-interactive MPLBACKEND (Agg, common on servers and in CI) would swallow every plot
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(step.template), str(out_nb), parameters=params, cwd=str(REPO), kernel_name="python3",
            progress_bar=False, log_output=log_output,
        )
    except pm.PapermillExecutionError as err:
        raise StudyError(
            f"step {step.name!r} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
            f"see the executed notebook {out_nb}"
        ) from None
    return time.perf_counter() - start


def stage_book(paths: StudyPaths) -> Path:
    """Copy the book sources and the executed notebooks into ``<output>/book`` (the build root)."""
    stage = paths.root / "book"
    if stage.exists():
        for item in stage.iterdir():
            if item.name != "_build":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    stage.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, stage / name)
        else:
            shutil.copy2(src, stage / name)
    (stage / "notebooks").mkdir(exist_ok=True)
    for step in STEPS:
        executed = paths.notebooks / Path(step.notebook).name
        # a step not run yet appears with its template (prose, no outputs)
        _copy_without_widget_state(executed if executed.exists() else step.template, stage / "notebooks" / executed.name)
    if paths.timings.exists():
        _append_timings(stage / "book" / "reproduce.md", pd.read_csv(paths.timings))
    return stage


def _copy_without_widget_state(src: Path, dst: Path) -> None:
    """Copy a notebook for the book, dropping live-widget state and views.

    Widgets need a kernel (JupyterLab); in a static page their state would make the build load
    require.js and the widget manager from a CDN. Each widget cell of ours also draws a static
    figure, which the book keeps.
    """
    import nbformat

    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")
                data["text/plain"] = "(interactive widget: open this notebook in JupyterLab to use it)"
    nbformat.write(nb, dst)


def _append_timings(page: Path, timings: pd.DataFrame) -> None:
    total = timings["seconds"].sum()
    table = timings.assign(
        minutes=(timings["seconds"] / 60).round(2), share=(100 * timings["seconds"] / total).round(1).astype(str) + " %"
    )[["step", "minutes", "share"]]
    lines = ["", "## Timing of the last run", "",
             f"Profile `{timings['profile'].iloc[0]}`, measured by the study runner on "
             f"{timings['machine'].iloc[0]}: **{total / 60:.1f} minutes** in all.", "",
             "| step | minutes | share |", "|---|---:|---:|"]
    lines += [f"| {r.step} | {r.minutes:.2f} | {r.share} |" for r in table.itertuples()]
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
              extra: dict | None = None, book: bool = True, log_output: bool = False) -> pd.DataFrame:
    """Run the study's steps (all, or those named in ``steps``) and build the book; returns timings."""
    paths = StudyPaths(output)
    paths.root.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in STEPS if steps is None or s.name in steps]
    unknown = set(steps or []) - {s.name for s in STEPS}
    if unknown:
        raise StudyError(f"unknown step(s) {sorted(unknown)}; the steps are {[s.name for s in STEPS]}")
    rows = []
    machine = _machine()
    t0 = time.perf_counter()
    for i, step in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {step.name} ({step.notebook}) ...", flush=True)
        seconds = run_step(step, paths, profile, extra, log_output=log_output)
        print(f"[{i}/{len(chosen)}] {step.name} done in {seconds / 60:.1f} min", flush=True)
        rows.append({"step": step.name, "seconds": round(seconds, 1), "profile": profile, "machine": machine})
        pd.DataFrame(rows).to_csv(paths.timings, index=False)  # kept current so the book shows progress
    if book:
        print("[book] building HTML ...", flush=True)
        start = time.perf_counter()
        rows.append({"step": "book", "seconds": 0.0, "profile": profile, "machine": machine})
        pd.DataFrame(rows).to_csv(paths.timings, index=False)
        index = build_book(paths)
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
        pd.DataFrame(rows).to_csv(paths.timings, index=False)
        print(f"[book] done: {index}", flush=True)
    timings = pd.DataFrame(rows)
    total = time.perf_counter() - t0
    print("\nstep timings (minutes):")
    for r in rows:
        print(f"  {r['step']:<14} {r['seconds'] / 60:6.2f}  {100 * r['seconds'] / max(total, 1e-9):5.1f} %")
    print(f"  {'total':<14} {total / 60:6.2f}")
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
    sub = parser.add_subparsers(dest="command", required=True)
    p_study = sub.add_parser("study", help="run the study's notebooks and build the book")
    p_study.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    p_study.add_argument("--output", default=None, help="output folder (default outputs/<profile>)")
    p_study.add_argument("--steps", nargs="*", default=None, help=f"run only these steps: {[s.name for s in STEPS]}")
    p_study.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="notebook parameter passed to every step that declares it (e.g. devices=4, lidc_root=/data/LIDC-IDRI)")
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
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            out = args.output or f"outputs/{args.profile}"
            run_study(out, args.profile, args.steps, _parse_extra(args.param), book=not args.no_book,
                      log_output=args.log_output)
        elif args.command == "pretrain":
            from .pretrain import pretrain

            paths = StudyPaths(args.output)
            result = pretrain(args.method, args.store or paths.store("lidc"), paths.pretrain(args.method),
                              profile=args.profile, epochs=args.epochs, batch_size=args.batch_size,
                              devices=args.devices, num_nodes=args.nodes, num_workers=args.num_workers)
            print(f"{args.method}: {result.epochs_done} epochs, encoders in {result.run_dir / 'encoders'}")
        else:
            print(build_book(StudyPaths(args.output)))
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
