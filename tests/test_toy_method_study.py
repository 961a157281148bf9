"""A method registered only through SSL_CT_EXTRA_METHODS (tests/toy_method.py, no edit of the
library or of notebooks/) runs through the whole smoke study: its pre-training step comes from
the registry with a template generated at run time, and it reaches fine-tuning, Grad-CAM, the
results table and the book (its chapter in the table of contents). Only random + the toy method
run (``--steps`` leaves out the four built-in pre-trainings; ``--param init=toy`` is notebook 06's
initialisation). About 2-3 minutes on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from study_runs import REPO, check_study, run_cli

pytestmark = pytest.mark.slow  # studies, training runs or subprocesses: minutes (make test-fast skips)

ENV = {"SSL_CT_EXTRA_METHODS": "tests.toy_method"}


def _steps_with_toy():
    """The runner's steps as a process with the toy method registered sees them."""
    code = ("import json; from ssl_lib import study\n"
            "print(json.dumps([[s.name, s.notebook, s.method, str(s.template)] for s in study.STEPS]))")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_runner_has_a_step_and_a_generated_template_for_a_registered_method():
    steps = {name: (nb, method, template) for name, nb, method, template in _steps_with_toy()}
    nb, method, template = steps["pretrain_toy"]
    assert method == "toy" and not (REPO / nb).exists()  # no committed template: generated at run time
    text = open(template).read()
    assert "# Pre-training with Toy" in text and 'pt.pretrain(\\"toy\\"' in text
    assert list(steps).index("pretrain_toy") < list(steps).index("finetune")


def test_methods_restrict_the_pre_training_steps():
    from ssl_lib import study

    steps = {s.name: s for s in study.study_steps(["spark", "byol"])}
    assert [n for n in steps if n.startswith("pretrain_")] == ["pretrain_byol", "pretrain_spark"]  # registry order
    assert steps["finetune"].after == ("pretrain_byol", "pretrain_spark")
    assert steps["pretrain_spark"].notebook == "notebooks/05_pretrain_spark.ipynb"  # its place in the registry
    with pytest.raises(study.StudyError, match=r"unknown method 'sprak' \(did you mean 'spark'\?\)"):
        study.study_steps(["sprak"])


@pytest.mark.slow
def test_a_registered_toy_method_runs_through_the_whole_study(tmp_path):
    class _Step:
        def __init__(self, name, notebook):
            self.name, self.notebook = name, notebook

    names = ["preprocess", "pretrain_toy", "finetune", "reduction", "gradcam", "results"]
    notebooks = {name: nb for name, nb, _, _ in _steps_with_toy()}
    out = tmp_path / "toy"
    run = run_cli(out, "--methods", "toy", "--param", "init=toy", env=ENV)
    results = check_study(out, run, [_Step(n, notebooks[n]) for n in names], ["random", "toy"])
    assert set(results["task"]) == {"covid", "organs", "brain"}
    assert (out / "pretrain" / "toy" / "encoders").is_dir()
    html = out / "book" / "_build" / "html"
    toc = (out / "book" / "_toc.yml").read_text()
    assert f"- file: notebooks/{notebooks['pretrain_toy'][len('notebooks/'):].removesuffix('.ipynb')}\n" in toc
    chapter = (html / "notebooks" / "06_pretrain_toy.html").read_text()
    assert "Pre-training with Toy" in chapter
    assert "pretrain_byol" not in toc and "02_pretrain_byol" not in toc  # only the methods this study ran
    gradcam = (html / "notebooks" / "08_gradcam.html").read_text()
    assert "Toy" in gradcam  # the toy model's heat maps are in the Grad-CAM chapter
    assert "Toy" in (html / "notebooks" / "09_results.html").read_text()
