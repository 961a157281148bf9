"""Quiet library consoles: what a notebook page (and the book) shows of a training run.

Lightning writes its start-up and shut-down chatter to the notebook's stderr on every ``fit``:
"GPU available: False, used: False", "TPU available ...", a "Tip" advertising a cloud logger,
"`Trainer.fit` stopped: `max_epochs=2` reached", and a torch ``FutureWarning`` raised inside
Lightning's own code that prints the environment's absolute path. None of it concerns the
reader; the pages show the training table and the loss curve instead. Plotting libraries'
deprecation notices (seaborn's, raised inside seaborn on every heat map) are the same kind of
noise: :func:`quiet_libraries` (run on importing ``ssl_lib``) drops those raised inside them.
:func:`quiet_lightning` keeps Lightning's warnings and errors and drops its INFO messages and the
deprecation warnings raised from inside Lightning (not those of our code).
"""

from __future__ import annotations

import logging
import warnings

#: Loggers Lightning writes INFO chatter to (both namespaces: ``lightning`` and the standalone packages).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")


def quiet_lightning() -> None:
    """Lightning logs only warnings and errors; deprecation warnings raised inside Lightning are ignored.

    Call it after importing Lightning (its import sets its logger to INFO) and before building a
    ``Trainer``. Idempotent.
    """
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(lightning|lightning_fabric|pytorch_lightning)\.")


#: Libraries whose own deprecation notices (raised from inside them) a page never shows.
QUIET_LIBRARIES = ("seaborn",)


def quiet_libraries() -> None:
    """Ignore deprecation warnings raised inside :data:`QUIET_LIBRARIES` (not those about our calls)."""
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        for name in QUIET_LIBRARIES:
            warnings.filterwarnings("ignore", category=category, module=rf"{name}(\.|$)")
