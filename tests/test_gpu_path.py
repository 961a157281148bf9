"""The GPU path (bf16 autocast, channels-last, compile, loader workers, no per-step host syncs), checked on the CPU."""

import copy
import json
import os

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import ssl_lib.finetune as ft
from ssl_lib.data.store import SliceRecord, write_store
from ssl_lib.models.classifier import Classifier
from ssl_lib.precision import autocast, resolve_channels_last, resolve_precision
from ssl_lib.pretrain import METHODS, PROFILES, build_module, get_config, method_class, pretrain
from ssl_lib.pretrain.run import MetricsLog, StoreDataModule, resolve_device_options
from ssl_lib.syncs import HOST_SCALAR, count_syncs, optimizer_host_scalars
from ssl_lib.torch_flags import run_flags, torch_flags



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    records = (SliceRecord(rng.integers(0, 255, (32, 32)).astype(np.uint8), patient=f"p{i // 4}", source=f"s{i}")
               for i in range(48))
    return write_store(records, tmp_path_factory.mktemp("gpu") / "lidc", size=32, name="lidc")


class StepMarks(pl.Callback):
    """Marks a segment of a :func:`ssl_lib.syncs.count_syncs` count per training step:
    ``("step", i)`` from the start of batch ``i`` to its end (forward, backward, optimizer step,
    per-step callbacks), ``("after", i)`` from there to the next batch (scheduler, logging,
    fetching the next batch; after the last batch: the epoch's end)."""

    def __init__(self):
        self.counts, self.trainer = None, None

    def host(self):  # optimizer step counters: on the host in a GPU run too
        return optimizer_host_scalars(self.trainer.optimizers if self.trainer is not None else [])()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.trainer = trainer
        self.counts.mark(("step", batch_idx))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts.mark(("after", batch_idx))


def test_resolve_precision_is_bf16_on_cuda_fp32_on_cpu():
    assert resolve_precision("cuda") == "bf16-mixed"
    assert resolve_precision("gpu", None) == "bf16-mixed"
    assert resolve_precision(torch.device("cuda", 0), "auto") == "bf16-mixed"
    assert resolve_precision("cpu") == "32-true"
    assert resolve_precision("cpu", "bf16-mixed") == "bf16-mixed"
    assert resolve_precision("cuda", "32-true") == "32-true"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("cpu", "bf17")
    assert resolve_channels_last("cuda") and not resolve_channels_last("cpu")
    assert resolve_channels_last("cpu", True) and not resolve_channels_last("cuda", False)
    assert isinstance(autocast("cpu", "bf16-mixed"), torch.autocast)


@pytest.mark.parametrize("method", METHODS)
def test_paper_profile_selects_the_gpu_path_on_cuda_only(method):
    cfg = get_config(method, "paper")
    assert cfg.compile is False and cfg.precision == "auto"
    gpu = resolve_device_options(cfg, "cuda", devices=1)
    assert (gpu.precision, gpu.channels_last, gpu.pin_memory) == ("bf16-mixed", True, True)
    assert gpu.num_workers >= 1 and gpu.compile is False
    cpu = resolve_device_options(cfg, "cpu")
    # SparK's paper profile is channels-last on the CPU too (its ResNet-50 step at 224 px is faster so)
    assert (cpu.precision, cpu.channels_last, cpu.pin_memory, cpu.num_workers) == ("32-true", method == "spark",
                                                                                  False, 0)
    assert resolve_device_options(cfg, "cuda", devices=1).num_workers <= 8
    assert all(PROFILES[p][method].compile is False for p in PROFILES)


def test_loader_pins_memory_and_keeps_workers():
    class Store:
        def dataset(self):
            return list(range(16))

    data = StoreDataModule(Store(), 4, num_workers=2, pin_memory=True)
    loader = data.train_dataloader()
    assert loader.pin_memory and loader.num_workers == 2 and loader.persistent_workers


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_pretrain_bf16_mixed_on_cpu_steps_without_host_syncs(store, tmp_path, method):
    """Three bf16-mixed steps on the CPU (the GPU path's precision), in this process: finite losses, the
    card says bf16, and no host-device sync from anyone (ssl_lib, lightly, timm, Lightning, torch) in any
    step, the first included; the only syncs are the epoch's end (MetricsLog: the step losses to the
    host once, the epoch mean across ranks)."""
    marks = StepMarks()
    with count_syncs(host=marks.host) as syncs:
        marks.counts = syncs
        res = pretrain(method, store, tmp_path / method, profile="smoke", epochs=1, max_steps=3,
                       precision="bf16-mixed", progress=False, callbacks=[marks])
    assert res.global_step == 3 and res.config.precision == "bf16-mixed"
    assert res.module.trainer.precision == "bf16-mixed"
    assert np.isfinite(res.steps["loss"]).all() and len(res.steps) == 3
    card = json.loads(res.encoder.with_suffix(".json").read_text())
    assert card["precision"] == "bf16-mixed"
    per = syncs.per_segment()
    assert list(per) == [(k, i) for i in range(3) for k in ("step", "after")]
    steps = {seg: n for seg, n in per.items() if seg != ("after", 2)}
    assert set(steps.values()) == {0}, str(syncs)
    assert syncs.in_segment(("after", 2)) == {"tolist": 1, "_local_scalar_dense": 1}, str(syncs)
    assert {site.split(":")[0] for _, site in syncs.sites(("after", 2))} == {"ssl_lib/pretrain/run.py"}
    assert res.module.encoder._compiled_call_impl is None  # compile is off by default


