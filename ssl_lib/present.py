"""How the book shows results: the synthetic-data notice, the verdict grid, long tables.

* :func:`synthetic_sources` / :func:`synthetic_notice`: which data sources of a study were the
  built-in synthetic data (from the stores' ``meta.json``), as a notice the book puts at the top
  of every page that shows numbers (the study runner's book staging adds it).
* :func:`verdict_grid`: the paired comparisons of :func:`ssl_lib.stats.compare_inits` (one row
  per task x fraction x metric x pair of initialisations) as one compact figure: a cell per pair
  (rows) and task x fraction (columns), one panel per metric, coloured by the direction of the
  difference where it holds and grey where it does not.
* :func:`full_table`: a long table folded into a collapsible section, with the same table as a
  CSV download (a ``data:`` link: no file to serve, works offline).
* :func:`reduction_browser`: the paper's Figure 5 one task and metric at a time, as a browser.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Sequence

import numpy as np
import pandas as pd

from .paths import StudyPaths

#: Reader-facing names of the study's stores.
SOURCE_NAMES = {"lidc": "LIDC-IDRI (pre-training)", "covid": "COVID-19 CT", "organs": "OrganSMNIST",
                "brain": "Brain CT (hemorrhage)"}


# ----------------------------------------------------------------------------- synthetic data
def study_sources(output_dir: str | os.PathLike) -> list[str]:
    """Names of the study's stores (those with metadata), in a fixed order: the paper's sources
    (:data:`SOURCE_NAMES`) first, then the others by name."""
    order = list(SOURCE_NAMES)
    names = [p.parent.name for p in (StudyPaths(output_dir).root / "stores").glob("*/meta.json")]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def synthetic_sources(output_dir: str | os.PathLike, shown: Sequence[str] | None = None) -> list[str]:
    """Names of the study's stores built from the synthetic data set (``meta["synthetic"]``), in
    :func:`study_sources`' order; only those among ``shown`` (the stores a page shows numbers of)
    where given."""
    root = StudyPaths(output_dir).root / "stores"
    names = []
    for name in study_sources(output_dir):
        if shown is not None and name not in shown:
            continue
        meta_file = root / name / "meta.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{meta_file}: unreadable store metadata ({err})") from err
        if meta.get("synthetic"):
            names.append(name)
    return names


def whole_tables() -> None:
    """Show tables whole in this notebook's kernel: every column, every row up to 200, no cell cut.

    pandas' defaults cut a cell's text after 50 characters and a table after 20 columns with
    "...", which the book then shows as it was (a per-class count list or a metric definition
    ending in an ellipsis). The notebooks call this once, in their first code cell; wide tables
    scroll sideways in their own box on the page.
    """
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_columns", None)
    pd.set_option("display.max_rows", 200)
    pd.set_option("display.width", None)


def synthetic_notice(output_dir: str | os.PathLike, shown: Sequence[str] | None = None) -> str:
    """A MyST warning block naming the synthetic sources among ``shown`` (the stores a page shows
    numbers of; ``None``: all of the study's), '' when every one of them was real data."""
    names = synthetic_sources(output_dir, shown)
    if not names:
        return ""
    listed = ", ".join(SOURCE_NAMES.get(n, n) for n in names)
    return ("```{admonition} Synthetic data\n:class: warning\n"
            f"The numbers on this page come from the built-in **synthetic** CT data for: {listed}. "
            "They test the pipeline; they say nothing about the paper's claims. "
            "To run it on real data, see {doc}`../book/real_data`.\n```")


# ----------------------------------------------------------------------------- verdicts
def _init_label(init: str) -> str:
    from .pretrain.registry import init_label

    return init_label(init)


def verdict_grid(comparisons: pd.DataFrame, *, cell: float = 0.55, row: float = 0.3):
    """The comparisons as a grid: rows = pairs "A vs B", columns = task x training fraction, one
    panel per metric. A cell is blue where A is better and the difference holds, red where B is,
    grey where it does not hold, blank where it was not tested; the number is A - B.

    Needs the columns task, fraction, metric, init_a, init_b, diff and holds (any others are
    ignored). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .report import INIT_ORDER, task_namer, task_rank

    need = {"task", "fraction", "metric", "init_a", "init_b", "diff", "holds"}
    missing = need - set(comparisons.columns)
    if missing:
        raise ValueError(f"verdict_grid: the comparisons table lacks the columns {sorted(missing)}")
    c = comparisons.copy()
    rank = {i: k for k, i in enumerate(INIT_ORDER)}
    # one row per unordered pair: A is the init that comes first in the paper's order (random, BYOL,
    # SwAV, MoCo v2, SparK); a comparison stated the other way round is turned (A - B changes sign)
    swap = np.array([(rank.get(a, 99), a) > (rank.get(b, 99), b) for a, b in zip(c["init_a"], c["init_b"])], dtype=bool)
    if swap.any():
        c.loc[swap, ["init_a", "init_b"]] = c.loc[swap, ["init_b", "init_a"]].to_numpy()
        c.loc[swap, "diff"] = -c.loc[swap, "diff"].astype(float)
    if c.empty:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no comparisons", ha="center", va="center")
        ax.axis("off")
        return fig
    c["fraction"] = c["fraction"].astype(float)
    name = task_namer(c)
    cols = sorted({(t, f) for t, f in zip(c["task"], c["fraction"])}, key=lambda k: (task_rank(k[0]), -k[1]))
    pairs = sorted({(a, b) for a, b in zip(c["init_a"], c["init_b"])},
                   key=lambda p: (rank.get(p[0], 99), rank.get(p[1], 99), p))
    metrics = list(dict.fromkeys(c["metric"]))
    width = 2.2 + cell * len(cols)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 0.5 + len(metrics) * (1.0 + row * len(pairs))),
                             squeeze=False)
    cmap = ListedColormap(["#c0392b", "#d9d9d9", "#2f6fb3"])  # B better, does not hold, A better
    for ax, metric in zip(axes[:, 0], metrics):
        m = c[c["metric"] == metric].set_index(["init_a", "init_b", "task", "fraction"])
        code = np.full((len(pairs), len(cols)), np.nan)
        text = np.full((len(pairs), len(cols)), "", dtype=object)
        for r, (a, b) in enumerate(pairs):
            for k, (t, f) in enumerate(cols):
                if (a, b, t, f) not in m.index:
                    continue
                row = m.loc[(a, b, t, f)]
                row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                d = float(row["diff"])
                code[r, k] = (np.sign(d) if bool(row["holds"]) else 0) + 1
                text[r, k] = f"{d:+.2f}".replace("+0.", "+.").replace("-0.", "-.")
        ax.imshow(np.ma.masked_invalid(code), cmap=cmap, vmin=0, vmax=2, aspect="auto")
        for r in range(len(pairs)):
            for k in range(len(cols)):
                if text[r, k]:
                    ax.text(k, r, text[r, k], ha="center", va="center", fontsize=8,
                            color="white" if code[r, k] != 1 else "black", fontweight="bold" if code[r, k] != 1 else None)
        ax.set_yticks(range(len(pairs)), [f"{_init_label(a)} vs {_init_label(b)}" for a, b in pairs], fontsize=9)
        ax.set_xticks(range(len(cols)), [f"{f * 100:g}%" for _, f in cols], fontsize=8)
        ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(len(pairs) + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        # task names above their group of fractions, with a divider between tasks
        starts = [k for k in range(len(cols)) if k == 0 or cols[k][0] != cols[k - 1][0]]
        for s_i, s in enumerate(starts):
            end = (starts[s_i + 1] if s_i + 1 < len(starts) else len(cols)) - 1
            # the tag on a line of its own: a task over two fractions is about an inch wide
            ax.text((s + end) / 2, -0.6, name(cols[s][0]).replace(" (", "\n("), ha="center", va="bottom",
                    fontsize=9, fontweight="bold")
            if s:
                ax.axvline(s - 0.5, color="black", linewidth=1.2)
        ax.set_ylim(len(pairs) - 0.5, -0.5)
        two_lines = any("(" in name(t) for t, _ in cols)
        ax.set_title(f"{metric.upper() if metric in ('auc', 'f1') else metric}: A - B", fontsize=10,
                     pad=32 if two_lines else 20, loc="left")
    fig.legend(handles=[Patch(color="#2f6fb3", label="A better (holds)"), Patch(color="#c0392b", label="B better (holds)"),
                        Patch(color="#d9d9d9", label="does not hold")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / fig.get_size_inches()[1], 1, 1))
    return fig


def full_table(table: pd.DataFrame, filename: str, *, summary: str = "The full table"):
    """``table`` in a collapsible section, with a link that downloads it as ``filename`` (CSV).

    The CSV travels inside the page as a ``data:`` URI, so the link works offline and in the
    downloaded notebook. Returns an :class:`IPython.display.HTML`.
    """
    from IPython.display import HTML

    if not filename.endswith(".csv"):
        raise ValueError(f"full_table: {filename!r} should be a .csv file name")
    csv = table.to_csv(index=False).encode()
    link = (f'<a download="{html.escape(filename, quote=True)}" '
            f'href="data:text/csv;base64,{base64.b64encode(csv).decode()}">download {html.escape(filename)}</a>')
    body = table.to_html(index=False, classes="dataframe sslct-table", border=0)
    return HTML(f'<p>{link} ({len(table)} rows)</p><details><summary>{html.escape(summary)} '
                f'({len(table)} rows)</summary><div style="overflow-x:auto">{body}</div></details>')


#: The columns of a run a reader compares at a glance (the rest: in the collapsible full table).
RUN_KEY_COLUMNS = ("seed", "fold", "best_epoch", "accuracy", "auc", "f1", "train_size", "test_size", "time_s")


def runs_view(rows: pd.DataFrame, filename: str = "runs.csv"):
    """Fine-tuning runs (rows of ``finetune/results.csv``) as a page shows them: the key columns
    (:data:`RUN_KEY_COLUMNS`, metrics to 3 decimals) as a small table, every column in a
    collapsible section with a CSV download (:func:`full_table`). Returns an HTML display object."""
    from IPython.display import HTML

    key = rows[[c for c in RUN_KEY_COLUMNS if c in rows]].round(3)
    small = key.to_html(index=False, classes="dataframe sslct-table", border=0)
    return HTML(small + full_table(rows, filename, summary="Every column of these runs").data)


# ----------------------------------------------------------------------------- reduction curves
def reduction_browser(results: pd.DataFrame, metrics: Sequence[str] = ("auc", "f1")):
    """Figure 5 one panel at a time: pick a task and a metric (live widgets in JupyterLab, a
    frame viewer in the book: :func:`ssl_lib.viewer.browser`)."""
    import matplotlib.pyplot as plt

    from .report import _order_inits, reduction_panel, summary, task_namer, task_rank
    from .viewer import browser

    s = summary(results, metrics)
    name = task_namer(results)
    tasks = sorted(set(s["task"]), key=task_rank)
    if not tasks:
        from IPython.display import Markdown

        return Markdown("*No fine-tuning results to browse.*")
    inits = _order_inits(s["init"])

    def render(t: int, m: int):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        reduction_panel(ax, s, results, tasks[t], metrics[m], inits)
        ax.set_title(f"{name(tasks[t])}: {metrics[m].upper()} (mean ± SD over runs)")
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return fig

    return browser(render, [("task", [name(t) for t in tasks]),
                            ("metric", [m.upper() for m in metrics])], slider=[False, False])


def legibility_problems(fig, *, max_width_px: int = 840, min_points: float = 8.0, dpi: float = 100) -> list[str]:
    """What would make ``fig`` hard to read in the book at 100 % zoom: wider than the page's text
    column at the inline backend's ``dpi`` (so it would be scaled down), or any visible text
    smaller than ``min_points``. Returns readable problem descriptions (empty: fine)."""
    from matplotlib.text import Text

    problems = []
    width = fig.get_size_inches()[0] * dpi
    if width > max_width_px:
        problems.append(f"figure {width:.0f} px wide at {dpi:g} dpi (the page column is {max_width_px} px)")
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and t.get_fontsize() < min_points:
            problems.append(f"text {t.get_text()[:30]!r} at {t.get_fontsize():g} pt")
    return problems
