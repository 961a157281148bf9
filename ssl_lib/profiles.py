"""The study's profiles in one place: ``smoke``, ``quick`` and ``paper`` for every step together.

A *study profile* (:class:`StudyProfile`, from :func:`get_profile`) bundles what each step of
Wolf et al. 2023's study reads for one size of the study:

- ``data`` (:class:`DataProfile`): the slice stores' image sides (``lidc`` feeds pre-training,
  the task stores fine-tuning) and which synthetic data set stands in for missing sources;
- ``synthetic`` (:class:`SyntheticProfile`): the sizes of that built-in synthetic data set;
- ``pretrain(method)``: the method's :class:`ssl_lib.pretrain.PretrainConfig` for this profile,
  read from the method registry (each method module holds its profile entries);
- ``finetune`` (:class:`FinetuneProfile`): the fine-tuning protocol and the reduction steps;
- ``explain`` (:class:`ExplainProfile`): the Grad-CAM settings;
- ``needs`` (:class:`Needs`): what a machine needs to run the profile (the runner checks it).

The parts share constraints that no single table shows (:meth:`StudyProfile.validate`): the
exported encoder must load into the fine-tuning model (the same ResNet on both sides: ResNet-18
in ``smoke``/``quick``, ResNet-50 in ``paper``); the pre-training store's side is the one every
method's profile is meant for; no pre-training crop (SwAV's small crops and SparK's input
included) reaches the ResNet's last stage as a 1 x 1 map (:data:`MIN_LAST_STAGE`); the task
stores' side is the fine-tuning input size; Grad-CAM
only enlarges images and reads an existing ResNet stage whose grid has at least one cell.
Overrides (from the runner's ``--param`` or a notebook) are applied part by part and the result
is validated: ``get_profile("quick", finetune={"image_size": 96}, data={"task_size": 96})``.

The synthetic data sets keep their own names (``paper-demo`` is the largest; ``paper`` is an
alias of it): :func:`synthetic_profile`. Every value here is the one the modules held before
they were gathered in this file.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .errors import SslCtError
from .reduction import PAPER_FRACTIONS

__all__ = ["PROFILE_NAMES", "ProfileError", "StudyProfile", "DataProfile", "SyntheticProfile", "FinetuneProfile",
           "ExplainProfile", "Needs", "NEEDS", "get_profile", "synthetic_profile", "finetune_profile",
           "explain_profile", "data_profile", "pretrain_profiles", "SYNTHETIC_NAMES", "PARAM_FIELDS",
           "overrides_from_params", "stage_side", "MIN_LAST_STAGE"]


class ProfileError(SslCtError, ValueError):
    """An unknown profile or part setting, or profile parts that do not fit together."""


# ==============================================================================================
# The parts' dataclasses (their modules re-export them)
# ==============================================================================================
@dataclass(frozen=True)
class DataProfile:
    """Image sizes of the stores (pixels, square). ``lidc`` feeds pre-training, the rest fine-tuning."""

    lidc_size: int
    task_size: int
    synthetic: str  # synthetic data set size (a name of :func:`synthetic_profile`)


@dataclass(frozen=True)
class SyntheticProfile:
    """Sizes of one synthetic data set (:mod:`ssl_lib.data.synthetic`)."""

    lidc_patients: int
    lidc_slices: int            # per series, varied by +-lidc_slices_jitter (always > 10)
    lidc_size: int
    covid_images: int           # about half COVID
    covid_size: tuple           # (min, max) side length in pixels
    organ_patients: tuple       # (train, val, test) synthetic patients
    organ_slices: int           # slices per body level and patient (one crop per organ each)
    brain_images: int
    brain_size: int
    difficulty: float | dict = 0.5   # one for all tasks, or {"covid": d, "organs": d, "brain": d}
    lidc_slices_jitter: int = 0


@dataclass(frozen=True)
class FinetuneProfile:
    """Hyperparameters of one fine-tuning profile (:mod:`ssl_lib.finetune`).

    ``linear_epochs``: epochs with the backbone frozen (paper: 10); ``linear_lr``: the head's lr
    in them (``None``: ``lr``, as the paper); ``full_epochs``: epochs of the whole model after
    that, every parameter at ``lr``; ``backbone_lr_ratio``/``backbone_lr_growth``: the backbone's lr
    after unfreezing starts at ratio x lr and grows by the factor per epoch up to lr (``None``:
    full lr at once); ``select_metric``: validation metric that picks the tested epoch (ties:
    lower validation loss); ``augment``: ``"flip"`` (random horizontal flip), ``"monai"`` (the
    authors' MONAI flip + rotation, batched: :class:`ssl_lib.finetune_augment.FlipRotate`) or ``"none"``;
    ``train_bn_frozen``: the backbone's BatchNorm layers train (mode and affine parameters, at the
    head's lr) while the rest of the backbone is frozen, as Lightning's ``BackboneFinetuning``;
    ``fractions``: reduction steps per task; ``stop_f1``: the paper's stopping rule (``None``: run
    every fraction); ``stop_metric``: the results column it reads (``"f1_seed"``: the F1 of the
    authors' code, which their rule used - micro F1 for OrganSMNIST, F1 of NonCOVID for COVID-19;
    ``"f1"``: ours); ``pretrain_epoch``: ``"last"`` encoder or ``"best"`` (best validation F1,
    :func:`ssl_lib.finetune.select_pretrain_epoch`). ``channels_last``: channels-last model and
    batches (``None``: on CUDA only; ``True``: also on the CPU, where it speeds up ResNet18 at 64 px).
    ``precision``: ``"bf16-mixed"`` (bfloat16 autocast), ``"32-true"`` or ``"auto"`` (bf16-mixed on
    CUDA, 32-true on the CPU). ``keep_models``: which fine-tuned models ``run_grid`` writes:
    ``"first"`` only those of the first seed at the largest fraction of each task and init (what
    the Grad-CAM step reads; every run's curves, predictions and results row are always
    written), ``"all"`` every run's.
    """

    name: str
    arch: str
    image_size: int
    linear_epochs: int
    full_epochs: int
    batch_size: int = 64
    lr: float = 1e-4
    linear_lr: float | None = None
    weight_decay: float = 5e-4
    backbone_lr_ratio: float | None = None
    backbone_lr_growth: float = 1.5
    select_metric: str = "accuracy"
    augment: str = "flip"
    train_bn_frozen: bool = False
    fractions: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    stop_f1: float | None = None
    stop_metric: str = "f1"
    pretrain_epoch: str = "last"
    eval_batch_size: int = 256
    channels_last: bool | None = True
    precision: str = "auto"
    keep_models: str = "first"

    @property
    def epochs(self) -> int:
        return self.linear_epochs + self.full_epochs

    @property
    def cached_features(self) -> bool:
        """Whether the linear phase can train on features computed once (frozen, eval-mode backbone)."""
        return self.augment in ("none", "flip") and not self.train_bn_frozen

    def fractions_for(self, task: str) -> tuple[float, ...]:
        """The profile's fractions for a paper task; a user task's own (default 100/75/50/25/10 %)."""
        from .tasks import TASKS, USER_FRACTIONS, get_task

        if task in self.fractions:
            return tuple(self.fractions[task])
        if task not in TASKS:
            return tuple(get_task(task).fractions or USER_FRACTIONS)
        return (1.0,)


@dataclass(frozen=True)
class ExplainProfile:
    """``max_images``: cap on test images explained (None = all); ``tolerance``: pointing-game
    tolerance in pixels (Zhang et al. use 15 px at 224 px); ``n_boot``: bootstrap resamples;
    ``input_size``: smaller images (and masks) are enlarged to this size before Grad-CAM (None:
    as stored); ``stage``: the ResNet stage whose last block Grad-CAM reads.

    ``explainers``: the explanation methods run on the same models and images
    (:data:`ssl_lib.explainers.EXPLAINERS`; Grad-CAM, the paper's, always). The class activation
    maps read ``stage`` too. Occlusion sensitivity: a square of ``occlusion_size`` px filled with
    grey value ``occlusion_fill`` (0-255 of the stored slice; 0 = the darkest value of its window)
    moved in steps of ``occlusion_stride`` px, on the finding's images of a binary task
    (``occlusion_on="positive"``; ``"all"``: every explained image), at most
    ``occlusion_max_images`` of them (None = all): each position is one forward pass per image and
    model, so this cap is what the step's time grows with."""

    max_images: int | None
    batch_size: int
    n_boot: int
    tolerance: int
    input_size: int | None = None
    stage: str = "layer4"
    explainers: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "hirescam", "occlusion")
    occlusion_size: int = 8
    occlusion_stride: int = 8
    occlusion_fill: int = 0
    occlusion_max_images: int | None = None
    occlusion_on: str = "positive"


