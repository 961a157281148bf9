"""The book's presentation (ssl_lib.present): synthetic notice, verdict grid, long tables, Figure 5 browser."""

import base64
import itertools
import json
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from ssl_lib import present


def write_meta(root, name, synthetic):
    (root / "stores" / name).mkdir(parents=True)
    (root / "stores" / name / "meta.json").write_text(json.dumps({"name": name, "synthetic": synthetic}))


def test_synthetic_notice_names_the_synthetic_sources(tmp_path):
    assert present.synthetic_notice(tmp_path) == ""  # no stores: nothing to say
    write_meta(tmp_path, "covid", False)
    write_meta(tmp_path, "brain", True)
    write_meta(tmp_path, "lidc", True)
    assert present.synthetic_sources(tmp_path) == ["lidc", "brain"]
    note = present.synthetic_notice(tmp_path)
    assert "LIDC-IDRI" in note and "Brain CT" in note and "COVID" not in note and ":class: warning" in note
    assert "{doc}`../book/real_data`" in note  # every banner links to the real-data page
    # a page names only the synthetic sources among those it shows
    assert present.synthetic_sources(tmp_path, ["lidc"]) == ["lidc"]
    assert present.synthetic_notice(tmp_path, ["covid"]) == ""  # a real task's page: no notice
    assert "Brain CT" not in present.synthetic_notice(tmp_path, ["lidc", "covid"])
    (tmp_path / "stores" / "brain" / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="brain"):
        present.synthetic_sources(tmp_path)


def comparisons():
    rows = []
    inits = ["random", "byol", "spark"]
    for (task, fractions), metric in itertools.product([("covid", (1.0, 0.5)), ("brain", (1.0,))], ("auc", "f1")):
        for f in fractions:
            for a, b in itertools.combinations(inits, 2):
                d = {"random": 0.0, "byol": 0.1, "spark": 0.3}[b] - {"random": 0.0, "byol": 0.1, "spark": 0.3}[a]
                rows.append({"task": task, "fraction": f, "metric": metric, "init_a": a, "init_b": b,
                             "diff": -d if f == 1.0 else d, "holds": abs(d) > 0.15, "verdict": "x", "other": 1})
    return pd.DataFrame(rows)


def test_verdict_grid_colours_direction_and_holding():
    comp = comparisons()
    fig = present.verdict_grid(comp)
    assert len(fig.axes) == 2  # auc, f1
    ax = fig.axes[0]
    codes = ax.images[0].get_array()
    # rows: random vs byol, random vs spark, byol vs spark; columns: COVID 100 %, COVID 50 %, Brain 100 %
    assert codes.shape == (3, 3)
    assert codes[1, 0] == 0 and codes[1, 1] == 2  # random vs spark: B better at 100 % (diff<0), A at 50 %
    assert codes[0, 0] == 1 and codes[2, 2] == 0  # grey: 0.1 does not hold; Brain 100 %: SparK better
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["Random vs BYOL", "Random vs SparK", "BYOL vs SparK"]
    assert present.legibility_problems(fig) == []
    # a pair stated the other way round is the same row, its difference turned
    turned = comp.copy()
    first = turned.index[(turned["init_a"] == "random") & (turned["init_b"] == "spark")][0]
    turned.loc[first, ["init_a", "init_b", "diff"]] = ["spark", "random", -turned.loc[first, "diff"]]
    again = present.verdict_grid(turned)
    assert [t.get_text() for t in again.axes[0].get_yticklabels()] == labels
    assert (again.axes[0].images[0].get_array() == codes).all()
    with pytest.raises(ValueError, match="holds"):
        present.verdict_grid(comp.drop(columns="holds"))
    # a synthetic task is tagged above its columns, a real one is not
    mixed = present.verdict_grid(comp.assign(synthetic=comp["task"].eq("covid")))
    heads = [t for t in mixed.axes[0].texts if t.get_fontweight() == "bold" and not t.get_text()[0] in "+-"]
    names = {" ".join(t.get_text().split()) for t in heads}
    assert {"COVID-19 (synthetic)", "Brain"} <= names and "Brain (synthetic)" not in names
    # two tagged tasks of two fractions each side by side
    both = pd.concat([comp, comp[comp["task"] == "brain"].assign(fraction=0.5)]).assign(synthetic=True)
    mixed = present.verdict_grid(both)
    heads = [t for t in mixed.axes[0].texts if t.get_fontweight() == "bold" and not t.get_text()[0] in "+-"]
    renderer = mixed.canvas.get_renderer()  # a tagged name over two narrow columns does not run into the next
    boxes = [t.get_window_extent(renderer) for t in heads]
    assert not any(a.padded(6).overlaps(b.padded(6)) for a, b in itertools.combinations(boxes, 2))  # >= 12 px apart
    plt.close("all")


