"""Stand-ins for the study's long steps in the runner's interrupt tests (tests/test_study_safety.py).

``sleepy_group`` replaces :func:`ssl_lib.finetune._grid_group` inside a test notebook: the real
``_run_parallel`` forks its workers (with the real worker initializer) and each worker records its
pid, then waits while ``hold`` exists beside the output folder.
"""

import os
import time
from pathlib import Path


def sleepy_group(output_dir, prof, device, jobs, features):  # noqa: ARG001 - the signature of _grid_group
    pids = Path(output_dir, "grid")
    pids.mkdir(exist_ok=True)
    (pids / f"worker-{os.getpid()}").touch()
    while Path(output_dir).parent.joinpath("hold").exists():
        time.sleep(0.1)
    return []
