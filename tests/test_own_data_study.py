"""The README's own-data command at smoke size: real-layout COVID-CT (official split, file-name
quirks), a LIDC-IDRI tree and a user's own task (PNG slices + labels CSV) through every step of the
study and into the book, with no source path in any output byte."""

import pytest
import json

from test_covid_real import make_real_covid
from test_ingest import lidc_tree
from test_user_tasks import liver_folder
from ssl_lib.study import run_study

pytestmark = pytest.mark.slow  # studies, training runs or subprocesses: minutes (make test-fast skips)

MARKER = "Doe_Jane_OWN_DATA_5678"


def test_own_data_and_a_user_task_run_through_every_step_into_the_book(tmp_path):
    data = tmp_path / MARKER
    covid = make_real_covid(data / "COVID-CT")
    lidc = lidc_tree(data / "LIDC-IDRI", n_series=3, n=24, hw=(64, 64))
    liver = liver_folder(data / "liver", n_patients=15, per_patient=4)
    tasks = json.dumps(["covid", "organs", {"name": "lesions", "reader": "folder", "source": str(liver),
                                            "class_names": ["none", "cyst", "tumour"]}])
    out = tmp_path / "out"
    timings = run_study(out, "smoke", extra={"lidc_root": str(lidc), "covid_root": str(covid), "tasks": tasks})
    assert set(timings.loc[timings["status"] == "ran", "step"]) >= {"preprocess", "finetune", "reduction", "gradcam",
                                                                     "results", "book"}
    html = out / "book" / "_build" / "html" / "notebooks"
    for page in ("01_preprocess", "07_reduction", "09_results"):
        assert "lesions" in (html / f"{page}.html").read_text(), page
    assert [t["name"] for t in json.loads((out / "tasks.json").read_text())] == ["covid", "organs", "lesions"]
    for f in out.rglob("*"):
        if f.is_file():
            assert MARKER.encode() not in f.read_bytes(), f"{f.relative_to(out)} holds a source path"