def test_full_table_is_collapsible_with_a_csv_download():
    table = comparisons()
    page = present.full_table(table, "comparisons.csv").data
    assert "<details>" in page and page.count("<tr") == len(table) + 1
    csv = base64.b64decode(re.search(r'href="data:text/csv;base64,([^"]+)"', page).group(1)).decode()
    assert csv.splitlines()[0].startswith("task,fraction,metric") and len(csv.splitlines()) == len(table) + 1
    with pytest.raises(ValueError):
        present.full_table(table, "comparisons.txt")


def test_reduction_browser_one_frame_per_task_and_metric(monkeypatch):
    rng = np.random.default_rng(0)
    res = pd.DataFrame([{"task": t, "fraction": f, "init": i, "seed": s, "auc": rng.random(), "f1": rng.random(),
                         "accuracy": rng.random()}
                        for t in ("covid", "organs") for f in (1.0, 0.5) for i in ("random", "spark") for s in (0, 1)])
    live = present.reduction_browser(res)  # JupyterLab: live widgets
    assert [w.description for w in live.children[:2]] == ["task", "metric"]
    monkeypatch.setenv("SSL_CT_BATCH", "1")  # the book: frames
    page = present.reduction_browser(res).data
    assert page.count("<img data-key=") == 2 * 2 and page.count("<select") == 2
    mixed = present.reduction_browser(res.assign(synthetic=res["task"].eq("organs"))).data
    assert ">OrgMNIST (synthetic)<" in mixed and ">COVID-19<" in mixed
    plt.close("all")


def test_legibility_problems_find_small_text_and_wide_figures():
    fig, ax = plt.subplots(figsize=(12, 3))
    ax.set_title("tiny", fontsize=6)
    problems = present.legibility_problems(fig)
    assert any("px wide" in p for p in problems) and any("tiny" in p for p in problems)
    plt.close("all")


def test_the_books_figures_fit_the_page_and_are_legible():
    """Figures of the pages are at most the text column wide (830 px at 100 dpi) with text >= 8 pt."""
    from ssl_lib import report
    from ssl_lib.data.views import hu_histogram

    rng = np.random.default_rng(0)
    res = pd.DataFrame([{"task": t, "fraction": f, "init": i, "seed": s, "auc": rng.random(), "f1": rng.random()}
                        for t in ("covid", "organs", "brain") for f in (1.0, 0.5) for i in ("random", "byol", "spark")
                        for s in (0, 1)])
    curves = pd.DataFrame([{"init": i, "fraction": 1.0, "seed": s, "epoch": e, "train_loss": rng.random(),
                            "val_accuracy": rng.random(), "phase": "linear" if e < 2 else "full"}
                           for i in ("random", "byol", "spark") for s in (0, 1) for e in range(5)])
    names = [f"organ-{k}" for k in range(11)]
    pred = pd.DataFrame({"label": rng.integers(0, 11, 200), "pred": rng.integers(0, 11, 200),
                         **{f"prob_{k}": rng.random(200) for k in range(11)}})
    figures = {"figure5": report.figure5(res), "curves": report.plot_curves(curves),
               "confusion": report.plot_confusion(pred, names), "hu": hu_histogram(rng.normal(0, 400, 5000))}
    for name, fig in figures.items():
        assert present.legibility_problems(fig, max_width_px=850) == [], name
    plt.close("all")


def test_whole_tables_shows_long_cells_and_many_columns():
    import pandas as pd

    frame = pd.DataFrame({f"c{i}": ["x" * 80] for i in range(25)})
    with pd.option_context("display.max_colwidth", 50, "display.max_columns", 20, "display.max_rows", 60,
                           "display.width", 80):  # restored after the test
        assert "..." in frame._repr_html_()  # pandas' defaults cut both (what a notebook shows)
        present.whole_tables()
        html = frame._repr_html_()
    assert "..." not in html and "x" * 80 in html and "c24" in html


def test_runs_view_shows_key_columns_and_every_column_collapsed():
    rows = pd.DataFrame([{"task": "covid", "init": "spark", "seed": s, "fold": -1, "best_epoch": 2, "accuracy": 0.91666,
                          "auc": 1.0, "f1": 0.9, "train_size": 48, "test_size": 24, "time_s": 3.2, "lr": 1e-4,
                          "profile": "smoke"} for s in (0, 1)])
    page = present.runs_view(rows).data
    small, rest = page.split("<details>", 1)
    assert "<th>auc</th>" in small and "<th>lr</th>" not in small and "0.917" in small  # key columns, rounded
    assert "<th>lr</th>" in rest and "download runs.csv" in page  # every column, collapsed, downloadable