@dataclass(frozen=True)
class Needs:
    """What a profile needs to be worth starting: a GPU, host memory per step running, a rough time."""

    gpu: bool
    memory_gb: float
    time: str


# ==============================================================================================
# The tables
# ==============================================================================================
PROFILE_NAMES = ("smoke", "quick", "paper")

_DATA = {
    "smoke": DataProfile(lidc_size=32, task_size=32, synthetic="smoke"),
    "quick": DataProfile(lidc_size=64, task_size=64, synthetic="quick"),
    # the paper: LIDC slices as 512 x 512 input (pre-training crops 224), tasks resized to 224
    "paper": DataProfile(lidc_size=512, task_size=224, synthetic="quick"),
}

_SYNTHETIC: dict[str, SyntheticProfile] = {
    "smoke": SyntheticProfile(3, 12, 64, 24, (100, 160), (6, 1, 1), 2, 20, 64),
    # quick: COVID easiest (at 0.5 every init was near chance at 64 px, random AUC 0.45); twice
    # the COVID images and four times the Brain images of before (test AUCs over 81 and 32 images
    # flipped the sign of pre-trained minus random between runs; Brain test folds of 64 images
    # still did, with run SDs up to 0.27: 128 per fold brought them to 0.02-0.18)
    "quick": SyntheticProfile(20, 32, 128, 600, (100, 160), (16, 4, 6), 4, 640, 128, lidc_slices_jitter=4,
                              difficulty={"covid": 0.0, "organs": 0.5, "brain": 0.5}),
    "paper-demo": SyntheticProfile(100, 64, 256, 746, (150, 400), (115, 16, 70), 6, 400, 256, lidc_slices_jitter=8),
}
_SYNTHETIC["paper"] = _SYNTHETIC["paper-demo"]
#: Names of the synthetic data sets (``paper`` is an alias of ``paper-demo``).
SYNTHETIC_NAMES = tuple(_SYNTHETIC)

