"""Results tables and figures (Wolf et al. 2023, Tables 2-3, Figure 5) from the results tables.

Everything here reads the tables fine-tuning wrote (``finetune/results.csv``, curves,
predictions) through the results layer :mod:`ssl_lib.runs`, never the trainer or in-memory state
of another step. The paper's own published numbers are
kept as reference data (:data:`PAPER_TABLE2`, :data:`PAPER_TABLE3`), clearly labelled, so the
book can show them beside ours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import runs
from .metrics import metric_definitions  # noqa: F401  (re-exported for the book)
from .reduction import STOP_F1
from .baselines import BASELINE_INITS
from .pretrain.registry import init_label, init_order, order_inits
from .runs import load_curves  # noqa: F401  (re-exported for the notebooks)
from .runs import synthetic_task_keys
from .tasks import TASKS, order_tasks

#: Initialisations in display order and their labels, from the method registry (ImageNet included:
#: it orders and labels what a study ran; which inits a study has comes from its results table).
INIT_ORDER = list(init_order(imagenet=True))
INIT_LABELS = {i: init_label(i) for i in INIT_ORDER}
TASK_LABELS = {k: v.paper_name for k, v in TASKS.items()}

# ----------------------------------------------------------------------------- the paper's numbers
#: The paper's Table 2 (ResNet50, 100 % training data, mean ± std over five runs) - THE PAPER'S
#: PUBLISHED NUMBERS, reference only; not produced by this code.
PAPER_TABLE2 = pd.DataFrame(
    [
        # task, init, auc_mean, auc_std, f1_mean, f1_std
        ("covid", "random", 0.737, 0.033, 0.679, 0.033), ("organs", "random", 0.971, 0.001, 0.755, 0.003),
        ("brain", "random", 0.678, 0.037, 0.447, 0.157),
        ("covid", "byol", 0.854, 0.001, 0.767, 0.002), ("organs", "byol", 0.979, 0.005, 0.790, 0.005),
        ("brain", "byol", 0.734, 0.142, 0.606, 0.062),
        ("covid", "swav", 0.807, 0.006, 0.744, 0.013), ("organs", "swav", 0.972, 0.003, 0.769, 0.003),
        ("brain", "swav", 0.734, 0.046, 0.609, 0.072),
        ("covid", "mocov2", 0.824, 0.005, 0.780, 0.009), ("organs", "mocov2", 0.981, 0.001, 0.817, 0.001),
        ("brain", "mocov2", 0.825, 0.010, 0.770, 0.064),
        ("covid", "spark", 0.828, 0.006, 0.776, 0.009), ("organs", "spark", 0.981, 0.001, 0.808, 0.003),
        ("brain", "spark", 0.919, 0.015, 0.812, 0.080),
    ],
    columns=["task", "init", "auc_mean", "auc_std", "f1_mean", "f1_std"],
)
#: The inits of the paper's tables, in display order.
PAPER_INITS = [i for i in INIT_ORDER if i in set(PAPER_TABLE2["init"])]
#: The paper's Table 3 (training set size per reduction step) - THE PAPER'S PUBLISHED NUMBERS.
#: OrgMNIST 25 % is printed as 2488 in the paper (25 % of 13,952 is 3,488: likely a typo).
PAPER_TABLE3 = pd.DataFrame(
    [("covid", 1.0, 425, 212), ("covid", 0.75, 318, 190), ("covid", 0.5, 212, 106), ("covid", 0.25, 106, 53),
     ("organs", 1.0, 13952, 1268), ("organs", 0.75, 10464, 951), ("organs", 0.5, 6976, 634),
     ("organs", 0.25, 2488, 226), ("organs", 0.1, 1395, 126), ("organs", 0.05, 697, 63),
     ("brain", 1.0, 145, 72), ("brain", 0.75, 108, 54)],
    columns=["task", "fraction", "size", "per_class"],
)


def _order_inits(inits) -> list[str]:
    return order_inits(inits)


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if pd.isna(mean):
        return "n/a"
    if pd.isna(std):  # a single run: no spread to show
        return f"{mean:.{digits}f} (1 run)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ----------------------------------------------------------------------------- reading
def load_results(output_dir: str | os.PathLike, profile: str | None = None) -> pd.DataFrame:
    """The results table; with several rows for one run key, the last one counts (:func:`ssl_lib.runs.load_results`)."""
    from .tasks import use_study_tasks

    use_study_tasks(output_dir)  # the study's user tasks become known here
    return runs.load_results(output_dir, profile)


def is_synthetic(output_dir_or_results: str | os.PathLike | pd.DataFrame) -> bool:
    """True if any result row came from a synthetic store (the row's ``synthetic`` column: its store's meta)."""
    if isinstance(output_dir_or_results, pd.DataFrame):
        return bool(synthetic_task_keys(output_dir_or_results))
    res = runs.read_results(output_dir_or_results)
    return is_synthetic(res) if len(res) else False


def synthetic_tasks(output_dir_or_results) -> list[str]:
    """The tasks (display names, in table order) whose result rows came from a synthetic store."""
    res = output_dir_or_results if isinstance(output_dir_or_results, pd.DataFrame) \
        else runs.read_results(output_dir_or_results)
    synthetic = synthetic_task_keys(res)
    return [TASK_LABELS.get(t, t) for t in dict.fromkeys(res["task"]) if t in synthetic] if len(res) else []


#: What follows a task's name wherever its numbers came from the synthetic data set.
SYNTHETIC_TAG = " (synthetic)"


def task_namer(frame: pd.DataFrame | None) -> Callable[[str], str]:
    """How ``frame``'s tasks are named on a page: the paper's name (a user task's own), followed
    by :data:`SYNTHETIC_TAG` for a task whose rows are synthetic, so that a synthetic task is
    tagged in every table row, figure title and claim sentence, and a real one never is."""
    synthetic = synthetic_task_keys(frame)
    return lambda task: TASK_LABELS.get(task, task) + (SYNTHETIC_TAG if task in synthetic else "")


def task_rank(task: str) -> tuple:
    """Sort key of a task: the paper's tasks in the paper's order, then the others by name."""
    order = list(TASK_LABELS)
    return (order.index(task), "") if task in order else (len(order), task)


#: Where a reader learns to run the study on real data (relative to a notebook page of the book).
REAL_DATA_PAGE = "../book/real_data.html"


def synthetic_banner(output_dir_or_results) -> str:
    """An HTML banner for the top of a results page with synthetic rows ('' if every row is real).

    It names the synthetic tasks, says that the others are real where there are others, and links
    to the book's "Run it on real data" page.
    """
    res = output_dir_or_results if isinstance(output_dir_or_results, pd.DataFrame) \
        else runs.read_results(output_dir_or_results)
    names = synthetic_tasks(res)
    if not names:
        return ""
    real = [TASK_LABELS.get(t, t) for t in dict.fromkeys(res["task"]) if TASK_LABELS.get(t, t) not in names]
    which = ("every task on this page" if not real else
             f"{', '.join(names)} (the results for {', '.join(real)} come from real data)")
    return ('<div style="border:3px solid #c00;background:#fee;padding:8px;font-weight:bold">'
            f"SYNTHETIC DATA for {which}: these numbers come from the built-in synthetic CT data set. "
            "They test the pipeline; they say nothing about the paper's claims. "
            f'<a href="{REAL_DATA_PAGE}">Run it on real data</a>.</div>')


# ----------------------------------------------------------------------------- Table 1
#: The paper's Table 1, fine-tuning part (ResNet50 + one linear layer, one RTX 3090, until the
#: best epoch) - THE PAPER'S PUBLISHED NUMBERS; its pre-training part is each method's
#: ``paper`` entry in the registry (:mod:`ssl_lib.pretrain`).
PAPER_TABLE1_FINETUNE = {"covid": (23.5, 14.4, 6 * 60), "organs": (23.5, 14.4, 30 * 60), "brain": (23.5, 14.4, 2 * 60)}
TABLE1_ROWS = ("parameters (M)", "peak memory (GB)", "training time")


def _duration(seconds: float) -> str:
    """A training time as the paper writes it ("10 d 12 h", "6 min"), seconds below a minute."""
    if pd.isna(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    days, hours = divmod(seconds / 3600, 24)
    return f"{days:.0f} d {hours:.0f} h" if days >= 1 else f"{hours:.1f} h"


def _finetune_params(arch: str, n_classes: int) -> int:
    """Trainable parameters of fine-tuning: the encoder (no fc) plus one linear layer."""
    from .models.backbone import build_backbone, num_features

    encoder = sum(p.numel() for p in build_backbone(arch).parameters())  # its fc is an identity
    return encoder + num_features(arch) * n_classes + n_classes


def table1(output_dir: str | os.PathLike, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's Table 1 as one table: the cost of each pre-training and of fine-tuning per task,
    this study's beside the paper's.

    Rows: ("pre-training", method) for every method whose run wrote ``size.json``
    (:func:`ssl_lib.pretrain.run.write_size`) and ("fine-tuning", task) for every task of
    ``results`` (the paper's columns, as rows so that the table fits a page); columns (quantity,
    "this study" | "paper"). Pre-training time is the sum of its epochs; fine-tuning time the
    mean over the runs on all training data (the paper: until the best epoch); peak memory is
    GPU memory on a GPU and the process's peak resident memory on a CPU (the pre-training's
    ``memory`` field says which), not measured for fine-tuning runs.
    """
    from .paths import StudyPaths
    from .pretrain.registry import get_method, method_names
    from .pretrain.run import SIZE_FILE

    paths = StudyPaths(output_dir)
    results = load_results(output_dir) if results is None else results
    columns, ours, paper = [], [], []
    for method in method_names():
        size_file = paths.pretrain(method) / SIZE_FILE
        if not size_file.is_file():
            continue
        size = json.loads(size_file.read_text())
        spec = get_method(method).paper or {}
        columns.append(("pre-training", INIT_LABELS.get(method, method)))
        rss = " RSS" if "RSS" in str(size.get("memory", "")) else ""  # a CPU's resident memory, not a GPU's
        ours.append((f"{size['trainable_params'] / 1e6:.1f} M", f"{size['peak_memory_gb']:.1f} GB{rss}",
                     f"{_duration(size['train_seconds'])} ({size['epochs']} epochs)"))
        paper.append((f"{spec['params_m']:g} M" if "params_m" in spec else "—",
                      f"{spec['gpu_memory_gb']:g} GB" if "gpu_memory_gb" in spec else "—",
                      _duration(spec["hours"] * 3600) if "hours" in spec else "—"))  # 900 epochs (the page says)
    name = task_namer(results)
    for task in order_tasks(results["task"]) if len(results) else []:
        grp = results[results["task"] == task]
        full = grp[np.isclose(grp["fraction"].astype(float), grp["fraction"].astype(float).max())]
        n_classes = len(json.loads(full["train_per_class"].iloc[0]))
        columns.append(("fine-tuning", name(task)))
        ours.append((f"{_finetune_params(str(full['arch'].iloc[0]), n_classes) / 1e6:.1f} M", "not measured",
                     f"{_duration(full['time_s'].astype(float).mean())} per run"))
        pub = PAPER_TABLE1_FINETUNE.get(task)
        paper.append(("—", "—", "—") if pub is None else (f"{pub[0]:g} M", f"{pub[1]:g} GB", _duration(pub[2])))
    cols = pd.MultiIndex.from_tuples([(q, who) for q in TABLE1_ROWS for who in ("this study", "paper")],
                                     names=["quantity", "source"])
    table = pd.DataFrame(index=pd.MultiIndex.from_tuples(columns, names=["stage", "of"]), columns=cols, dtype=object)
    for row, mine, theirs in zip(columns, ours, paper):
        for q, a, b in zip(TABLE1_ROWS, mine, theirs):
            table.loc[row, (q, "this study")] = a
            table.loc[row, (q, "paper")] = b
    return table


# ----------------------------------------------------------------------------- Table 2
def summary(results: pd.DataFrame, metrics: Sequence[str] = ("auc", "f1", "accuracy")) -> pd.DataFrame:
    """Long table: task, fraction, init, metric, mean, std (ddof=1), n runs (and ``synthetic`` per
    task where ``results`` has that column)."""
    if results.empty:
        return pd.DataFrame(columns=["task", "fraction", "init", "metric", "mean", "std", "n"])
    long = results.melt(id_vars=["task", "fraction", "init"], value_vars=list(metrics), var_name="metric")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    out = long.groupby(["task", "fraction", "init", "metric"], sort=False)["value"].agg(["mean", "std", "count"])
    out = out.reset_index().rename(columns={"count": "n"})
    synthetic = synthetic_task_keys(results)
    if "synthetic" in results:
        out["synthetic"] = out["task"].isin(synthetic)
    return out


def table2(results: pd.DataFrame, *, fraction: float = 1.0, metrics: Sequence[str] = ("auc", "f1", "accuracy"),
           tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 2: "mean ± std" per init (rows) and task x metric (columns) at ``fraction``."""
    res = results[np.isclose(results["fraction"].astype(float), fraction)]
    s = summary(res, metrics)
    tasks = [t for t in (tasks or order_tasks(s["task"])) if t in set(s["task"])]
    inits = _order_inits(s["init"])
    name = task_namer(results)
    cols = pd.MultiIndex.from_product([[name(t) for t in tasks], list(metrics)], names=["task", "metric"])
    table = pd.DataFrame(index=pd.Index([INIT_LABELS.get(i, i) for i in inits], name="init"), columns=cols, dtype=object)
    for r in s.itertuples(index=False):
        if r.task in tasks:
            table.loc[INIT_LABELS.get(r.init, r.init), (name(r.task), r.metric)] = _fmt(r.mean, r.std)
    return table.fillna("n/a")


def paper_table2() -> pd.DataFrame:
    """The paper's published Table 2 in the same shape as :func:`table2` (AUC, F1)."""
    cols = pd.MultiIndex.from_product([[TASK_LABELS[t] for t in TASKS], ["auc", "f1"]], names=["task", "metric"])
    table = pd.DataFrame(index=pd.Index([INIT_LABELS[i] for i in PAPER_INITS], name="init"), columns=cols, dtype=object)
    for r in PAPER_TABLE2.itertuples(index=False):
        table.loc[INIT_LABELS[r.init], (TASK_LABELS[r.task], "auc")] = _fmt(r.auc_mean, r.auc_std)
        table.loc[INIT_LABELS[r.init], (TASK_LABELS[r.task], "f1")] = _fmt(r.f1_mean, r.f1_std)
    return table


def table2_vs_paper(results: pd.DataFrame, *, fraction: float = 1.0) -> pd.DataFrame:
    """Ours beside the paper's (labelled "paper (published)") for AUC and F1 of every init and task."""
    s = summary(results[np.isclose(results["fraction"].astype(float), fraction)], ("auc", "f1"))
    name = task_namer(results)
    rows = []
    for r in PAPER_TABLE2.itertuples(index=False):
        for metric in ("auc", "f1"):
            ours = s[(s["task"] == r.task) & (s["init"] == r.init) & (s["metric"] == metric)]
            rows.append({"task": name(r.task), "init": INIT_LABELS[r.init], "metric": metric,
                         "ours": _fmt(ours["mean"].iloc[0], ours["std"].iloc[0]) if len(ours) else "not run",
                         "paper (published)": _fmt(getattr(r, f"{metric}_mean"), getattr(r, f"{metric}_std"))})
    table = pd.DataFrame(rows).pivot(index=["task", "init"], columns="metric", values=["ours", "paper (published)"])
    order = [(name(t), INIT_LABELS[i]) for t in TASKS for i in PAPER_INITS]
    return table.reindex(order)


def headline(results: pd.DataFrame, metric: str = "auc", *, numeric: bool = False) -> pd.DataFrame:
    """Pre-trained minus random init per task at 100 % and at the task's smallest fraction.

    Paired by run (seed, fold): ``diff`` is the mean of the per-run differences and ``diff_sd``
    their SD. ``numeric=False`` gives "mean ± SD" strings for the book; ``numeric=True`` the
    numbers (task, fraction, init, random, random_sd, mean, sd, diff, diff_sd, n).
    """
    rows = []
    if results.empty:
        return pd.DataFrame()
    res = results.drop_duplicates(["task", "init", "fraction", "seed", "fold"], keep="last")
    for task, grp in res.groupby("task", sort=False):
        fr = sorted({float(f) for f in grp["fraction"]})
        for fraction in dict.fromkeys([1.0 if 1.0 in fr else fr[-1], fr[0]]):
            g = grp[np.isclose(grp["fraction"].astype(float), fraction)]
            base = g[g["init"] == "random"].set_index(["seed", "fold"])[metric].astype(float)
            if base.empty:
                continue
            for init in _order_inits(g["init"]):
                if init == "random":
                    continue
                v = g[g["init"] == init].set_index(["seed", "fold"])[metric].astype(float)
                d = (v - base).dropna()
                rows.append({"task": task, "fraction": fraction, "init": init, "random": base.mean(),
                             "random_sd": base.std(ddof=1), "mean": v.mean(), "sd": v.std(ddof=1),
                             "diff": d.mean(), "diff_sd": d.std(ddof=1), "n": len(d)})
    out = pd.DataFrame(rows)
    if numeric or out.empty:
        return out
    return pd.DataFrame({
        "task": out["task"].map(task_namer(results)), "portion": (out["fraction"] * 100).map("{:g}%".format),
        "init": out["init"].map(lambda i: INIT_LABELS.get(i, i)),
        f"random {metric.upper()}": [_fmt(m, s) for m, s in zip(out["random"], out["random_sd"])],
        f"pre-trained {metric.upper()}": [_fmt(m, s) for m, s in zip(out["mean"], out["sd"])],
        "pre-trained - random": [_fmt(m, s) for m, s in zip(out["diff"], out["diff_sd"])],
        "runs": out["n"]}).set_index(["task", "portion", "init"])  # labelled rows, no running number


# ----------------------------------------------------------------------------- Table 3
def table3(results: pd.DataFrame) -> pd.DataFrame:
    """Table 3: training set size per task and fraction ("N (≈ k per class)"), beside the paper's.

    N is the mean over runs (runs of one fraction differ only by rounding per CV fold); k is N
    divided by the number of classes (the paper's "≈ per class"); ``per_class`` gives our mean
    actual counts per class.
    """
    rows = []
    if results.empty:
        return pd.DataFrame(columns=["task", "portion", "size", "per_class", "paper size"]).set_index(["task", "portion"])
    name = task_namer(results)
    for (task, fraction), grp in results.groupby(["task", "fraction"], sort=False):
        counts = np.array([json.loads(x) for x in grp["train_per_class"]], dtype=float)
        n = grp["train_size"].astype(float).mean()
        k = n / counts.shape[1]
        paper = PAPER_TABLE3[(PAPER_TABLE3["task"] == task) & np.isclose(PAPER_TABLE3["fraction"], float(fraction))]
        rows.append({"task": name(task), "_t": task_rank(task), "fraction": float(fraction),
                     "portion": f"{float(fraction) * 100:g}%", "size": f"{n:,.0f} (≈ {k:,.0f} per class)",
                     "per_class": " / ".join(f"{c:.0f}" for c in counts.mean(axis=0)),
                     "paper size": (f"{int(paper['size'].iloc[0]):,} (≈ {int(paper['per_class'].iloc[0]):,} per class)"
                                    if len(paper) else "-")})
    out = pd.DataFrame(rows)
    out = out.sort_values(["_t", "fraction"], ascending=[True, False]).drop(columns=["_t", "fraction"])
    return out.set_index(["task", "portion"])  # labelled rows, no running number


def stopping_table(results: pd.DataFrame, threshold: float = STOP_F1, metric: str = "f1_seed") -> pd.DataFrame:
    """Mean ``metric`` per task, fraction and pre-training method, and whether the paper's rule stops there
    (the baselines, random and ImageNet, do not count, as in :func:`ssl_lib.reduction.stop_reducing`).

    ``metric``: ``"f1_seed"`` (default), the F1 of the authors' code that the paper's rule read, or
    ``"f1"`` (ours).
    """
    res = results[~results["init"].isin(BASELINE_INITS)]
    if res.empty:
        return pd.DataFrame(columns=["task", "fraction", "stop"])
    means = res.groupby(["task", "fraction", "init"])[metric].mean().unstack("init")
    means["stop (all < %.2f)" % threshold] = (means < threshold).all(axis=1)
    out = means.reset_index()
    out["task"] = out["task"].map(task_namer(results))
    return out


# ----------------------------------------------------------------------------- Figure 5
def per_class_sizes(results: pd.DataFrame, task: str) -> dict[float, float]:
    """``fraction -> mean training images per class`` of ``task`` (Table 3's "≈ k per class": the
    mean training set size over the runs divided by the number of classes)."""
    out = {}
    for fraction, grp in results[results["task"] == task].groupby("fraction"):
        if "train_per_class" in grp and grp["train_per_class"].notna().all():
            n_classes = len(json.loads(grp["train_per_class"].iloc[0]))
            out[float(fraction)] = grp["train_size"].astype(float).mean() / max(n_classes, 1)
    return out


def fraction_steps(results: pd.DataFrame, task: str) -> dict[float, int]:
    """``fraction -> x position`` of Figure 5: the reduction steps ``task`` ran, largest first, one
    step apart (the paper's axis lists the steps; 25 % and 10 % would touch on a linear one)."""
    fractions = sorted({float(f) for f in results.loc[results["task"] == task, "fraction"]}, reverse=True)
    return {f: k for k, f in enumerate(fractions)}


def fraction_axis(ax, results: pd.DataFrame, task: str) -> None:
    """The paper's x-axis of Figure 5 (:func:`fraction_steps`): each step labelled with its
    percentage and approximate images per class."""
    steps, per_class = fraction_steps(results, task), per_class_sizes(results, task)
    ax.set_xticks(list(steps.values()),
                  [f"{f * 100:g}%" + (f"\n≈{per_class[f]:,.0f}/class" if f in per_class else "") for f in steps],
                  fontsize=8)
    ax.set_xlim(-0.4, max(len(steps) - 0.6, 0.4))
    ax.set_xlabel("training data (reduction steps)", fontsize=9)


def spread_caption(results: pd.DataFrame) -> str:
    """What Figure 5's error bars are: the SD over the runs of each point, and how many runs."""
    runs = results.groupby(["task", "fraction", "init"]).size()
    if runs.empty:
        return ""
    if runs.max() == 1:
        return "Points: one run each (no error bars: one run has no spread)."
    n = f"{runs.min()}" if runs.min() == runs.max() else f"{runs.min()}-{runs.max()}"
    return f"Points: mean over {n} runs (seeds or CV folds); error bars: ± 1 SD over those runs."


def reduction_panel(ax, summary_table: pd.DataFrame, results: pd.DataFrame, task: str, metric: str,
                    inits: Sequence[str]) -> None:
    """One panel of Figure 5 on ``ax``: ``metric`` of ``task`` per init (mean ± SD over runs, from
    :func:`summary`) at each reduction step (:func:`fraction_axis`); random init dashed."""
    s = summary_table
    steps = fraction_steps(results, task)
    for init in inits:
        d = s[(s["task"] == task) & (s["init"] == init) & (s["metric"] == metric)].sort_values("fraction")
        if len(d):
            ax.errorbar(d["fraction"].astype(float).map(steps), d["mean"], yerr=d["std"].fillna(0), marker="o",
                        capsize=3, label=INIT_LABELS.get(init, init), linestyle="--" if init == "random" else "-")
    fraction_axis(ax, results, task)
    ax.set_ylabel(metric.upper() if metric == "auc" else metric.capitalize())
    ax.grid(alpha=0.3)


def figure5(results: pd.DataFrame, metrics: Sequence[str] = ("auc", "f1"), *, tasks: Sequence[str] | None = None,
            include_random: bool = True):
    """Figure 5: metric vs training fraction per init (mean ± std over runs), one panel per task x metric."""
    import matplotlib.pyplot as plt

    s = summary(results, metrics)
    name = task_namer(results)
    tasks = [t for t in (tasks or order_tasks(s["task"])) if t in set(s["task"])] or sorted(set(s["task"]))
    fig, axes = plt.subplots(len(metrics), max(len(tasks), 1), figsize=(2.8 * max(len(tasks), 1), 2.9 * len(metrics)),
                             squeeze=False)
    inits = [i for i in _order_inits(s["init"]) if include_random or i != "random"]
    for r, metric in enumerate(metrics):
        for c, task in enumerate(tasks):
            reduction_panel(axes[r][c], s, results, task, metric, inits)
            axes[r][c].set_title(name(task))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 0.02), fontsize=9)
    fig.text(0.5, 0.0, spread_caption(results), ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return fig


# ----------------------------------------------------------------------------- one run
def plot_curves(curves: pd.DataFrame, metric: str = "val_accuracy"):
    """Training loss and a validation metric per epoch, one line per run (init, fraction, seed)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.2, 3.4))
    for key, grp in curves.groupby(["init", "fraction", "seed"], sort=False):
        label = f"{INIT_LABELS.get(key[0], key[0])} {key[1] * 100:g}% s{key[2]}"
        a.plot(grp["epoch"], grp["train_loss"], marker=".", label=label)
        b.plot(grp["epoch"], grp[metric], marker=".", label=label)
    lin = curves.loc[curves["phase"] == "linear", "epoch"]
    for ax in (a, b):
        if len(lin):
            ax.axvspan(-0.5, lin.max() + 0.5, color="0.9", zorder=0)
        ax.set_xlabel("epoch (grey: linear layer only)")
        ax.grid(alpha=0.3)
    a.set_ylabel("training loss")
    b.set_ylabel(metric.replace("_", " "))
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion(predictions: pd.DataFrame, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Confusion matrix (rows: true, columns: predicted) of one or more prediction tables."""
    from sklearn.metrics import confusion_matrix

    n = sum(c.startswith("prob_") for c in predictions.columns)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    cm = confusion_matrix(predictions["label"], predictions["pred"], labels=list(range(n)))
    return pd.DataFrame(cm, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


def plot_confusion(predictions: pd.DataFrame, class_names: Sequence[str] | None = None):
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = confusion(predictions, class_names)
    side = max(3.2, 1.6 + 0.5 * len(cm))  # room for the class names and the title
    fig, ax = plt.subplots(figsize=(side, side))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, square=True, annot_kws={"fontsize": 9})
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45 if len(cm) > 2 else 0, ha="right" if len(cm) > 2 else "center")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_title("test confusion matrix", fontsize=10, pad=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- statistics
def stats_table(comparisons: pd.DataFrame, *, only_holding: bool = False) -> pd.DataFrame:
    """Readable view of :func:`ssl_lib.stats.compare_inits`.

    Means ± SD over runs, the difference with the decision's 95 % interval (over runs and test
    cases) and its Holm-adjusted p, each source of noise alone (the paired t-test over runs and
    the bootstrap interval over test cases, for description) and the verdict.
    """
    if comparisons.empty:
        return comparisons
    c = comparisons[comparisons["holds"].astype(bool)] if only_holding else comparisons

    def ci(lo, hi):
        return [("n/a" if pd.isna(a) or pd.isna(b) else f"[{a:+.3f}, {b:+.3f}]") for a, b in zip(lo, hi)]

    def pv(col):
        return c[col].map(lambda p: "n/a" if pd.isna(p) else f"{p:.3g}") if col in c else "n/a"

    out = pd.DataFrame({
        "task": c["task"].map(task_namer(c)), "portion": (c["fraction"] * 100).map("{:g}%".format),
        "metric": c["metric"], "A": c["init_a"].map(lambda i: INIT_LABELS.get(i, i)),
        "B": c["init_b"].map(lambda i: INIT_LABELS.get(i, i)), "runs": c["n_runs"],
        "A (mean ± SD)": [_fmt(m, s) for m, s in zip(c["mean_a"], c["sd_a"])] if "sd_a" in c else c["mean_a"],
        "B (mean ± SD)": [_fmt(m, s) for m, s in zip(c["mean_b"], c["sd_b"])] if "sd_b" in c else c["mean_b"],
        "A - B": c["diff"].map("{:+.3f}".format),
        "95% CI (runs and test cases)": ci(c["ci_low"], c["ci_high"]),
        "p (Holm)": pv("p_holm"),
        "p (runs only)": pv("p_run"),
        "95% CI (test cases only)": ci(c["case_ci_low"], c["case_ci_high"]) if "case_ci_low" in c else "n/a",
        "verdict": c["verdict"],
    })
    return out.reset_index(drop=True)


def claims(comparisons: pd.DataFrame) -> list[str]:
    """One sentence per difference that holds (Holm-adjusted two-level test over runs and test cases), no other."""
    if comparisons.empty:
        return []
    out = []
    name = task_namer(comparisons)
    for r in comparisons[comparisons["holds"].astype(bool)].itertuples(index=False):
        win, lose = (r.init_a, r.init_b) if r.diff > 0 else (r.init_b, r.init_a)
        lo, hi = sorted((abs(r.ci_low), abs(r.ci_high)))  # a difference that holds has an interval off 0
        out.append(f"{name(r.task)}, {r.fraction * 100:g} % of the training data: "
                   f"{INIT_LABELS.get(win, win)} beats {INIT_LABELS.get(lose, lose)} in {r.metric.upper()} by "
                   f"{abs(r.diff):.3f} (95 % CI over runs and test cases [{lo:.3f}, {hi:.3f}], {r.n_runs} paired "
                   f"runs, {r.n_cases} test cases per run, Holm p = {r.p_holm:.3g}).")
    return out


def save_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV (for the book's generated pages)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    return path
