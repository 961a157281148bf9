"""Helpers of the end-to-end study tests: run the runner's command line into a folder and check
that every step finished into the results table and the book."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ssl_lib import study
from ssl_lib.paths import StudyPaths

REPO = Path(study.REPO)


def run_cli(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m ssl_lib study --profile smoke --output out *args`` from the repository root."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "ssl_lib", "study", "--profile", "smoke", "--output", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def check_study(out: Path, run: subprocess.CompletedProcess, steps, inits) -> pd.DataFrame:
    """The runner said every step of ``steps`` finished, the results table holds exactly ``inits``
    (smoke runs with every metric), the book has a page per step; returns the results table."""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for step in steps:
        assert f"    {step.name} done in " in run.stdout, f"{step.name} not reported done:\n{run.stdout[-3000:]}"
    timings = pd.read_csv(StudyPaths(out).timings)
    assert set(timings["step"]) == {s.name for s in steps} | {"book"}
    results = pd.read_csv(out / "finetune" / "results.csv")
    assert set(results["init"]) == set(inits) and set(results["profile"]) == {"smoke"}
    assert results[["accuracy", "auc", "f1"]].notna().all().all()
    html = out / "book" / "_build" / "html"
    assert (html / "index.html").is_file()
    for step in steps:
        assert (html / "notebooks" / (Path(step.notebook).stem + ".html")).is_file(), f"no book page for {step.name}"
    return results