def test_pretrain_defaults_on_cpu_and_channels_last_option(store, tmp_path):
    res = pretrain("byol", store, tmp_path / "fp32", profile="smoke", epochs=1, max_steps=1, progress=False)
    assert res.config.precision == "32-true" and res.config.channels_last is False and res.config.num_workers == 0
    assert json.loads(res.encoder.with_suffix(".json").read_text())["precision"] == "32-true"
    cl = pretrain("byol", store, tmp_path / "cl", profile="smoke", epochs=1, max_steps=1, channels_last=True,
                  progress=False)
    conv = cl.module.encoder.conv1.weight
    assert cl.module.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
    assert cl.module.rgb(torch.zeros(2, 1, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert np.isfinite(cl.steps["loss"]).all()
    exported = torch.load(cl.encoder, weights_only=True)["conv1.weight"]
    assert exported.is_contiguous()  # the exported encoder is a plain torchvision state dict


def test_compile_option_compiles_what_the_step_runs_in_place():
    module = build_module("byol", "smoke", compile=True)
    keys = set(module.state_dict())
    module.use_device_options(cuda=False)
    for m in (module.encoder, module.projection_head, module.prediction_head, module.backbone_momentum,
              module.projection_head_momentum):
        assert m._compiled_call_impl is not None  # lazily compiled on first call; momentum copies too
    assert set(module.state_dict()) == keys  # checkpoint and torchvision keys kept (no _orig_mod.)
    assert not module.channels_last
    spark = build_module("spark", "smoke")
    assert spark.compile_targets() == [spark.spark]  # its step calls SparK (sparse encoder path), never encoder.forward
    moco = build_module("mocov2", "smoke")
    assert moco.compile_targets() == [moco.backbone, moco.projection_head, moco.backbone_momentum,
                                      moco.projection_head_momentum]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_compiled_step_gives_the_eager_loss_and_gradients(method):
    """Compiled with ``backend="aot_eager"`` (Dynamo capture and AOTAutograd's traced forward and backward,
    without inductor's C++ code generation, which takes minutes per method on 2 CPU cores; the
    benchmark ``benchmarks/pretrain_speed.py --compile`` runs inductor)."""
    torch.manual_seed(0)
    eager = build_module(method, "smoke", mean=0.5, std=0.25, total_steps=10)
    compiled = copy.deepcopy(eager)
    targets = compiled.compile_step(backend="aot_eager")
    assert targets and all(m._compiled_call_impl is not None for m in targets)
    cfg = eager.cfg
    x = torch.randint(0, 255, (cfg.batch_size, 1, cfg.store_size, cfg.store_size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    results = []
    for module in (eager, compiled):
        module.train()
        for step in range(2):  # the second step: momentum copies, queue and prototypes moved on
            module.zero_grad(set_to_none=True)
            loss = module.step_loss(module.normalize(x), module.step_generator(step))
            loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (le, ge), (lc, gc) = results
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
    assert ge.keys() == gc.keys() and len(ge) > 10
    for name in ge:
        torch.testing.assert_close(gc[name], ge[name], rtol=1e-4, atol=1e-5, msg=name)


def test_run_flags_autotune_on_cuda_and_are_deterministic_on_cpu():
    assert run_flags("cuda") == {"deterministic": False, "benchmark": True}
    assert run_flags(torch.device("cuda", 0)) == {"deterministic": False, "benchmark": True}
    assert run_flags("cpu") == {"deterministic": True, "benchmark": False}


def _flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_torch_flags_are_restored_also_after_an_error():
    before = _flags()
    with torch_flags(deterministic=True, benchmark=True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert _flags() == before
    with pytest.raises(RuntimeError, match="inside"):
        with torch_flags(deterministic=True, benchmark=True):
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # as Lightning sets it
            raise RuntimeError("inside")
    assert _flags() == before


def test_cpu_runs_leave_no_global_flags_behind(store, tmp_path):
    """A CPU pre-training and a CPU fine-tuning, then the flags as before (a CUDA fine-tuning in the same
    kernel failed in adaptive_avg_pool2d's backward when the pre-training left determinism on)."""
    before = _flags()
    assert not before[0]
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, *args):
            seen.append(_flags())

    pretrain("byol", store, tmp_path / "byol", profile="smoke", epochs=1, max_steps=1, progress=False,
             callbacks=[Probe()])
    assert seen and seen[0][:3] == (True, False, True)  # deterministic during the CPU run
    assert _flags() == before
    x, y = torch.randint(0, 255, (8, 1, 32, 32), dtype=torch.uint8), torch.arange(8) % 2
    ft.fit(Classifier("resnet18", 2), x, y, x[:4], y[:4], ft.get_profile("smoke", batch_size=4, linear_epochs=0,
                                                                          full_epochs=1), mean=0.5, std=0.25)
    assert _flags() == before


def test_pretrain_builds_its_trainer_with_cudnn_autotuning_on_cuda(store, tmp_path, monkeypatch):
    """On CUDA (simulated: no GPU here) the Trainer gets ``benchmark=True, deterministic=False``; flags restored."""
    import ssl_lib.pretrain.run as run

    got = {}

    class Stop(Exception):
        pass

    def fake_trainer(**kwargs):
        got.update(kwargs, inside=_flags())
        raise Stop

    monkeypatch.setattr(run, "is_cuda", lambda accelerator: True)
    monkeypatch.setattr(run.pl, "Trainer", fake_trainer)
    before = _flags()
    with pytest.raises(Stop):
        pretrain("byol", store, tmp_path / "gpu", profile="smoke", epochs=1, max_steps=1, progress=False,
                 accelerator="cpu", num_workers=0, pin_memory=False)
    assert got["benchmark"] is True and got["deterministic"] is False
    assert got["inside"][:2] == (False, True)  # set for the run ...
    assert _flags() == before  # ... and put back


def test_device_options_of_finetune_profiles():
    assert ft.device_options(ft.get_profile("paper"), "cuda") == (True, "bf16-mixed")
    assert ft.device_options(ft.get_profile("paper"), "cpu") == (False, "32-true")
    assert ft.device_options(ft.get_profile("quick"), "cpu") == (True, "32-true")
    with pytest.raises(ValueError, match="fine-tuning supports"):
        ft.device_options(ft.get_profile("smoke", precision="16-mixed"), "cpu")


@pytest.mark.slow
def test_finetune_bf16_autocast_on_cpu_gives_finite_metrics_without_step_syncs(monkeypatch):
    """Fine-tuning's full-model steps make no host-device sync (counted from every caller, torch's Adam
    included: its step counters stay on the host, also on a GPU); each epoch ends with the ones that
    read the epoch's loss and validation predictions."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 255, (40, 1, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 2
    prof = ft.get_profile("smoke", batch_size=8, linear_epochs=1, full_epochs=2, precision="bf16-mixed")
    torch.manual_seed(0)
    step, optimizers, calls = ft.optimizer_step, [], []

    def marked(model, opt, *a, **k):
        if not optimizers:
            optimizers.append(opt)
        calls.append(len(calls))
        syncs.mark(calls[-1])
        return step(model, opt, *a, **k)

    monkeypatch.setattr(ft, "optimizer_step", marked)
    with count_syncs(host=optimizer_host_scalars(optimizers)) as syncs:
        res = ft.fit(Classifier("resnet18", 2), x, y, x[:8], y[:8], prof, mean=0.5, std=0.25)
    per = syncs.per_segment()
    assert len(per) == 10  # 2 full epochs x 5 steps
    last_of_epoch = {4, 9}
    assert all(n == 0 for i, n in per.items() if i not in last_of_epoch), str(syncs)
    assert syncs.by_op[HOST_SCALAR] > 0  # Adam read its step counters: no device sync
    curves = res.curves
    assert len(curves) == 3 and np.isfinite(curves[["train_loss", "val_loss", "val_accuracy"]].to_numpy()).all()
    loss = ft.train_step(res.model.train(), torch.optim.SGD(res.model.parameters(), lr=0.0), x[:4], y[:4], mean=0.5,
                std=0.25, precision="bf16-mixed")
    assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float32 and torch.isfinite(loss)
