"""Time of the Grad-CAM step's explanation methods at a profile's settings.

Builds a throw-away study folder with a ``covid`` store of synthetic chest slices (the phantom of
:mod:`ssl_lib.data.phantom`, half of them with ground-glass lesions and masks) at the profile's
fine-tuning size, and one randomly initialised classifier of the profile's ResNet per init of the
registry, then times :func:`ssl_lib.explain.gradcam_for_inits` (no cache) three ways:

* ``grad-cam only``: the step as it was before the other methods (Grad-CAM alone, no lung masks);
* ``all CAMs``: Grad-CAM, Grad-CAM++, LayerCAM and HiResCAM (one shared backward pass);
* ``profile``: every method of the profile (with occlusion, on its images) and the lung masks;

and, in a fresh interpreter, how long ``import monai`` takes after ``import torch`` (occlusion
imports MONAI, which loads all of its submodules; the step pays this once). Weights do not change
the cost, so random models time the step as the study's fine-tuned ones do. Each is given as wall
time and as the process's CPU time: on a shared machine the wall time grows with the load, the
CPU time hardly (with ``--threads 1`` it is the wall time on an idle core).

Usage: ``python benchmarks/explain_speed.py [--profile quick] [--n 128] [--threads 2]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_lib import explain  # noqa: E402
from ssl_lib.data.intensity import window  # noqa: E402
from ssl_lib.data.phantom import chest_slice_hu  # noqa: E402
from ssl_lib.data.store import SliceRecord, write_store  # noqa: E402
from ssl_lib.data.synthetic import COVID_WINDOW  # noqa: E402
from ssl_lib.explainers import CAM_NAMES  # noqa: E402
from ssl_lib.models.classifier import Classifier, save_classifier  # noqa: E402
from ssl_lib.paths import StudyPaths  # noqa: E402
from ssl_lib.profiles import get_profile  # noqa: E402


def build_study(out: Path, n: int, size: int, arch: str, inits) -> None:
    """A ``covid`` store of ``n`` phantom slices (every second one with a lesion) and a random model per init."""
    records = []
    for i in range(n):
        label = i % 2
        hu, masks = chest_slice_hu((140, 130), z=0.45 + 0.35 * (i % 9) / 9, seed=i, ggo=0.25 if label else 0.0,
                                   ggo_hu=500.0)
        records.append(SliceRecord(pixels=window(hu, *COVID_WINDOW), patient=f"p{i}", label=label, split="test",
                                   source=f"s{i}", mask=masks["lesion"].astype(np.uint8) if label else None))
    store = write_store(records, StudyPaths(out).store("covid"), size=size, name="covid", task="binary",
                        class_names=["NonCOVID", "COVID"])
    for k, init in enumerate(inits):
        torch.manual_seed(k)
        save_classifier(Classifier(arch, 2).eval(), explain.model_path(out, "covid", init, 1.0, 0), task="covid",
                        init=init, fraction=1.0, seed=0, mean=store.mean, std=store.std, image_size=size)


def monai_import_seconds() -> tuple[float, float]:
    """Wall and CPU seconds ``import monai`` adds after ``import torch``, in a fresh interpreter."""
    code = ("import time, torch; t, c = time.perf_counter(), time.process_time(); import monai; "
            "print(time.perf_counter() - t, time.process_time() - c)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def main(argv=None) -> dict[str, tuple[float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--n", type=int, default=None, help="test images (default: the profile's max_images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inits", default=",".join(explain.INITS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    ex = prof.explain
    n = args.n or ex.max_images or 128
    inits = args.inits.split(",")
    occ = explain.Occlusion(ex.occlusion_size, ex.occlusion_stride, ex.occlusion_fill, ex.occlusion_max_images,
                            ex.occlusion_on)
    common = dict(max_images=ex.max_images, batch_size=ex.batch_size, input_size=ex.input_size, stage=ex.stage,
                  use_cache=False, device="cpu")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        build_study(out, n, prof.finetune.image_size, prof.finetune.arch, inits)
        times["monai import"] = monai_import_seconds()
        for name, kw in (("grad-cam only", dict(explainers=("gradcam",))),
                         ("all CAMs", dict(explainers=CAM_NAMES)),
                         ("profile", dict(explainers=ex.explainers, occlusion=occ, lung=True))):
            t, c = time.perf_counter(), time.process_time()
            heat = explain.gradcam_for_inits(out, "covid", 1.0, 0, **common, **kw)
            times[name] = (time.perf_counter() - t, time.process_time() - c)
        n_occ = len(heat.positions_of("occlusion")) if "occlusion" in heat.explainers else 0
    print(f"profile {args.profile}: {len(heat)} images, {len(inits)} models, {args.threads} threads, "
          f"occlusion on {n_occ} images ({ex.occlusion_size} px square, stride {ex.occlusion_stride} px)")
    print(f"  {'':<14} {'wall':>8} {'CPU':>8}")
    for name, (wall, cpu) in times.items():
        print(f"  {name:<14} {wall:7.1f}s {cpu:7.1f}s")
    added = [times["profile"][k] - times["grad-cam only"][k] for k in (0, 1)]
    imp = times["monai import"]
    print(f"  added by the other methods: {added[0]:.1f} s wall, {added[1]:.1f} s CPU "
          f"(+ {imp[0]:.1f} s wall, {imp[1]:.1f} s CPU importing MONAI once per step)")
    return times


if __name__ == "__main__":
    main()
