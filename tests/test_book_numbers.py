"""Every measured number on a hand-written book page (``book/*.md``) comes from code in the repository.

A number on these pages is one of:

* a **study output**: a MyST substitution ``{{ name }}`` filled at staging from the study's own
  outputs (:mod:`ssl_lib.book_values`), so it can never go stale;
* a **benchmark quote**: its paragraph names a committed script (``benchmarks/*.py`` or
  ``experiments/*.py``) and the committed output file that script wrote (under
  ``benchmarks/results/`` or ``experiments/results/``), and the number is in that file;
* a **setting** (a hyperparameter, a paper value, a threshold of the code): in a settings table
  (first header cell in :data:`SETTINGS_TABLES`) or listed in :data:`SETTINGS` with its reason.

:func:`measured_numbers` finds what reads like a measurement: a number with a unit of time,
size or speed, a ratio ("25 times", "3x faster"), a count "N of M", or a decimal with two or
more digits after the point. Code spans, code blocks and math are not prose and are skipped.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ssl_lib.book_values import NAMES

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "book").glob("*.md"))

#: Tables whose first header cell is one of these list settings (hyperparameters, profiles), not results.
SETTINGS_TABLES = {"setting", "method", "profile", ""}

#: (page, number as written, why it is a setting and not a measurement)
SETTINGS = {
    ("methods.md", "0.05"): "the significance level alpha of the verdicts (ssl_lib.stats)",
    ("reproduce.md", "3.11"): "the Python version the environment is made for",
    ("reproduce.md", "24 GB"): "the paper profile's stated memory need per step (ssl_lib.study.PROFILE_NEEDS)",
    ("reproduce.md", "30 s"): "the runner's polling interval for SLURM jobs (ssl_lib.cluster)",
}

_UNIT = (r"(?:ms|s|sec|seconds?|min|minutes?|h|hours?|days?|[KMGT]i?B|img/s|images/s|slices/s|it/s)")
MEASURED = re.compile(
    r"(?<![\w.])(?:"
    r"\d+(?:[.,]\d+)*\s?" + _UNIT + r"(?![\w/])"              # 72.8 s, 6.5 GB, 1,200 img/s
    r"|\d+(?:\.\d+)?\s?(?:times|×|x)\s+(?:faster|slower|longer|shorter|more|less|fewer)"  # 25 times longer
    r"|\d+(?:\.\d+)?\s+times\b"                                # 25 times
    r"|\d+\s+of\s+(?:the\s+)?\d+\b"                            # 4 of the 90
    r"|\d+\.\d+\s?%"                                            # 0.4 %
    r"|\d*\.\d{2,}"                                             # 0.064, 0.02
    r")")
_SUBST = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SCRIPT = re.compile(r"\b((?:benchmarks|experiments)/[\w./-]+\.py)\b")
_OUTPUT = re.compile(r"\b((?:benchmarks|experiments)/results/[\w./-]+\.(?:csv|txt|json|md))\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _prose(text: str) -> str:
    """``text`` without code blocks, code spans, math and substitutions (kept as a placeholder)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"\$[^$\n]*\$", "", text)
    text = re.sub(r"\]\([^)\s]*\)|https?://\S+|doi:\S+", "", text)  # addresses and DOIs
    return _SUBST.sub("SUBST", text)


