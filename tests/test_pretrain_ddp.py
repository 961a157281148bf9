"""Pre-training under Lightning DDP: two CPU processes (gloo), a few steps of every method, and one
step on 2 ranks x B/2 that equals one step on 1 rank x B (the paper's one-GPU recipe).

Lightning's ``ddp`` strategy re-launches the running script for rank 1, so the runs happen in
a small generated script executed with ``python`` (not inside the pytest process).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_lib.data.store import SliceRecord, write_store

pytestmark = pytest.mark.slow  # studies, training runs or subprocesses: minutes (make test-fast skips)

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    torch.set_num_threads(1)
    from ssl_lib.pretrain import pretrain

    import lightning.pytorch as pl

    def norms(module):
        return sorted({type(x).__module__ + "." + type(x).__name__ for x in module.modules()
                       if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)})

    class Norms(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.seen = norms(pl_module)
            ddp = trainer.strategy.model  # the DistributedDataParallel wrapper while training
            self.broadcast = getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None))

    store, out = sys.argv[1], sys.argv[2]
    report = {}
    for method in ("byol", "mocov2", "swav", "spark"):
        extra = {"queue_size": 24} if method == "mocov2" else {}
        seen = Norms()
        r = pretrain(method, store, f"{out}/{method}", profile="smoke", epochs=1, devices=2, accelerator="cpu",
                     strategy="ddp", progress=False, callbacks=[seen], **extra)
        m = r.module
        report[method] = {"rank": m.global_rank, "world": m.trainer.world_size, "step": r.global_step,
                          "loss": float(r.metrics["loss"].iloc[-1]), "encoders": [p.name for p in r.encoders]}
        report[method]["broadcast_buffers"] = seen.broadcast
        report[method]["norms_training"], report[method]["norms_after"] = seen.seen, norms(m)
        if method == "mocov2":
            report[method]["queue_ptr"] = int(m.queue_ptr)
            report[method]["queue_sum"] = float(m.queue.sum())
            report[method]["shuffle_bn"] = m.shuffle_bn
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
        # 64 slices / global batch 8 (4 per rank) = 8 steps per epoch: each rank saw its own half
        assert r0["step"] == r1["step"] == 8
        assert np.isfinite(r0["loss"]) and r0["loss"] == r1["loss"]  # epoch loss averaged over ranks
        assert r0["encoders"] == ["epoch_0001.pt"]
        assert r0["broadcast_buffers"] is False  # buffers (BN statistics, MoCo's queue) are equal by construction
        assert r0["norms_training"] == ["ssl_lib.models.syncbn.SyncBatchNorm"]  # every norm sees the global batch
        assert all(n.startswith("torch.nn.modules.batchnorm.BatchNorm") for n in r0["norms_after"])  # reverted
    # keys of both ranks are enqueued: 8 steps x 8 keys = 64 = 16 (mod 24); per-rank keys alone would give 8
    assert reports[0]["mocov2"]["queue_ptr"] == reports[1]["mocov2"]["queue_ptr"] == 16
    assert reports[0]["mocov2"]["queue_sum"] == reports[1]["mocov2"]["queue_sum"]  # one global queue, not broadcast
    assert reports[0]["mocov2"]["shuffle_bn"] is False  # synced BN: MoCo's shuffle-BN is not needed
    assert reports[0]["swav"]["sinkhorn_gather"] and reports[1]["swav"]["sinkhorn_gather"]
    w = torch.load(out / "byol/encoders/epoch_0001.pt", weights_only=True)
    assert "conv1.weight" in w


# ------------------------------------------------------------------------------------------------
# One step on 2 ranks x B/2 = one step on 1 rank x B
# ------------------------------------------------------------------------------------------------
STEP_SCRIPT = textwrap.dedent('''
    """One smoke step of every method on ``devices`` CPU ranks with a global batch of 8; rank files keep the
    loss, the gradients DDP hands the optimizer, and every buffer after the step."""
    import sys
    import torch
    import torch.nn.functional as F
    import lightning.pytorch as pl
    torch.set_num_threads(1)
    from ssl_lib.pretrain import method_class, pretrain
    from ssl_lib.pretrain.spark import SparKModule

    store, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    methods, extra_all = ("byol", "swav", "mocov2", "spark"), {}
    if sys.argv[4:] == ["per-rank-bn"]:  # the control: what the test would see with per-rank statistics
        methods, extra_all = ("byol",), {"sync_batchnorm": False}

    # Views and masks as functions of each slice alone (shifts and contrast per view), so that the
    # views of a rank's half-batch are exactly the corresponding rows of the whole batch's views.
    # (Their random draws come from a generator seeded by (seed, step, rank), i.e. per rank.) In
    # float64 (precision 64-true): float32 rounding differs between one pass over 8 slices and two
    # over 4, and a ReLU input within rounding of 0 then flips, which moved a float32 SwAV gradient
    # by 0.5 %; float64 leaves the comparison to the arithmetic.
    def views(self, x, generator=None):
        cfg = self.cfg
        x = x.to(self.dtype)
        sizes = [cfg.crop_size] * 2 + [getattr(cfg, "small_size", 0)] * getattr(cfg, "n_small", 0)
        if isinstance(self, SparKModule):
            sizes = [cfg.crop_size]
        return [F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False).roll(i, -1) * (1 + 0.1 * i)
                for i, s in enumerate(sizes)]

    def draw_mask(self, v, generator=None):  # the patches with the largest means are visible
        grid = self.spark.grid
        means = F.adaptive_avg_pool2d(v[:, :1].float(), grid).flatten(1)
        keep = means.argsort(dim=1, descending=True, stable=True)[:, : self.spark.num_visible]
        mask = torch.zeros_like(means, dtype=torch.bool).scatter_(1, keep, True)
        return mask.view(-1, 1, grid, grid)

    SparKModule.draw_mask = draw_mask

    class Capture(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # after DDP averaged the gradients
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)

    for method in methods:
        method_class(method).views = views
        cap = Capture()
        extra = {"queue_size": 24, **extra_all} if method == "mocov2" else extra_all
        r = pretrain(method, store, f"{out}/{method}", profile="smoke", epochs=1, max_steps=1, batch_size=8,
                     devices=devices, accelerator="cpu", strategy="ddp" if devices > 1 else None, progress=False,
                     precision="64-true", callbacks=[cap], **extra)
        m = r.module
        torch.save({"loss": cap.loss, "grads": cap.grads, "buffers": {n: b.clone() for n, b in m.named_buffers()},
                    "rank": m.global_rank}, f"{out}/{method}_rank{m.global_rank}.pt")
''')

#: The global batch of the step; the sampler deals the whole batch's slices out as rank 0: 0, 2, 4, 6 and
#: rank 1: 1, 3, 5, 7 (``DistributedSampler``), so MoCo's queue holds rank 0's keys, then rank 1's.
BATCH, DEALT = 8, [0, 2, 4, 6, 1, 3, 5, 7]


def _close(name, a, b, scale):
    """Equal up to float64 rounding: within 1e-7 relative, or 1e-9 of ``scale`` (the largest gradient or
    buffer entry of the method: a gradient that is 0 in exact arithmetic, e.g. of a bias before a batch
    norm, is rounding noise of any relative size)."""
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * scale, msg=lambda m: f"{name}: {m}")


def test_one_ddp_step_on_two_ranks_equals_one_step_on_one_device(tmp_path):
    """Loss, gradients (after DDP's average), batch-norm running statistics (SparK's masked ones included) and
    MoCo's queue of one step: 2 ranks x 4 = 1 rank x 8, for every method, in float64. Exact but for rounding:
    the global statistics are merged from the ranks' (syncbn.global_batch_norm) where one device computes
    them in one pass, and DDP averages the ranks' gradients. A control run with per-rank batch norms fails
    the same comparison."""
    store = write_store(_records(64, 32), tmp_path / "lidc", size=32, name="lidc")  # MoCo: queue 24 < 64 / 2
    script = tmp_path / "ddp_step.py"
    script.write_text(STEP_SCRIPT)
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    for devices, out, *control in ((1, "w1"), (2, "w2"), (2, "control", "per-rank-bn")):
        proc = subprocess.run([sys.executable, str(script), str(store.path), str(tmp_path / out), str(devices),
                               *control], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
    for method in ("byol", "swav", "mocov2", "spark"):
        one = torch.load(tmp_path / "w1" / f"{method}_rank0.pt", weights_only=False)
        ranks = [torch.load(tmp_path / "w2" / f"{method}_rank{r}.pt", weights_only=False) for r in (0, 1)]
        # the global batch's loss is the mean of the ranks' (equal halves)
        assert np.mean([r["loss"] for r in ranks]) == pytest.approx(one["loss"], rel=1e-9), method
        assert set(one["grads"]) == set(ranks[0]["grads"]) and len(one["grads"]) > 10, method
        scale = max(float(g.abs().max()) for g in one["grads"].values())
        for name, g in one["grads"].items():
            _close(f"{method} grad {name}", ranks[0]["grads"][name], g, scale)
            assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name])  # DDP: the same on every rank
        for name, b in one["buffers"].items():
            got = ranks[0]["buffers"][name]
            assert torch.equal(got, ranks[1]["buffers"][name]), f"{method} {name} differs between ranks"
            if name == "queue":  # the 8 new keys: rank 0's, then rank 1's
                _close(f"{method} queue", got[:BATCH], b[:BATCH][DEALT], 1.0)
                assert torch.equal(got[BATCH:], b[BATCH:])
            elif b.is_floating_point():
                _close(f"{method} {name}", got, b, max(float(b.abs().max()), 1.0))
            else:
                assert torch.equal(got, b), f"{method} {name}"
    spark = torch.load(tmp_path / "w2" / "spark_rank0.pt", weights_only=False)["buffers"]
    assert any(k.startswith("spark.densify_norms") for k in spark)  # masked norms were compared
    # the control: with per-rank batch norms (sync_batchnorm=False) the same comparison fails
    one = torch.load(tmp_path / "w1" / "byol_rank0.pt", weights_only=False)
    per_rank = torch.load(tmp_path / "control" / "byol_rank0.pt", weights_only=False)
    scale, differ = max(float(g.abs().max()) for g in one["grads"].values()), []
    for name, g in one["grads"].items():
        try:
            _close(name, per_rank["grads"][name], g, scale)
        except AssertionError:
            differ.append(name)
    assert len(differ) > len(one["grads"]) // 2


def test_global_batch_is_split_over_the_devices(tmp_path):
    from ssl_lib.pretrain import pretrain
    from ssl_lib.pretrain.base import PretrainError
    from ssl_lib.pretrain.run import per_device_batch

    assert per_device_batch(64, 1) == 64 and per_device_batch(64, 4) == 16
    with pytest.raises(PretrainError, match="batch_size 10 is the global batch .* split evenly over 4 devices"):
        per_device_batch(10, 4)
    store = write_store(_records(8, 32), tmp_path / "lidc", size=32, name="lidc")
    with pytest.raises(PretrainError, match="split evenly over 3 devices"):
        pretrain("byol", store, tmp_path / "out", profile="smoke", devices=3, accelerator="cpu", progress=False)
