"""Pre-training under Lightning DDP: two CPU processes (gloo), a few steps of every method.

Lightning's ``ddp`` strategy re-launches the running script for rank 1, so the runs happen in
a small generated script executed with ``python`` (not inside the pytest process).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from ssl_lib.data.store import SliceRecord, write_store

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    torch.set_num_threads(1)
    from ssl_lib.pretrain import pretrain

    store, out = sys.argv[1], sys.argv[2]
    report = {}
    for method in ("byol", "mocov2", "swav", "spark"):
        extra = {"queue_size": 24} if method == "mocov2" else {}
        r = pretrain(method, store, f"{out}/{method}", profile="smoke", epochs=1, devices=2, accelerator="cpu",
                     strategy="ddp", progress=False, **extra)
        m = r.module
        report[method] = {"rank": m.global_rank, "world": m.trainer.world_size, "step": r.global_step,
                          "loss": float(r.metrics["loss"].iloc[-1]), "encoders": [p.name for p in r.encoders]}
        if method == "mocov2":
            report[method]["queue_ptr"] = int(m.queue_ptr)
            report[method]["queue_sum"] = float(m.queue.sum())
        if method == "swav":
            report[method]["sinkhorn_gather"] = m.criterion.sinkhorn_gather_distributed
    with open(f"{out}/report_rank{report['byol']['rank']}.json", "w") as fh:
        json.dump(report, fh)
''')


def _records(n, size):
    rng = np.random.default_rng(1)
    for i in range(n):
        img = rng.normal(80, 30, (size, size))
        img[size // 4: size // 2, size // 4: 3 * size // 4] += rng.uniform(50, 150)
        yield SliceRecord(np.clip(img, 0, 255).astype(np.uint8), patient=f"p{i}")


def test_every_method_runs_under_two_process_ddp(tmp_path):
    store = write_store(_records(64, 32), tmp_path / "lidc", size=32, name="lidc")
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(store.path), str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((out / f"report_rank{r}.json").read_text()) for r in (0, 1)]
    for method in ("byol", "mocov2", "swav", "spark"):
        r0, r1 = reports[0][method], reports[1][method]
        assert (r0["world"], r1["world"]) == (2, 2) and {r0["rank"], r1["rank"]} == {0, 1}
        # 64 slices / (batch 8 x 2 ranks) = 4 steps per epoch: each rank saw its own half
        assert r0["step"] == r1["step"] == 4
        assert np.isfinite(r0["loss"]) and r0["loss"] == r1["loss"]  # epoch loss averaged over ranks
        assert r0["encoders"] == ["epoch_0001.pt"]
    # keys of both ranks are enqueued: 4 steps x 16 keys = 64 = 16 (mod 24); per-rank keys alone would give 8
    assert reports[0]["mocov2"]["queue_ptr"] == reports[1]["mocov2"]["queue_ptr"] == 16
    assert reports[0]["mocov2"]["queue_sum"] == reports[1]["mocov2"]["queue_sum"]  # one global queue
    assert reports[0]["swav"]["sinkhorn_gather"] and reports[1]["swav"]["sinkhorn_gather"]
    w = torch.load(out / "byol/encoders/epoch_0001.pt", weights_only=True)
    assert "conv1.weight" in w