#: quick: 100 %, 25 % (the headline comparison: all labels, few labels) and 10 %, a third point for
#: Figure 5's curve (its runs train on a tenth of the data)
_QUICK_FRACTIONS = {t: (1.0, 0.25, 0.1) for t in PAPER_FRACTIONS}
_FINETUNE: dict[str, FinetuneProfile] = {
    "smoke": FinetuneProfile("smoke", "resnet18", 32, 2, 1, batch_size=16,
                             fractions={t: (1.0, 0.5) for t in PAPER_FRACTIONS}, seeds=(0,), eval_batch_size=64),
    # quick: 40 linear-only epochs at lr 1e-3 (cheap: cached features; the head converges, which
    # 3 epochs at 1e-4 did not) + 1 full epoch at lr 1e-4 (the full phase is 3/4 of the grid's
    # time; a second one moved mean test AUCs by <= 0.02 in the measured quick study), so that the
    # study's 135 runs (5 inits x 3 tasks x 3 fractions x 3 seeds) fit minutes on 2 CPU cores;
    # three seeds, because every verdict tests against the spread over runs (ssl_lib.stats, with
    # the test-case noise), which two hardly estimate; fractions: _QUICK_FRACTIONS; brain runs fold
    # (seed % 5) of its 5-fold CV, i.e. folds 0-2; no stopping rule.
    "quick": FinetuneProfile("quick", "resnet18", 64, 40, 1, batch_size=64, linear_lr=1e-3, fractions=_QUICK_FRACTIONS,
                             seeds=(0, 1, 2)),
    "paper": FinetuneProfile("paper", "resnet50", 224, 10, 60, batch_size=64, backbone_lr_ratio=0.1,
                             augment="monai", train_bn_frozen=True, fractions=dict(PAPER_FRACTIONS),
                             seeds=(0, 1, 2, 3, 4), stop_f1=0.7, stop_metric="f1_seed", pretrain_epoch="best",
                             channels_last=None),
}

