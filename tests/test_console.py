"""Clean pages: a pre-training run prints none of Lightning's console chatter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_lib.paths import REPO

RUN = r"""
import sys
import numpy as np
from ssl_lib.data.store import SliceRecord, write_store
from ssl_lib.pretrain import pretrain
rng = np.random.default_rng(0)
recs = (SliceRecord(rng.integers(0, 255, (32, 32), dtype=np.uint8), patient=f"p{i // 8}", source=f"s{i}")
        for i in range(64))
store = write_store(recs, sys.argv[1] + "/lidc", size=32, name="lidc")
r = pretrain("byol", store, sys.argv[1] + "/run", profile="smoke", epochs=1, progress=False)
print("steps", r.global_step)
"""

NOISE = ("GPU available", "TPU available", "litlogger", "Tip:", "Trainer.fit", "deprecated", "Warning")


@pytest.mark.slow
def test_pretraining_prints_no_lightning_chatter(tmp_path):
    """In a fresh interpreter (as in a notebook's kernel), with warnings shown as by default."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "steps" in proc.stdout
    for word in NOISE:
        assert word not in text, f"{word!r} printed:\n{text}"
    assert str(Path(sys.prefix)) not in text and str(Path.home()) not in text


PROBE = r"""
import logging, sys
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from ssl_lib.console import LIGHTNING_LOGGERS, quiet_lightning
rank_zero_info("GPU available: before")
quiet_lightning()
rank_zero_info("GPU available: after")
print(all(logging.getLogger(n).level == logging.WARNING for n in LIGHTNING_LOGGERS))
"""


@pytest.mark.slow
def test_control_lightning_is_chatty_without_it():
    """The control, in a fresh interpreter (Lightning's handler binds the stderr of the moment it is
    imported): its INFO messages reach stderr until quietened, and not after."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "GPU available: before" in proc.stderr and "after" not in proc.stderr
    assert proc.stdout.strip() == "True"


def test_seaborn_heatmap_warns_nothing():
    """A seaborn heat map (confusion matrices, correlation maps) leaves no deprecation notice on the page."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import seaborn as sns

    import ssl_lib  # noqa: F401  (its import sets the filters)
    from ssl_lib.console import quiet_libraries

    quiet_libraries()  # pytest resets warning filters per test: set them again as the import did
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()
        sns.heatmap(np.eye(3), annot=True, center=0, cmap="RdBu_r")  # center: the path that warns
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning,
                                                             FutureWarning))], [str(w.message) for w in caught]
