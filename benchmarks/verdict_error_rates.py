"""False-positive rate and power of the verdict rules of :mod:`ssl_lib.stats` (issue 22), by simulation.

Simulated paired studies (:func:`ssl_lib.stats.simulate_predictions`: two inits, per-case
predictions on one test set of ``--n-cases`` cases, half of them positive, base AUC 0.8) go
through the code path of :func:`ssl_lib.stats.compare_inits` (:func:`~ssl_lib.stats.case_bootstrap`
and :func:`~ssl_lib.stats.decide`) under each rule of :data:`ssl_lib.stats.RULES`:

* false-positive rate (a verdict either way when the inits are equally good) under (a) ``runs``:
  runs vary (run SD 0.03 of the run's quality), each run errs on other cases; (b) ``cases``: runs
  nearly identical (run SD 0.002, as cached frozen features give) and each init errs on its own
  fixed cases; (c) ``both``; ``cv``: (a) with each run on its own test set (cross-validation);
  and two checks of robustness: ``a+``, (a) with run SD 0.06 (run noise dominates more), and
  ``c+``, (c) with run SD 0.045 (run noise and shared case noise about equal);
* power (a verdict that the better init is better) at AUC gains ``--effects`` under (a), (b), (c)
  and ``cv``.

Rates are at alpha 0.05 for one comparison (no Holm: one pair). Prints the table and writes it in
long form as CSV to ``--out``.

Usage: ``python benchmarks/verdict_error_rates.py [--reps 1000] [--n-boot 400] [--runs 3 5]
[--n-cases 200] [--effects 0.05 0.10] [--out verdict_error_rates.csv]``. The committed output
``benchmarks/results/verdict_error_rates.csv`` (quoted by the methods page and :mod:`ssl_lib.stats`)
is ``--reps 2000 --n-boot 200 --out benchmarks/results/verdict_error_rates.csv``, about 20 minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_lib import stats  # noqa: E402

NULLS = {"a": {"scenario": "runs"}, "b": {"scenario": "cases"}, "c": {"scenario": "both"},
         "cv": {"scenario": "runs", "folds": True},
         "a+": {"scenario": "runs", "run_sd": 0.06},    # run noise dominates more
         "c+": {"scenario": "both", "run_sd": 0.045}}  # run and shared case noise about equal
POWER = {"a": {"scenario": "runs"}, "b": {"scenario": "cases"}, "c": {"scenario": "both"},
         "cv": {"scenario": "runs", "folds": True}}


def measure(reps: int, n_boot: int, runs: list[int], n_cases: int, effects: list[float], seed: int) -> pd.DataFrame:
    """Long table: rule, n_runs, what (fpr | power), scenario, effect, metric, rate."""
    rows = []
    for r in runs:
        jobs = [("fpr", k, 0.0, kw) for k, kw in NULLS.items()]
        jobs += [("power", k, e, kw) for e in effects for k, kw in POWER.items() if k != "cv"]
        jobs += [("power", "cv", e, POWER["cv"]) for e in effects]  # last: the other cells keep their seeds
        for j, (what, key, effect, kw) in enumerate(jobs):
            t0 = time.time()
            rates = stats.simulate_error_rates(effect, rules=stats.RULES, n_runs=r, n_cases=n_cases, reps=reps,
                                               n_boot=n_boot, seed=seed + 1000 * r + j, **kw)
            for rule, row in rates.iterrows():
                for metric, rate in row.items():
                    rows.append({"rule": rule, "n_runs": r, "what": what, "scenario": key, "effect": effect,
                                 "metric": metric, "rate": rate, "reps": reps})
            print(f"  {r} runs, {what} {key} {effect:+.2f}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per rule and number of runs; columns ``FPR (a) auc`` ... ``power (c) +0.10 auc``."""
    def col(r):
        return (f"FPR ({r.scenario}) {r.metric}" if r.what == "fpr"
                else f"power ({r.scenario}) {r.effect:+.2f} {r.metric}")
    t = long.assign(column=[col(r) for r in long.itertuples()])
    out = t.pivot_table(index=["rule", "n_runs"], columns="column", values="rate", sort=False)
    order = list(dict.fromkeys(t["column"]))
    rank = {r: k for k, r in enumerate(stats.RULES)}
    return out[order].sort_index(key=lambda i: i.map(lambda v: rank.get(v, v)) if i.name == "rule" else i)


def main(argv=None) -> pd.DataFrame:
    """Measure, print the table, write the CSV; returns the long table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000, help="simulated studies per cell (default 1000)")
    ap.add_argument("--n-boot", type=int, default=400, help="bootstrap resamples per comparison (default 400)")
    ap.add_argument("--runs", type=int, nargs="+", default=[3, 5], help="paired runs per study (default 3 5)")
    ap.add_argument("--n-cases", type=int, default=200, help="test cases per run (default 200)")
    ap.add_argument("--effects", type=float, nargs="+", default=[0.05, 0.10], help="AUC gains for power")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the long table as CSV here")
    args = ap.parse_args(argv)
    long = measure(args.reps, args.n_boot, args.runs, args.n_cases, args.effects, args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        long.to_csv(args.out, index=False)
    table = wide(long)
    print(f"{args.reps} simulated studies per cell, {args.n_cases} test cases, {args.n_boot} bootstrap resamples, "
          "alpha 0.05; FPR under (a) run noise, (b) case noise, (c) both, cv = (a) with a test set per run, "
          "a+ = (a) with run SD 0.06, c+ = (c) with run SD 0.045; "
          "power = share of studies declaring the better init better")
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.float_format", "{:.3f}".format):
        for metric in ("auc", "f1"):
            cols = [c for c in table.columns if c.endswith(" " + metric)]
            print(f"\n{metric.upper()}:")
            print(table[cols].rename(columns=lambda c: c[: -len(metric) - 1]).to_string())
    return long


if __name__ == "__main__":
    main()