#: The quick profile fine-tunes at 64 px, where the last stage (layer4, stride 32) is a 2 x 2
#: grid: a map cannot point at anything. Its Grad-CAM reads the first stage (layer1, stride 4), a
#: 16 x 16 grid, on the test images at the size the models were fine-tuned at. Enlarging them to
#: 128 px instead (layer2 then gives 16 x 16 too) put the models off their training size: in the
#: seed-0 quick study three of the four pre-trained COVID-19 models called all 128 enlarged test
#: images one class (accuracy 0.50 against 0.62-0.66 at 64 px), so their maps explained nothing
#: they had learned. The third stage (8 x 8 at 128 px) left up to half of the maps constant.
#: Occlusion costs one forward pass per square position, image and model; the class activation
#: maps cost nothing beside Grad-CAM (one shared backward pass). At 64 px an 8 px square in steps of
#: 8 px is 64 passes per image: measured with benchmarks/explain_speed.py (quick, 128 images, the 5
#: models, one thread), Grad-CAM alone took 7.5 s of CPU, all four CAMs 7.5 s, occlusion on 32
#: positive images 97 s more, and importing MONAI 6 s; the quick step may grow by about a minute on
#: two cores, so occlusion covers 16 positive images there. The paper profile (224 px, on a GPU)
#: uses a 32 px square in steps of 16 px (169 positions per image) on every positive image.
_EXPLAIN = {
    "smoke": ExplainProfile(max_images=16, batch_size=8, n_boot=200, tolerance=2, occlusion_size=8,
                            occlusion_stride=8, occlusion_max_images=4),
    "quick": ExplainProfile(max_images=128, batch_size=32, n_boot=1000, tolerance=4, stage="layer1",
                            occlusion_size=8, occlusion_stride=8, occlusion_max_images=16),
    "paper": ExplainProfile(max_images=None, batch_size=32, n_boot=2000, tolerance=15, occlusion_size=32,
                            occlusion_stride=16, occlusion_max_images=None),
}
#: Output stride of each ResNet stage (the Grad-CAM grid is the input side over it).
STAGE_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def stage_side(side: int, stage: str = "layer4") -> int:
    """The side of a torchvision ResNet's ``stage`` map for a ``side`` px input.

    Every downsampling (the 7 x 7 stem conv, the max pool, the first block of layer2-4) has stride
    2 and "same" padding, so it maps ``n`` to ``ceil(n / 2)``: layer4 is ``ceil(side / 32)``
    after five halvings, e.g. 1 for 32 px and 2 for 33-64 px.
    """
    n = int(side)
    for _ in range(STAGE_STRIDES[stage].bit_length() - 1):
        n = (n + 1) // 2
    return n


#: The smallest last-stage (layer4) map a pre-training crop may reach. A 1 x 1 map leaves taps of
#: the 3 x 3 convolutions of layer4 that see only zero padding; with bfloat16 on the CPU, oneDNN's
#: convolution backward filled those weight-gradient taps with uninitialised memory, which LARS
#: applied (the smoke SwAV run was NaN from its second step; float32, or oneDNN off, gave finite
#: gradients, exactly zero there). At 2 x 2 every tap of every ResNet convolution sees the image.
MIN_LAST_STAGE = 2

