"""The smoke study end to end through the REAL notebook templates in notebooks/ (no STEPS
replacement): every step runs its committed template, the results table and the book come out,
and the runner reports every step done. A notebook that calls a renamed function fails here.

About 3-4 minutes on 2 CPU cores (the whole study at smoke size, the book included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_runs import REPO, check_study, run_cli

from ssl_lib import study


@pytest.mark.slow
def test_smoke_study_runs_the_real_templates_into_results_and_book(tmp_path):
    out = tmp_path / "smoke"
    run = run_cli(out)
    steps = study.STEPS
    assert all(s.template == REPO / s.notebook and s.template.is_file() for s in steps)  # the committed templates
    results = check_study(out, run, steps, ["random", *(s.method for s in steps if s.method)])
    assert {"covid", "organs", "brain"} == set(results["task"])
    executed = {p.name for p in (out / "notebooks").glob("*.ipynb")}
    assert executed == {Path(s.notebook).name for s in steps}
    assert (out / "gradcam").is_dir() and any((out / "gradcam").glob("*_correlation.csv"))
