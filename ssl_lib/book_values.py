"""Numbers the hand-written book pages (``book/*.md``) quote, computed from the study at build time.

A page writes ``{{ name }}`` (a MyST substitution) where it quotes a measured number; the runner's
book staging (:func:`ssl_lib.study.stage_book`) fills every name from :func:`book_values` of the
output folder it builds, so the number is the one of the study the book shows and cannot go
stale. A value that the study has not produced yet reads "(not run yet)". Numbers quoted from a
committed benchmark instead name the script and its output file beside them (the test
``tests/test_book_numbers.py`` checks both kinds).

Values (strings, as the page prints them):

* ``ft_runs``, ``ft_full_epoch_runs``: fine-tuning runs in the results table, and those whose
  validation-selected epoch is one of the full (unfrozen) epochs rather than a linear-phase one.
* ``build_data``: which data each source of this build was (real, or the built-in synthetic
  set), one sentence per source, from the stores' metadata (no paths).
* ``build_kind``: the same in a few words, for a page that quotes this build's numbers.
* ``build_findings``: what this build found, verdicts only: the differences between
  initialisations that hold (:func:`ssl_lib.report.claims` of the results step's comparisons),
  or that none holds, with how many were tested.
* ``spark_encoder_m``, ``spark_fc_m``, ``spark_decoder_m``, ``spark_trainable_m``: SparK's
  parameter counts at the paper profile (millions, :func:`ssl_lib.pretrain.param_table`): the
  ResNet-50, the 1000-class layer timm adds, the decoder and densify layers, and all it trains.
"""

from __future__ import annotations

import os

import pandas as pd

NOT_RUN = "(not run yet)"

#: Every name a page may use, with what it is (the test checks pages use only these).
NAMES: dict[str, str] = {
    "ft_runs": "fine-tuning runs in this study's results table",
    "ft_full_epoch_runs": "runs whose selected epoch is a full (unfrozen) epoch",
    "build_data": "which data each source of this build was, real or synthetic",
    "build_kind": "in a few words: whether this build ran on synthetic data, real data or both",
    "build_findings": "the differences between initialisations that hold in this build",
    "spark_encoder_m": "SparK's ResNet-50 encoder, millions of parameters (paper profile)",
    "spark_fc_m": "the 1000-class layer timm's ResNet-50 adds, millions",
    "spark_decoder_m": "SparK's decoder and densify layers, millions (paper profile)",
    "spark_trainable_m": "all SparK trains at the paper profile, millions",
}


def finetune_counts(results: pd.DataFrame) -> dict[str, str]:
    """``ft_runs`` and ``ft_full_epoch_runs`` of a results table (one row per run).

    A run's epochs are numbered from 0 over both phases, so its selected ``best_epoch`` is a full
    epoch when it is at least its profile's ``linear_epochs``.
    """
    from .profiles import finetune_profile

    if results.empty:
        return {"ft_runs": NOT_RUN, "ft_full_epoch_runs": NOT_RUN}
    linear = results["profile"].map(lambda p: finetune_profile(str(p)).linear_epochs)
    full = int((results["best_epoch"].astype(int) >= linear).sum())
    return {"ft_runs": str(len(results)), "ft_full_epoch_runs": str(full)}


def spark_params() -> dict[str, str]:
    """SparK's parameter counts at the paper profile (builds the model once, about a second)."""
    from .pretrain.present import param_table

    row = param_table("paper", methods=["spark"]).loc["spark"]
    fc = row["encoder_with_fc"] - row["encoder"]
    return {"spark_encoder_m": f"{row['encoder']:.1f} M", "spark_fc_m": f"{fc:.2f} M",
            "spark_decoder_m": f"{row['trainable'] - row['encoder']:.1f} M",
            "spark_trainable_m": f"{row['trainable']:.1f} M"}


def build_data(output_dir: str | os.PathLike) -> str:
    """One sentence per data source of the study: real data, or the built-in synthetic set."""
    from .present import SOURCE_NAMES, study_sources, synthetic_sources

    stores = study_sources(output_dir)
    if not stores:
        return NOT_RUN
    synthetic = set(synthetic_sources(output_dir))
    said = [f"**{SOURCE_NAMES.get(n, n)}**: " + ("the built-in *synthetic* CT data set (simulated, not patients)"
                                                  if n in synthetic else "real data, as the reader supplied it")
            for n in stores]
    return "; ".join(said) + "."


def build_kind(output_dir: str | os.PathLike) -> str:
    """"run on the built-in synthetic data", "run on real data" or "run on real and synthetic data"."""
    from .present import study_sources, synthetic_sources

    stores = set(study_sources(output_dir))
    if not stores:
        return NOT_RUN
    synthetic = set(synthetic_sources(output_dir))
    if synthetic == stores:
        return "run on the built-in synthetic data"
    return "run on real data" if not synthetic else "run on real and synthetic data: see the intro"


def build_findings(output_dir: str | os.PathLike) -> str:
    """The verdicts of the results step, as sentences (nothing but differences that hold)."""
    from .report import claims
    from .stats import read_comparisons

    comparisons = read_comparisons(output_dir)
    if comparisons is None:
        return NOT_RUN
    tested = int((comparisons["n_runs"] >= 2).sum()) if len(comparisons) else 0
    said = claims(comparisons)
    n = f"{tested} comparison" + ("" if tested == 1 else "s")
    if tested == 0:
        return ("No verdicts: no pair of initialisations has two paired runs to compare (this build ran one "
                "seed per setting), so this build claims nothing about which initialisation is better.")
    if not said:
        return (f"No difference between initialisations holds: of {n} tested (two-level test over runs and test "
                "slices, Holm-corrected), none was large enough for this study's size.")
    return (f"Of {n} tested, these differences hold (two-level test over runs and test slices, "
            "Holm-corrected):\n\n" + "\n".join(f"- {c}" for c in said))


def book_values(output_dir: str | os.PathLike) -> dict[str, str]:
    """Every name of :data:`NAMES` with its value for the study in ``output_dir``."""
    from .runs import load_results

    values = {**finetune_counts(load_results(output_dir)), **spark_params(),
              "build_data": build_data(output_dir), "build_kind": build_kind(output_dir),
              "build_findings": build_findings(output_dir)}
    return {name: values.get(name, NOT_RUN) for name in NAMES}