#: Rough needs per profile. quick: the whole study took 10-14 min on 2 CPU cores (see the reproduce
#: page); paper: a paper-profile pre-training filled 24 GB of host memory on a CPU-only machine.
NEEDS = {
    "smoke": Needs(False, 1.5, "a few minutes on 2 CPU cores"),
    "quick": Needs(False, 3.0, "about 15 minutes on 2 CPU cores"),
    "paper": Needs(True, 24.0, "days on one GPU"),
}


def _unknown(kind: str, name: str, choices) -> ProfileError:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ProfileError(f"unknown {kind} {name!r}{hint}; choose one of {sorted(choices)}")


def _override(part: Any, what: str, overrides: Mapping[str, Any] | None):
    """``part`` with field ``overrides``; an unknown field is a :class:`ProfileError`."""
    if not overrides:
        return part
    names = {f.name for f in dataclasses.fields(part)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ProfileError(f"unknown {what} setting(s) {unknown}; the settings are {sorted(names)}")
    return replace(part, **overrides)


# ==============================================================================================
# Pre-training profiles: from the method registry
# ==============================================================================================
def pretrain_profiles() -> dict[str, Mapping[str, Any]]:
    """``{method: {profile: PretrainConfig}}`` of every registered method, in registry order."""
    from .pretrain.registry import methods

    return {spec.name: dict(spec.profiles) for spec in methods()}


# ==============================================================================================
# The study profile
# ==============================================================================================
@dataclass(frozen=True)
class StudyProfile:
    """One profile of the whole study; see the module docstring. ``pretrain_overrides`` apply to
    every method's config (e.g. ``{"epochs": 3}``)."""

    name: str
    data: DataProfile
    synthetic: SyntheticProfile
    finetune: FinetuneProfile
    explain: ExplainProfile
    needs: Needs
    pretrain_overrides: Mapping[str, Any] = field(default_factory=dict)

    def methods(self) -> tuple[str, ...]:
        """The registered pre-training methods that have an entry for this profile."""
        return tuple(m for m, profs in pretrain_profiles().items() if self.name in profs)

    def pretrain(self, method: str):
        """``method``'s :class:`~ssl_lib.pretrain.PretrainConfig` at this profile (with the overrides)."""
        table = pretrain_profiles()
        if method not in table:
            raise _unknown("pre-training method", method, table)
        if self.name not in table[method]:
            raise ProfileError(f"pre-training method {method!r} has no {self.name!r} profile "
                               f"(it has {sorted(table[method])})")
        return _override(table[method][self.name], f"{method} pre-training", self.pretrain_overrides)

    def problems(self) -> list[str]:
        """What does not fit together, one sentence per problem (empty: the profile is consistent)."""
        from .models.backbone import ARCHS  # the ResNets both steps build

        p, d, ft, ex = self.name, self.data, self.finetune, self.explain
        out = []
        if d.synthetic not in _SYNTHETIC:
            out.append(f"profile {p!r}: data.synthetic names the synthetic data set {d.synthetic!r}, which does "
                       f"not exist (the sets are {sorted(_SYNTHETIC)})")
        if ft.arch not in ARCHS:
            out.append(f"profile {p!r}: finetune.arch {ft.arch!r} is not a ResNet both steps build {ARCHS}")
        if d.task_size != ft.image_size:
            out.append(f"profile {p!r}: the task stores are {d.task_size} px (data.task_size) but fine-tuning "
                       f"trains at {ft.image_size} px (finetune.image_size); set both to the same size")
        for task, fracs in ft.fractions.items():
            if not fracs or any(not 0.0 < float(f) <= 1.0 for f in fracs):
                out.append(f"profile {p!r}: finetune.fractions[{task!r}] = {tuple(fracs)}: every fraction "
                           "must lie in (0, 1]")
        if not ft.seeds:
            out.append(f"profile {p!r}: finetune.seeds is empty")
        if ex.stage not in STAGE_STRIDES:
            out.append(f"profile {p!r}: explain.stage {ex.stage!r} is not a ResNet stage {tuple(STAGE_STRIDES)}")
        else:
            side = max(ft.image_size, ex.input_size or 0)
            if ex.input_size is not None and ex.input_size < ft.image_size:
                out.append(f"profile {p!r}: explain.input_size {ex.input_size} px is smaller than the fine-tuning "
                           f"size {ft.image_size} px (Grad-CAM only enlarges images)")
            if side < STAGE_STRIDES[ex.stage]:
                out.append(f"profile {p!r}: Grad-CAM at {ex.stage} (stride {STAGE_STRIDES[ex.stage]}) of a "
                           f"{side} px image has no grid cell; raise explain.input_size or read an earlier stage")
            if ex.tolerance >= side:
                out.append(f"profile {p!r}: explain.tolerance {ex.tolerance} px is not smaller than the "
                           f"{side} px image Grad-CAM explains")
            out += _explainer_problems(p, ex, side)
        for method, profs in pretrain_profiles().items():
            if p not in profs:
                out.append(f"profile {p!r}: pre-training method {method!r} has no entry for it")
                continue
            try:
                cfg = self.pretrain(method)
            except ProfileError as err:
                out.append(str(err))
                continue
            if cfg.arch != ft.arch:
                out.append(f"profile {p!r}: {method} pre-trains a {cfg.arch} but fine-tuning builds a {ft.arch}; "
                           "the exported encoder must load into the fine-tuning model (same ResNet on both sides)")
            for name, side in cfg.crop_sizes().items():
                last = stage_side(side)
                if last < MIN_LAST_STAGE:
                    out.append(f"profile {p!r}: {method}'s {name} of {side} px reaches the last ResNet stage (layer4, "
                               f"stride 32) as {last} x {last}; every crop must give at least {MIN_LAST_STAGE} x "
                               f"{MIN_LAST_STAGE} there (>= 33 px): bfloat16 convolution gradients of 1 x 1 maps "
                               "were not finite on the CPU")
            if cfg.store_size != d.lidc_size:
                out.append(f"profile {p!r}: {method}'s profile is meant for a {cfg.store_size} px pre-training "
                           f"store but the lidc store is {d.lidc_size} px (data.lidc_size)")
        return out

    def validate(self) -> "StudyProfile":
        """Raise :class:`ProfileError` listing every problem (:meth:`problems`); return ``self``."""
        problems = self.problems()
        if problems:
            raise ProfileError(problems[0] if len(problems) == 1 else
                               f"profile {self.name!r} does not fit together:\n  - " + "\n  - ".join(problems))
        return self


def _explainer_problems(p: str, ex: ExplainProfile, side: int) -> list[str]:
    """What does not fit in the explanation methods of profile ``p`` at images of ``side`` px."""
    from .explainers import EXPLAINERS

    out = []
    unknown = [e for e in ex.explainers if e not in EXPLAINERS]
    if unknown:
        out.append(f"profile {p!r}: explain.explainers {unknown} are not registered explanation methods "
                   f"{tuple(EXPLAINERS)}")
    if "gradcam" not in ex.explainers:
        out.append(f"profile {p!r}: explain.explainers must include 'gradcam' (the paper's method), "
                   f"got {ex.explainers}")
    if "occlusion" in ex.explainers:
        if not 1 <= ex.occlusion_size <= side:
            out.append(f"profile {p!r}: explain.occlusion_size {ex.occlusion_size} px does not fit the {side} px images")
        if not 1 <= ex.occlusion_stride <= ex.occlusion_size:
            out.append(f"profile {p!r}: explain.occlusion_stride {ex.occlusion_stride} px must lie in "
                       f"[1, occlusion_size = {ex.occlusion_size}] (a larger step leaves pixels never covered)")
        if not 0 <= ex.occlusion_fill <= 255:
            out.append(f"profile {p!r}: explain.occlusion_fill {ex.occlusion_fill} is not a grey value 0-255")
        if ex.occlusion_max_images is not None and ex.occlusion_max_images < 1:
            out.append(f"profile {p!r}: explain.occlusion_max_images {ex.occlusion_max_images} must be at least 1 "
                       "(or None for all; drop 'occlusion' from explain.explainers to skip it)")
        if ex.occlusion_on not in ("positive", "all"):
            out.append(f"profile {p!r}: explain.occlusion_on {ex.occlusion_on!r} must be 'positive' or 'all'")
    return out


def _study_part(table: Mapping[str, Any], name: str, kind: str):
    if name not in table:
        raise _unknown(kind, name, table)
    return table[name]


def get_profile(name: str, *, data: Mapping | None = None, synthetic: Mapping | None = None,
                finetune: Mapping | None = None, explain: Mapping | None = None, pretrain: Mapping | None = None,
                validate: bool = True) -> StudyProfile:
    """The study profile ``name`` (``smoke``/``quick``/``paper``) with per-part field overrides,
    validated (:meth:`StudyProfile.validate`) unless ``validate=False``.

    ``data``/``synthetic``/``finetune``/``explain``: fields of that part; ``pretrain``: fields of
    every method's config (``None`` values are ignored there, as :func:`ssl_lib.pretrain.get_config`
    does). An unknown profile or field is a :class:`ProfileError` naming the choices.
    """
    if name not in PROFILE_NAMES:
        raise _unknown("profile", name, PROFILE_NAMES)
    d = _override(_DATA[name], "data", data)
    prof = StudyProfile(
        name=name, data=d,
        synthetic=_override(_study_part(_SYNTHETIC, d.synthetic, "synthetic data set"), "synthetic", synthetic),
        finetune=_override(_FINETUNE[name], "finetune", finetune),
        explain=_override(_EXPLAIN[name], "explain", explain),
        needs=NEEDS[name],
        pretrain_overrides={k: v for k, v in (pretrain or {}).items() if v is not None})
    return prof.validate() if validate else prof


#: Notebook parameters (the runner's ``--param``) that override a profile field: name -> (part, field).
#: A value of ``None``, ``0`` or ``""`` is the notebooks' "the profile's" and overrides nothing.
PARAM_FIELDS = {"epochs": ("pretrain", "epochs"), "batch_size": ("pretrain", "batch_size"),
                "image_size": ("data", "task_size")}


def overrides_from_params(params: Mapping[str, Any]) -> dict[str, dict]:
    """The :func:`get_profile` overrides that notebook ``params`` make (see :data:`PARAM_FIELDS`)."""
    out: dict[str, dict] = {}
    for name, (part, key) in PARAM_FIELDS.items():
        value = params.get(name)
        if value not in (None, 0, ""):
            out.setdefault(part, {})[key] = value
    return out


# ==============================================================================================
# One part by name, for the modules that read only theirs
# ==============================================================================================
def data_profile(name: str) -> DataProfile:
    """The stores' sizes of study profile ``name``."""
    return _study_part(_DATA, name, "profile")


def synthetic_profile(name: str) -> SyntheticProfile:
    """The synthetic data set ``name`` (``smoke``, ``quick``, ``paper-demo``/``paper``)."""
    return _study_part(_SYNTHETIC, name, "synthetic profile")


def finetune_profile(profile: str | FinetuneProfile, **overrides) -> FinetuneProfile:
    """The fine-tuning part of study profile ``profile`` (or the one given), with field ``overrides``."""
    if isinstance(profile, str):
        profile = _study_part(_FINETUNE, profile, "fine-tuning profile")
    return _override(profile, "fine-tuning", overrides)


def explain_profile(name: str) -> ExplainProfile:
    """The Grad-CAM part of study profile ``name``."""
    return _study_part(_EXPLAIN, name, "profile")