def blocks(text: str) -> list[tuple[str, str]]:
    """The page as (kind, text) blocks: "table" (with its first header cell) or "prose" paragraphs."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.lstrip().startswith("|") for ln in lines):
            out.append(("table:" + lines[0].strip().strip("|").split("|")[0].strip().strip("*`").lower(), block))
        else:
            out.append(("prose", block))
    return out


def measured_numbers(text: str) -> list[tuple[str, str]]:
    """(number as written, its paragraph) for what reads like a measurement outside settings tables."""
    found = []
    for kind, block in blocks(text):
        if kind.startswith("table:") and kind[len("table:"):] in SETTINGS_TABLES:
            continue
        for m in MEASURED.finditer(_prose(block)):
            found.append((m.group(0).strip(), block))
    return found


def _values_in(path: Path) -> list[float]:
    return [float(v) for v in _NUMBER.findall(path.read_text())]


def _in_file(number: str, path: Path) -> bool:
    """``number`` (as written: "72.8 s", "25 times", "0.064") is a value of ``path``, rounded as written."""
    head = _NUMBER.search(number.replace(",", ""))
    if head is None:
        return False
    digits = len(head.group(0).split(".")[1]) if "." in head.group(0) else 0
    target = float(head.group(0))
    return any(round(v, digits) == target for v in _values_in(path))


def unsourced(page: Path) -> list[str]:
    """Measured numbers of ``page`` with neither a study output nor a benchmark quote nor a listed reason."""
    problems = []
    for number, block in measured_numbers(page.read_text()):
        if (page.name, number) in SETTINGS:
            continue
        scripts = [s for s in _SCRIPT.findall(block) if (REPO / s).is_file()]
        outputs = [o for o in _OUTPUT.findall(block) if (REPO / o).is_file()]
        if scripts and any(_in_file(number, REPO / o) for o in outputs):
            continue
        problems.append(f"{page.name}: {number!r} in: {' '.join(block.split())[:160]}...")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_measured_number_has_a_source(page):
    assert unsourced(page) == []


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_substitutions_are_known_values(page):
    used = set(_SUBST.findall(page.read_text()))
    assert used <= set(NAMES), f"unknown substitutions {sorted(used - set(NAMES))}"


def test_the_detector_finds_measurements(tmp_path):
    page = tmp_path / "methods.md"
    page.write_text("A quick run took 72.8 s with the flip (25 times longer). Energy 0.064 in the lesion;\n"
                    "the full epoch was picked in 4 of the 90 runs, the loop is 0.4 % of a step, and the venv is 6.5 GB.\n\n"
                    "We use lr 1e-4, batch 64, 70 epochs and a 32 px patch.\n\n"
                    "| setting | value |\n|---|---|\n| momentum | 0.996 |\n\n"
                    "| init | AUC |\n|---|---|\n| BYOL | 0.768 |\n")
    found = [n for n, _ in measured_numbers(page.read_text())]
    assert found == ["72.8 s", "25 times longer", "0.064", "4 of the 90", "0.4 %", "6.5 GB", "0.768"]


def test_a_quote_needs_the_script_and_its_output(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "bench.py").write_text("")
    (tmp_path / "benchmarks" / "results" / "bench.csv").write_text("mode,seconds\nflip,2.93\nmonai,72.84\n")
    page = tmp_path / "p.md"
    quoted = "It took 72.8 s (`benchmarks/bench.py`, output `benchmarks/results/bench.csv`)."
    page.write_text(quoted)
    assert unsourced(page) == []
    page.write_text(quoted.replace("72.8 s", "73.9 s"))  # a number the file does not hold
    assert len(unsourced(page)) == 1
    page.write_text("It took 72.8 s (`benchmarks/results/bench.csv`).")  # no script named
    assert len(unsourced(page)) == 1
    page.write_text("It took {{ ft_runs }} runs.")  # a study output
    assert unsourced(page) == []


def test_finetune_counts_read_the_selected_epochs():
    from ssl_lib.book_values import NOT_RUN, finetune_counts
    from ssl_lib.profiles import finetune_profile

    import pandas as pd

    linear = finetune_profile("quick").linear_epochs
    results = pd.DataFrame({"profile": ["quick"] * 4, "best_epoch": [0, linear - 1, linear, linear + 3]})
    assert finetune_counts(results) == {"ft_runs": "4", "ft_full_epoch_runs": "2"}
    assert finetune_counts(results.iloc[:0]) == {"ft_runs": NOT_RUN, "ft_full_epoch_runs": NOT_RUN}


def test_staging_fills_the_substitutions(tmp_path):
    import yaml

    from ssl_lib.book_config import write_staged_config

    config = tmp_path / "_config.yml"
    config.write_text((REPO / "_config.yml").read_text())
    write_staged_config(config, {"ft_runs": "90"}, None)
    cfg = yaml.safe_load(config.read_text())
    assert cfg["parse"]["myst_substitutions"] == {"ft_runs": "90"}
    assert "substitution" in cfg["parse"]["myst_enable_extensions"]
    assert cfg["title"] == yaml.safe_load((REPO / "_config.yml").read_text())["title"]  # the rest kept


def test_the_intro_states_this_builds_data_and_verdicts(tmp_path):
    """``build_data`` names each source real or synthetic (no path); ``build_findings`` only verdicts that hold."""
    import json

    import pandas as pd

    from ssl_lib import stats
    from ssl_lib.book_values import NOT_RUN, build_data, build_findings

    assert build_data(tmp_path) == NOT_RUN and build_findings(tmp_path) == NOT_RUN  # nothing run yet
    for name, synthetic in (("lidc", True), ("covid", False), ("organs", True)):
        (tmp_path / "stores" / name).mkdir(parents=True)
        (tmp_path / "stores" / name / "meta.json").write_text(json.dumps({"synthetic": synthetic and {"profile": "x"}}))
    data = build_data(tmp_path)
    assert data.index("LIDC-IDRI") < data.index("COVID-19 CT") < data.index("OrganSMNIST")
    assert "**COVID-19 CT**: real data" in data and "**OrganSMNIST**: the built-in *synthetic*" in data
    assert "**LIDC-IDRI (pre-training)**: the built-in *synthetic*" in data and str(tmp_path) not in data
    from ssl_lib.book_values import build_kind

    assert build_kind(tmp_path) == "run on real and synthetic data: see the intro"
    (tmp_path / "stores" / "covid" / "meta.json").write_text(json.dumps({"synthetic": {"profile": "x"}}))
    assert build_kind(tmp_path) == "run on the built-in synthetic data"
    (tmp_path / "stores" / "covid" / "meta.json").write_text(json.dumps({"synthetic": False}))
    row = {"task": "organs", "fraction": 1.0, "metric": "auc", "init_a": "random", "init_b": "spark", "n_runs": 3,
           "n_cases": 100, "diff": -0.1, "ci_low": -0.2, "ci_high": -0.05, "p_holm": 0.01, "holds": True,
           "synthetic": True}
    stats.save_comparisons(tmp_path, pd.DataFrame([row, {**row, "task": "covid", "holds": False, "synthetic": False}]))
    found = build_findings(tmp_path)
    assert found.startswith("Of 2 comparisons tested") and "\n- OrgMNIST (synthetic), 100 %" in found  # a list
    assert "SparK beats Random in AUC" in found and "COVID-19" not in found  # only what holds
    stats.save_comparisons(tmp_path, pd.DataFrame([{**row, "holds": False}]))
    assert build_findings(tmp_path).startswith("No difference between initialisations holds: of 1 comparison tested")
    stats.save_comparisons(tmp_path, pd.DataFrame([{**row, "n_runs": 1, "holds": False}]))  # one seed: nothing tested
    assert build_findings(tmp_path).startswith("No verdicts: no pair of initialisations has two paired runs")
