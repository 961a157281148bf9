"""Any labelled task: a user's own task (here 'liver', 3 classes, PNG + labels CSV) next to the paper's."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ssl_lib.finetune as ft
from ssl_lib import report, tasks
from ssl_lib.data.prepare import prepare_stores
from ssl_lib.paths import StudyPaths


def liver_folder(root, n_patients=12, per_patient=3):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = ["file,label,patient"]
    for p in range(n_patients):
        label = p % 3
        for k in range(per_patient):
            img = rng.integers(0, 60, (24, 24)).astype(np.uint8) + 60 * label
            Image.fromarray(img).save(root / f"p{p}_{k}.png")
            rows.append(f"p{p}_{k}.png,{label},p{p}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_parse_tasks_defaults_and_errors():
    assert [t.name for t in tasks.parse_tasks(None)] == ["covid", "organs", "brain"]
    assert [t.name for t in tasks.parse_tasks("")] == ["covid", "organs", "brain"]
    specs = tasks.parse_tasks('["covid", {"name": "liver", "reader": "folder", "source": "/x", "window": [60, 200],'
                              ' "class_names": ["none", "cyst", "tumour"]}]')
    assert [s.name for s in specs] == ["covid", "liver"]
    liver = specs[1]
    assert liver.fractions == tasks.USER_FRACTIONS == (1.0, 0.75, 0.5, 0.25, 0.1)
    assert liver.split == "cv" and liver.kind == "multiclass" and liver.options == {"window": [60, 200]}
    for bad, msg in [('[{"name": "Liver!", "source": "/x"}]', "lower-case"),
                     ('[{"name": "liver"}]', "'source'"),
                     ('[{"name": "liver", "source": "/x", "reader": "lidc"}]', "reader 'lidc'"),
                     ('[{"name": "liver", "source": "/x", "colour": 1}]', r"unknown key\(s\) \['colour'\]"),
                     ('[{"name": "liver", "source": "/x", "fractions": [0]}]', "fractions must lie"),
                     ('["livers"]', "not a paper task"), ("[oops", "JSON list"),
                     ('["covid", "covid"]', "given twice")]:
        with pytest.raises(ValueError, match=msg):
            tasks.parse_tasks(bad)


def test_user_task_through_preprocess_finetune_and_tables(tmp_path):
    src = liver_folder(tmp_path / "liver")
    out = tmp_path / "out"
    spec = json.dumps([{"name": "liver", "reader": "folder", "source": str(src),
                        "class_names": ["none", "cyst", "tumour"], "fractions": [1.0, 0.5]}])
    stores = prepare_stores(out, "smoke", tasks=spec, progress=False)
    assert list(stores) == ["lidc", "liver"]  # only the tasks asked for
    from ssl_lib.data import views

    assert views.first_labelled(stores) is stores["liver"] and views.split_conflicts(stores).empty
    assert stores["liver"].class_names == ["none", "cyst", "tumour"] and stores["liver"].meta["task"] == "multiclass"
    saved = json.loads((out / "tasks.json").read_text())
    assert saved[0]["name"] == "liver" and str(src) not in (out / "tasks.json").read_text()  # no source path
    tasks._USER.clear()  # a later step's fresh process knows the task only from tasks.json
    assert tasks.use_study_tasks(out) == ["liver"] and tasks.get_task("liver").num_classes == 3
    prof = ft.get_profile("smoke", linear_epochs=1, full_epochs=0)
    assert prof.fractions_for("liver") == (1.0, 0.5)
    res = ft.run_grid(out, None, ["random"], seeds=[0], profile=prof, progress=False, stop_f1=None)
    assert set(res["task"]) == {"liver"} and sorted(res["fraction"]) == [0.5, 1.0]
    table = report.table2(report.load_results(out, prof.name))
    assert "liver" in table.columns.get_level_values("task")


def test_user_task_default_fractions_in_a_profile():
    tasks.register(tasks.TaskSpec("fracture", "fracture", "binary", ("no", "yes"), 1, "cv", reader="folder",
                                  fractions=tasks.USER_FRACTIONS))
    assert ft.get_profile("quick").fractions_for("fracture") == (1.0, 0.75, 0.5, 0.25, 0.1)
    quick = ft.get_profile("quick")
    assert quick.fractions_for("covid") == tuple(quick.fractions["covid"])  # paper tasks: the profile's own
    assert tasks.order_tasks(["fracture", "brain", "covid"]) == ["covid", "brain", "fracture"]


def test_task_list_resolves_a_relative_output_against_the_repository(tmp_path, monkeypatch):
    """A notebook in JupyterLab runs in notebooks/: the study's tasks.json is still the study's."""
    import ssl_lib.paths
    from ssl_lib.tasks import TaskSpec, save_study_tasks, use_study_tasks

    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    monkeypatch.setattr(ssl_lib.paths, "REPO", repo)
    monkeypatch.chdir(repo / "notebooks")
    spec = TaskSpec("liverx", "liverx", "binary", ("no", "yes"), 1, "cv", seed_f1="same", reader="folder")
    written = save_study_tasks("outputs/quick", [spec])
    assert written == repo / "outputs" / "quick" / "tasks.json"
    assert not list((repo / "notebooks").rglob("*"))  # nothing under notebooks/
    assert use_study_tasks("outputs/quick") == ["liverx"]
