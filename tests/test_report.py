import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from ssl_lib import report
from ssl_lib.finetune import RESULT_COLUMNS, append_result
from ssl_lib.paths import StudyPaths

matplotlib.use("Agg")


def fake_results(synthetic=True):
    rng = np.random.default_rng(0)
    rows = []
    for task, n, c in (("covid", 425, 2), ("organs", 13952, 11), ("brain", 145, 2)):
        for fraction in (1.0, 0.5):
            for init in ("random", "byol", "swav", "mocov2", "spark"):
                for seed in (0, 1):
                    size = int(n * fraction)
                    rows.append({"task": task, "init": init, "pretrain_epoch": -1, "fraction": fraction, "seed": seed,
                                 "fold": seed if task == "brain" else -1, "best_epoch": 3,
                                 "accuracy": rng.uniform(0.6, 0.9), "auc": rng.uniform(0.7, 0.95),
                                 "f1": rng.uniform(0.5, 0.9), "f1_seed": 0.5, "train_size": size,
                                 "train_per_class": json.dumps([size // c] * c), "profile": "quick",
                                 "synthetic": synthetic})
    return pd.DataFrame(rows)


def test_table2_shapes_and_paper_reference():
    res = fake_results(False)
    t2 = report.table2(res)
    assert t2.shape == (5, 9) and list(t2.index)[0] == "Random" and list(t2.index)[-1] == "SparK"
    assert all(" ± " in v for v in t2.to_numpy().ravel())
    paper = report.paper_table2()
    assert paper.shape == (5, 6)
    assert paper.loc["SparK", ("Brain", "auc")] == "0.919 ± 0.015"
    vs = report.table2_vs_paper(res[res["task"] == "covid"])
    assert vs.shape == (15, 4) and (vs.loc["OrgMNIST", ("ours", "auc")] == "not run").all()
    assert vs.loc[("COVID-19", "BYOL"), ("paper (published)", "auc")] == "0.854 ± 0.001"


def test_table3_and_stopping():
    res = fake_results(False)
    t3 = report.table3(res).reset_index()
    assert t3.shape == (6, 5)
    assert t3.iloc[0]["size"] == "425 (≈ 212 per class)" and t3.iloc[0]["paper size"] == "425 (≈ 212 per class)"
    assert t3.iloc[2]["task"] == "OrgMNIST" and t3.iloc[2]["portion"] == "100%"
    st = report.stopping_table(res)
    assert len(st) == 6 and "random" not in st.columns


def test_table1_is_one_table_of_every_pretraining_and_task_beside_the_paper(tmp_path):
    from ssl_lib.paths import StudyPaths

    res = fake_results(False).assign(arch="resnet18", time_s=90.0)
    for method, params in (("byol", 24_000_000), ("spark", 13_500_000)):
        run = StudyPaths(tmp_path).pretrain(method)
        run.mkdir(parents=True)
        (run / "size.json").write_text(json.dumps({
            "method": method, "trainable_params": params, "peak_memory_gb": 1.25, "memory": "process RSS",
            "train_seconds": 5400.0, "epochs": 20, "steps": 100, "device": "1 x CPU"}))
    t = report.table1(tmp_path, res.assign(synthetic=res["task"].eq("brain")))
    assert list(t.index) == [("pre-training", "BYOL"), ("pre-training", "SparK"), ("fine-tuning", "COVID-19"),
                             ("fine-tuning", "OrgMNIST"), ("fine-tuning", "Brain (synthetic)")]
    t = t.T  # quantities as rows below
    assert t.loc[("parameters (M)", "this study"), ("pre-training", "BYOL")] == "24.0 M"
    assert t.loc[("parameters (M)", "paper"), ("pre-training", "BYOL")] == "70.1 M"
    assert t.loc[("training time", "this study"), ("pre-training", "SparK")] == "1.5 h (20 epochs)"
    assert t.loc[("training time", "paper"), ("pre-training", "SparK")] == "14 d 4 h"
    assert t.loc[("peak memory (GB)", "this study"), ("pre-training", "SparK")] == "1.2 GB RSS"
    # ResNet-18 encoder (11,176,512) + a linear layer 512 x 2 + 2
    assert t.loc[("parameters (M)", "this study"), ("fine-tuning", "COVID-19")] == "11.2 M"
    assert t.loc[("training time", "this study"), ("fine-tuning", "OrgMNIST")] == "1.5 min per run"
    assert t.loc[("training time", "paper"), ("fine-tuning", "OrgMNIST")] == "30.0 min"
    assert not t.isna().any().any()


def test_figure5_panels():
    fig = report.figure5(fake_results())
    assert len(fig.axes) == 6
    assert len(fig.axes[0].containers) == 5  # one error-bar line per init


def test_figure5_axis_is_the_papers_every_fraction_with_images_per_class():
    res = pd.concat([fake_results(False), fake_results(False)[lambda r: r["fraction"] == 0.5].assign(
        fraction=0.25, train_size=lambda r: r["train_size"] // 2)])
    fig = report.figure5(res, tasks=["covid"])
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["100%\n≈212/class", "50%\n≈106/class", "25%\n≈53/class"]  # every fraction, largest first
    assert list(fig.axes[0].get_xticks()) == [0, 1, 2]  # one step apart, as the paper's axis
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "error bars: ± 1 SD over those runs" in caption and "mean over 2 runs" in caption


def mixed_results():
    """OrgMNIST from the synthetic data set, COVID-19 and Brain from real data."""
    res = fake_results(False)
    return res.assign(synthetic=res["task"].eq("organs"))


def test_a_synthetic_task_is_tagged_everywhere_and_a_real_one_nowhere():
    res = mixed_results()
    tagged, real = "OrgMNIST (synthetic)", ("COVID-19 (synthetic)", "Brain (synthetic)")

    def texts(table):
        return " ".join(map(str, [*table.to_numpy().ravel(), *table.index.to_flat_index(),
                                   *table.columns.to_flat_index()]))

    for table in (report.table2(res), report.table2_vs_paper(res), report.headline(res), report.table3(res),
                  report.stopping_table(res)):
        shown = texts(table)
        assert tagged in shown and "COVID-19" in shown and not any(r in shown for r in real), shown[:300]
    assert report.summary(res).groupby("task")["synthetic"].first().to_dict() == {
        "brain": False, "covid": False, "organs": True}
    titles = [ax.get_title() for ax in report.figure5(res).axes]
    assert tagged in titles and "COVID-19" in titles and "Brain" in titles
    comp = pd.DataFrame([{"task": t, "fraction": 1.0, "metric": "auc", "init_a": "random", "init_b": "spark",
                          "n_runs": 3, "n_cases": 100, "mean_a": .6, "mean_b": .7, "sd_a": .01, "sd_b": .01,
                          "diff": -.1, "ci_low": -.2, "ci_high": -.05, "p_holm": .01, "p_run": .01, "case_ci_low": -.2,
                          "case_ci_high": -.05, "holds": True, "verdict": "spark better", "synthetic": t == "organs"}
                         for t in ("covid", "organs")])
    said = report.claims(comp)
    assert said[0].startswith("COVID-19, 100 %") and said[1].startswith("OrgMNIST (synthetic), 100 %")
    assert list(report.stats_table(comp)["task"]) == ["COVID-19", "OrgMNIST (synthetic)"]


def test_synthetic_banner(tmp_path):
    assert "SYNTHETIC" in report.synthetic_banner(fake_results(True))
    assert "every task on this page" in report.synthetic_banner(fake_results(True))
    assert report.REAL_DATA_PAGE in report.synthetic_banner(fake_results(True))
    assert report.synthetic_banner(fake_results(False)) == ""
    mixed = pd.concat([fake_results(True).assign(task="organs"), fake_results(False).assign(task="covid")])
    banner = report.synthetic_banner(mixed)
    assert report.synthetic_tasks(mixed) == ["OrgMNIST"]
    assert "SYNTHETIC DATA for OrgMNIST (the results for COVID-19 come from real data)" in banner
    append_result(StudyPaths(tmp_path).results, dict(fake_results(True).iloc[0]))
    assert report.is_synthetic(tmp_path)
    assert list(report.load_results(tmp_path).columns) == RESULT_COLUMNS


def test_run_level_views():
    pred = pd.DataFrame({"index": range(4), "label": [0, 1, 1, 0], "pred": [0, 1, 0, 0], "prob_0": [.9, .2, .6, .7],
                         "prob_1": [.1, .8, .4, .3]})
    cm = report.confusion(pred, ["NonCOVID", "COVID"])
    assert cm.shape == (2, 2) and cm.loc["COVID", "NonCOVID"] == 1
    curves = pd.DataFrame({"epoch": [0, 1, 2], "phase": ["linear", "linear", "full"], "train_loss": [1, .8, .5],
                           "val_accuracy": [.5, .6, .7], "init": "spark", "fraction": 1.0, "seed": 0})
    assert len(report.plot_curves(curves).axes) == 2
    assert len(report.plot_confusion(pred, ["a", "b"]).axes) == 1
    defs = report.metric_definitions()
    assert len(defs) == 4


def test_stats_table_view_and_claims():
    comp = pd.DataFrame([
        {"task": "covid", "fraction": 0.5, "metric": "auc", "init_a": "random", "init_b": "spark", "n_runs": 3,
         "n_cases": 180, "mean_a": 0.6, "mean_b": 0.7, "sd_a": 0.02, "sd_b": 0.01, "diff": -0.1, "ci_low": -0.2,
         "ci_high": -0.01, "p_holm": 0.01, "p_run": 0.002, "case_ci_low": -0.15, "case_ci_high": -0.05, "holds": True,
         "verdict": "spark better"},
        {"task": "covid", "fraction": 0.5, "metric": "f1", "init_a": "random", "init_b": "spark", "n_runs": 3,
         "n_cases": 180, "mean_a": 0.6, "mean_b": 0.62, "sd_a": 0.02, "sd_b": 0.01, "diff": -0.02, "ci_low": -0.2,
         "ci_high": 0.1, "p_holm": 0.5, "p_run": 0.03, "case_ci_low": -0.05, "case_ci_high": -0.01, "holds": False,
         "verdict": "no difference shown"}])
    t = report.stats_table(comp)
    assert t.loc[0, "95% CI (runs and test cases)"] == "[-0.200, -0.010]" and t.loc[0, "portion"] == "50%"
    assert t.loc[0, "A (mean ± SD)"] == "0.600 ± 0.020" and t.loc[1, "p (Holm)"] == "0.5"
    assert t.loc[1, "p (runs only)"] == "0.03" and t.loc[1, "95% CI (test cases only)"] == "[-0.050, -0.010]"
    assert len(report.stats_table(comp, only_holding=True)) == 1
    said = report.claims(comp)  # only the comparison that holds becomes a sentence
    assert len(said) == 1 and "SparK beats Random in AUC by 0.100" in said[0] and "[0.010, 0.200]" in said[0]
    assert "over runs and test cases" in said[0] and "3 paired runs, 180 test cases per run, Holm p = 0.01" in said[0]


def test_headline_is_paired_by_run_with_spread():
    res = fake_results()
    num = report.headline(res, numeric=True)
    assert set(num["fraction"]) == {1.0, 0.5} and set(num["init"]) == {"byol", "swav", "mocov2", "spark"}
    assert len(num) == 3 * 2 * 4 and (num["n"] == 2).all()
    r = num[(num["task"] == "covid") & (num["fraction"] == 0.5) & (num["init"] == "spark")].iloc[0]
    g = res[(res["task"] == "covid") & (res["fraction"] == 0.5)]
    d = (g[g["init"] == "spark"].set_index("seed")["auc"] - g[g["init"] == "random"].set_index("seed")["auc"])
    assert r["diff"] == pytest.approx(d.mean()) and r["diff_sd"] == pytest.approx(d.std(ddof=1))
    shown = report.headline(res).reset_index()
    assert " ± " in shown.iloc[0]["pre-trained - random"] and shown.iloc[0]["portion"] == "100%"


def test_stopping_table_reads_the_chosen_f1():
    res = fake_results().assign(f1_seed=0.9)
    assert not report.stopping_table(res).filter(like="stop").any().any()  # f1_seed (the paper's) by default
    low = res.assign(f1=0.1)
    assert report.stopping_table(low, metric="f1").filter(like="stop").all().all()
