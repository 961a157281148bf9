"""The study runner: executes the notebook templates with papermill, then builds the book.

``python -m ssl_lib study --profile quick --output outputs/quick`` runs every step of
:data:`STEPS` (each notebook executed into ``<output>/notebooks/``), times each step, then
stages the book (the repository's ``_config.yml``, ``_toc.yml`` and ``book/`` plus the
executed notebooks) under ``<output>/book`` and builds HTML with Jupyter Book into
``<output>/book/_build/html``. Steps read only what earlier steps wrote under the output folder,
so a step can be rerun alone (``--steps``).

Steps run as soon as the steps they read from (``Step.after``) are done, up to ``jobs`` at a
time (``--jobs``; default two on a CPU-only machine with two or more cores, else one): the four
pre-trainings run two by two. Each step's notebook is executed by its own process whose kernel
gets a fixed share of the cores (``Step.share`` of ``os.cpu_count()``, through
``OMP_NUM_THREADS``): half for a pre-training, all for the other steps. The share never depends
on which steps run beside it or on ``--jobs``, because a CPU result depends on the thread count
(the order of floating-point sums): the same seed on the same machine gives bit-identical
encoders whatever the scheduling. Two single-threaded pre-trainings fill two cores where one
two-threaded run leaves part of them idle (Python, data and plotting work is single-threaded).
The threads each step used are recorded in the timings table. The largest steps
(``Step.cost``) start first.

The runner never loses the user's work (issue 16):

* **Parameters are checked first** (:func:`check_request`, well under a second, nothing written):
  step names, ``--jobs``, ``--param`` names (the union of the templates' ``parameters`` cells,
  with a did-you-mean), data paths that must exist, ImageNet weights that must fit the profile's
  ResNet (:data:`WEIGHTS_PARAMS`), a writable output folder, and what the
  profile needs (:data:`PROFILE_NEEDS`: GPU, memory per step; ``force`` overrides), and that the
  profile's parts fit together with the parameters that override them (:mod:`ssl_lib.profiles`).
* **The output folder is its own** (:class:`ssl_lib.runfolder.RunFolder`): a non-empty folder
  without its manifest is refused untouched; only paths it claimed are written or deleted; one
  run at a time holds the folder's lock.
* **Each step has a fingerprint** in the manifest: its *identity* (profile, parameters with the
  sources as salted hashes, the upstream steps' identities) and the template's content and
  upstream fingerprints on top. A finished step with the same fingerprint and complete outputs
  is skipped (its executed notebook reused); an interrupted or code-changed one reruns on top of
  its outputs (pre-training resumes from its checkpoint, fine-tuning skips finished runs); a
  step whose identity changed while its old outputs exist would mix results: the run stops and
  says what differs, unless ``overwrite`` removes the runner's outputs of those steps and of
  everything downstream.
* **Interrupts are clean**: Ctrl-C or SIGTERM stops every child process tree (steps run in
  sessions of their own; see :mod:`ssl_lib.procs`), removes this run's temporary files and ends
  with one line that says what finished and how to resume; temporary files of runs that were
  killed are removed by the next run.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import procs
from .kernel import jupyter_env
from .paths import StudyPaths
from .profiles import NEEDS as PROFILE_NEEDS
from .profiles import PARAM_FIELDS, ProfileError, get_profile, overrides_from_params
from .runfolder import RunFolder, StudyError
from .widgets import BATCH_ENV

REPO = Path(__file__).resolve().parent.parent
__all__ = ["STEPS", "Step", "StudyError", "StudyInterrupted", "run_study", "check_request", "main"]


@dataclass(frozen=True)
class Step:
    """A notebook of the study: ``after`` names the steps whose outputs it reads; ``cost`` is a
    relative size hint (among steps ready at once, the largest starts first); ``outputs`` are the
    paths under the output folder it writes besides its executed notebook; ``share``: the
    fraction of the cores its kernel always gets (:func:`step_threads`); ``shows``: whose numbers
    its page shows, which decides the data sources its synthetic-data notice names
    (:func:`page_sources`): ``"all"`` the study's stores, ``"pretraining"`` LIDC-IDRI's,
    ``"explained"`` LIDC-IDRI's and the explained tasks'."""

    name: str
    notebook: str  # relative to the repository root
    after: tuple[str, ...] = ()
    cost: float = 1.0
    outputs: tuple[str, ...] = ()
    share: float = 1.0
    method: str = ""  # a pre-training step: its method
    shows: str = "all"

    @property
    def template(self) -> Path:
        """The committed template; for a method without one, the template generated for it."""
        path = REPO / self.notebook
        if self.method and not path.is_file():
            from .templates import materialize
            from .templates.pretrain import method_specs

            specs = method_specs()
            index = next(i for i, spec in enumerate(specs) if spec.name == self.method)
            return materialize(specs[index], index)
        return path

    @property
    def executed(self) -> str:
        """The executed notebook, relative to the output folder."""
        return f"notebooks/{Path(self.notebook).name}"


def study_steps(methods: Sequence[str] | None = None) -> tuple[Step, ...]:
    """The study's steps in book order; each notebook takes at least ``profile`` and ``output_dir``.

    One pre-training step per registered method (:func:`ssl_lib.templates.method_specs`, the
    registry's order; ``cost`` is the method's ``step_cost``, the quick profile's minutes on 2
    cores), or only for ``methods`` (the runner's ``--methods``; fine-tuning then waits for those
    only); a method without a committed template runs the one :mod:`ssl_lib.templates` generates.
    """
    from .templates import pretrain_file
    from .templates.pretrain import method_specs

    specs = method_specs()
    names = [spec.name for spec in specs]
    unknown = [m for m in methods or () if m not in names]
    if unknown:
        raise StudyError("; ".join(f"unknown method {m!r}{_did_you_mean(m, names)}" for m in unknown)
                         + f"; the registered methods are {names}")
    pretrain = tuple(Step(f"pretrain_{spec.name}", pretrain_file(i, spec.name), ("preprocess",), spec.step_cost,
                          (f"pretrain/{spec.name}",), 0.5, method=spec.name, shows="pretraining")
                     for i, spec in enumerate(specs)
                     if methods is None or spec.name in methods)
    return (
        Step("preprocess", "notebooks/01_preprocess.ipynb", outputs=("synthetic", "stores")),
        *pretrain,
        Step("finetune", "notebooks/06_finetune.ipynb", tuple(p.name for p in pretrain), outputs=("finetune",)),
        Step("reduction", "notebooks/07_reduction.ipynb", ("finetune",), outputs=("finetune",)),  # reuses 06's runs
        Step("gradcam", "notebooks/08_gradcam.ipynb", ("reduction",), outputs=("gradcam",), shows="explained"),
        Step("results", "notebooks/09_results.ipynb", ("gradcam",), outputs=("verdicts",)),
    )


def __getattr__(name: str):
    """``STEPS`` (:func:`study_steps`) is made on first use: the method registry imports torch."""
    if name == "STEPS":
        globals()["STEPS"] = study_steps()
        return globals()["STEPS"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _steps() -> tuple[Step, ...]:
    """:data:`STEPS` as it stands (a test may have replaced it)."""
    return globals()["STEPS"] if "STEPS" in globals() else __getattr__("STEPS")


BOOK_FILES = ("_config.yml", "_toc.yml", "book")
#: What the runner writes besides the steps' outputs (claimed like them).
RUNNER_OUTPUTS = ("timings.csv",)


#: Parameter names (suffixes) whose values are data paths that must exist when given.
PATH_SUFFIXES = ("_root", "_npz", "_labels", "_csv", "_weights")
#: Parameters naming a torchvision ResNet weights file: checked at once against the profile's
#: backbone (:func:`_weights_problem`) and kept in the manifest as a salted fingerprint of the
#: file's content (:func:`_shown_params`), never its path.
WEIGHTS_PARAMS = ("imagenet_weights",)
_RESERVED = {"profile": "--profile", "output_dir": "--output"}


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the study; ``message`` says what finished and how to resume."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.message, self.signum = message, signum


# ==============================================================================================
# Parameters, checked before anything is written
# ==============================================================================================
def template_parameters(path: Path) -> dict:
    """Names assigned in a notebook's ``parameters``-tagged cell (what ``papermill.inspect_notebook``
    reports) with their default values, read with :mod:`ast` so that checking them takes
    milliseconds, not papermill's import."""
    nb = json.loads(Path(path).read_text())
    names: dict = {}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            for node in ast.parse(src).body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                    if isinstance(node, ast.AnnAssign) and node.value is not None else []
                for t in targets:
                    if isinstance(t, ast.Name):
                        try:
                            names[t.id] = ast.literal_eval(node.value)
                        except ValueError:
                            names[t.id] = ast.unparse(node.value)
    return names


def is_path_param(name: str, value) -> bool:
    """A given data path: a non-empty string named ``*_root|_npz|_labels|_csv|_weights`` or ``store``, or holding a slash."""
    return isinstance(value, str) and value != "" and (
        name.endswith(PATH_SUFFIXES) or name == "store" or "/" in value or os.sep in value)


def _task_problems(value) -> list[str]:
    """The ``tasks`` parameter read as the study will read it (:func:`ssl_lib.tasks.parse_tasks`),
    and each task's data paths (``source``, ``labels_csv``, ``masks_root``) checked to exist."""
    from .tasks import parse_tasks

    try:
        specs = parse_tasks(value)
    except ValueError as err:
        return [f"--param tasks: {err}"]
    return [f"--param tasks: task {s.name!r}: {p}: no such file or folder" for s in specs
            for p in (s.source, s.options.get("labels_csv"), s.options.get("masks_root"))
            if p and not Path(str(p)).expanduser().exists()]


def _weights_problem(name: str, value: str, profile: str, extra: dict) -> str | None:
    """A weights file that does not fit the profile's fine-tuning backbone (or is no torchvision
    ResNet state dict at all), as one message naming the file and what is wrong; ``None`` if it fits.
    Reads the file (``weights_only``), which imports torch: only when such a parameter is given."""
    from .inits import InitError, load_imagenet

    try:
        arch = get_profile(profile, **overrides_from_params(extra)).finetune.arch
    except ProfileError:
        return None  # reported by the profile check
    try:
        load_imagenet(Path(value).expanduser(), arch)
    except InitError as err:
        return f"--param {name}: {err}"
    return None


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _total_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def check_request(output, profile: str, steps: list[str] | None, extra: dict, jobs: int | None,
                  force: bool = False) -> list[Step]:
    """Every check that needs no work, before anything is written; returns the chosen steps.

    Raises :class:`StudyError` with one message per problem found: an unknown profile or step, a
    ``jobs`` below 1, an unknown ``--param`` name (with the closest accepted one), a given data path
    that does not exist, a weights file that is no torchvision state dict of the profile's ResNet,
    an output folder that cannot be written or that holds someone else's files, a profile this
    machine cannot run (unless ``force``).
    """
    problems = []
    if profile not in PROFILE_NEEDS:
        problems.append(f"unknown profile {profile!r}{_did_you_mean(profile, PROFILE_NEEDS)}; "
                        f"the profiles are {sorted(PROFILE_NEEDS)}")
    else:  # the profile's parts must fit together with the parameters that override them
        try:
            get_profile(profile, **overrides_from_params(extra))
        except ProfileError as err:
            problems.append(f"--profile {profile} with --param {sorted(set(extra) & set(PARAM_FIELDS))}: {err}"
                            if set(extra) & set(PARAM_FIELDS) else str(err))
    names = [s.name for s in _steps()]
    for name in steps or []:
        if name not in names:
            problems.append(f"unknown step {name!r}{_did_you_mean(name, names)}; the steps are {names}")
    if steps is not None and not steps:
        problems.append(f"--steps names no step; the steps are {names}")
    if jobs is not None and int(jobs) < 1:
        problems.append(f"--jobs must be at least 1, got {jobs}")
    accepted = {n for s in _steps() for n in template_parameters(s.template)}
    for name, value in extra.items():
        if name in _RESERVED:
            problems.append(f"--param {name} is set by {_RESERVED[name]}, not --param")
        elif name not in accepted:
            problems.append(f"unknown parameter {name!r}{_did_you_mean(name, accepted)}; no notebook of the study "
                            f"takes it (they take {sorted(accepted - set(_RESERVED))})")
        elif name == "tasks":
            problems.extend(_task_problems(value))
        elif is_path_param(name, value) and not Path(value).expanduser().exists():
            problems.append(f"--param {name}={value}: no such file or folder")
        elif name in WEIGHTS_PARAMS and value not in ("", None):
            if not isinstance(value, str) or not Path(value).expanduser().is_file():
                problems.append(f"--param {name}={value}: not a weights file")
            elif profile in PROFILE_NEEDS and (problem := _weights_problem(name, value, profile, extra)):
                problems.append(problem)
    folder = RunFolder(output)
    for check in (folder.check_writable, folder.check_ownable):
        try:
            check()
        except StudyError as err:
            problems.append(str(err))
            break
    if not problems and not force:
        needs = PROFILE_NEEDS[profile]
        if needs.gpu and not _has_gpu():
            problems.append(f"profile {profile!r} needs a GPU (it takes {needs.time} there) and this machine has "
                            "none; use --profile quick, or --force to start anyway")
        total = _total_memory_gb()
        side_by_side = int(jobs) if jobs is not None else 1
        if total is not None and needs.memory_gb * side_by_side > total:
            problems.append(f"profile {profile!r} needs about {needs.memory_gb:g} GB of memory per step"
                            + (f", {needs.memory_gb * side_by_side:g} GB for {side_by_side} steps side by side,"
                               if side_by_side > 1 else ",")
                            + f" and this machine has {total:.1f} GB; "
                            + ("use fewer --jobs" if side_by_side > 1 else "use a larger machine")
                            + ", or --force to start anyway")
    if problems:
        raise StudyError("\n".join(problems) if len(problems) == 1 else
                         "the study was not started:\n  - " + "\n  - ".join(problems))
    return [s for s in _steps() if steps is None or s.name in steps]


def default_jobs() -> int:
    """Steps run side by side by default: 2 on a CPU-only machine with 2+ cores, else 1 (a GPU is not shared)."""
    return 1 if _has_gpu() or (os.cpu_count() or 1) < 2 else 2


def step_threads(step: Step, cpus: int | None = None) -> int:
    """Threads of ``step``'s kernel: its ``share`` of the cores, at least one; fixed per machine."""
    return max(1, int((cpus or os.cpu_count() or 1) * step.share))


def _step_params(step: Step, root: Path, profile: str, extra: dict | None) -> dict:
    params = {"profile": profile, "output_dir": str(root.resolve())}
    accepted = set(template_parameters(step.template))
    params.update({k: v for k, v in (extra or {}).items() if k in accepted})
    return params


# ==============================================================================================
# Fingerprints, skipping, and what may not be mixed
# ==============================================================================================
def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


_CONTENT_HASHES: dict[tuple, str] = {}


def _content_hash(path: Path) -> str:
    """SHA-256 of a file, once per path, size and modification time in this process."""
    from .inits import file_sha256

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CONTENT_HASHES:
        _CONTENT_HASHES[key] = file_sha256(path)
    return _CONTENT_HASHES[key]


def _shown_params(folder: RunFolder, params: dict) -> dict:
    """Parameters as the manifest keeps them: data paths as salted fingerprints (never the path); a
    weights file (:data:`WEIGHTS_PARAMS`) by its content, so that other weights at the same path rerun."""
    def shown(k, v):
        if k in WEIGHTS_PARAMS and is_path_param(k, v) and Path(v).expanduser().is_file():
            return {"file": folder.fingerprint("sha256:" + _content_hash(Path(v).expanduser().resolve()))}
        if is_path_param(k, v):
            return {"source": folder.fingerprint(str(Path(v).expanduser().resolve()))}
        return v

    return {k: shown(k, v) for k, v in params.items() if k != "output_dir"}


_DEFAULT = "(the notebook's default)"


def _describe(value) -> str:
    if isinstance(value, dict):
        return "a given file" if "file" in value else "a given path"
    return value if value == _DEFAULT else repr(value)


def _differences(old: dict, new: dict) -> list[str]:
    """``name: old -> new`` for each parameter that differs (paths only as 'a different path')."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _DEFAULT), new.get(key, _DEFAULT)
        if a == b:
            continue
        both_paths = isinstance(a, dict) and isinstance(b, dict)
        kind = "file" if both_paths and "file" in b else "path"
        out.append(f"{key}: a different {kind}" if both_paths else f"{key}: {_describe(a)} -> {_describe(b)}")
    return out


@dataclass
class _Planned:
    step: Step
    params: dict
    shown: dict
    identity: str
    fp: str
    run: bool = True
    why: str = "new"


def _downstream_closure(names: set[str], records: dict) -> set[str]:
    """``names`` plus every recorded step reading from them or sharing an output with them."""
    out = set(names)
    by_name = {s.name: s for s in _steps()}
    changed = True
    while changed:
        changed = False
        for s in _steps():
            if s.name in out or s.name not in records:
                continue
            shares = any(set(s.outputs) & set(by_name[n].outputs) for n in out if n in by_name)
            if shares or any(d in out for d in s.after):
                out.add(s.name)
                changed = True
    return out


def plan_steps(folder: RunFolder, profile: str, chosen: list[Step], extra: dict, overwrite: bool,
               book: bool) -> dict[str, _Planned]:
    """Fingerprint the chosen steps, refuse (or with ``overwrite`` clear) outputs made with other
    settings, and decide which steps run and which are skipped. Called under the folder's lock."""
    records = folder.manifest["steps"]
    chosen_names = {s.name for s in chosen}
    identity: dict[str, str | None] = {}
    fps: dict[str, str | None] = {}
    plan: dict[str, _Planned] = {}
    for s in _steps():
        rec = records.get(s.name)
        if s.name not in chosen_names:
            identity[s.name], fps[s.name] = (rec["identity"], rec["fp"]) if rec else (None, None)
            continue
        params = _step_params(s, folder.root, profile, extra)
        shown = _shown_params(folder, {**template_parameters(s.template), **params})  # defaults included
        identity[s.name] = _hash(shown, [identity.get(d) for d in s.after])
        fps[s.name] = _hash(identity[s.name], _file_hash(s.template), [fps.get(d) for d in s.after])
        plan[s.name] = _Planned(s, params, shown, identity[s.name], fps[s.name])

    # outputs made with other settings
    reasons: list[str] = []
    conflicts: set[str] = set()
    held = folder.manifest.get("profile")
    if held not in (None, profile) and records:
        reasons.append(f"it holds the {held!r} profile's study and this run asks for {profile!r}")
        conflicts |= set(records)
    for name, p in plan.items():
        rec = records.get(name)
        has_outputs = rec is not None and any((folder.root / r).exists() for r in p.step.outputs)
        if rec and rec["identity"] != p.identity and has_outputs and name not in conflicts:
            diff = _differences(rec.get("params", {}), p.shown) or ["the steps it reads from were made differently"]
            reasons.append(f"step {name}: " + "; ".join(diff))
            conflicts.add(name)
    remove = _downstream_closure(conflicts, records) if conflicts else set()
    if conflicts and not overwrite:
        raise StudyError(
            f"output folder {folder.root} holds results made with other settings, which this run would mix "
            f"with its own:\n  - " + "\n  - ".join(reasons) +
            f"\nStart over in a new folder (another --output), or add --overwrite to delete the study runner's "
            f"outputs of step(s) {', '.join(s.name for s in _steps() if s.name in remove)} and run them again.")

    # steps read from, but not run now, must be there
    for p in plan.values():
        for d in p.step.after:
            if d in chosen_names:
                continue
            rec, up = records.get(d), next(s for s in _steps() if s.name == d)
            missing = (d in remove or (rec is not None and rec["state"] != "done") or
                       (rec is None and up.outputs and not any((folder.root / r).exists() for r in up.outputs)))
            if missing:
                state = "was interrupted" if rec is not None and rec["state"] != "done" and d not in remove else \
                    "would be removed" if d in remove else "has not run"
                raise StudyError(f"step {p.step.name} reads what step {d} writes, and {d} {state}: run it too "
                                 f"(add it to --steps, or leave --steps out)")

    # nothing the runner did not write may be in the way
    wanted = [r for p in plan.values() for r in (*p.step.outputs, p.step.executed)]
    wanted += list(RUNNER_OUTPUTS) + (["book"] if book else [])
    foreign = folder.foreign(dict.fromkeys(wanted))
    if foreign:
        raise StudyError(f"{folder.root} holds {', '.join(foreign)}, which the study runner did not write; move "
                         "it away or choose another --output (nothing was changed)")

    if remove:
        for name in [s.name for s in _steps() if s.name in remove]:
            step = next(s for s in _steps() if s.name == name)
            for rel in (*step.outputs, step.executed):
                folder.remove(rel)
            records.pop(name, None)
        folder.manifest.pop("book_fp", None)
        folder.save()
        print(f"--overwrite: removed the outputs of {', '.join(s.name for s in _steps() if s.name in remove)}",
              flush=True)

    for name, p in plan.items():  # book order is an order of dependencies
        rec = records.get(name)
        upstream_runs = any(plan[d].run for d in p.step.after if d in plan)
        complete = (rec is not None and rec["state"] == "done" and rec["fp"] == p.fp
                    and (folder.root / p.step.executed).is_file()
                    and all((folder.root / r).exists() for r in rec.get("outputs", [])))
        p.run = upstream_runs or not complete
        p.why = ("unchanged" if not p.run else "a step it reads from runs" if complete else "new" if rec is None
                 else "its parameters changed" if rec["identity"] != p.identity else "resuming an unfinished run" if rec["state"] != "done"
                 else "outputs incomplete" if rec["fp"] == p.fp else "its notebook or an upstream step changed")
    return plan


# ==============================================================================================
# Running the steps
# ==============================================================================================
@dataclass
class _Running:
    step: Step
    proc: subprocess.Popen
    error_file: Path
    start: float
    threads: int


#: The runner's pid, for its step processes' parent-death signal.
_RUNNER_PID_ENV = "SSL_CT_RUNNER_PID"


def _launch(planned: _Planned, folder: RunFolder, log_output: bool, threads: int) -> _Running:
    """Start executing a step's notebook in a child process in a session of its own (its kernel
    limited to ``threads``); its scratch files (error file, kernels' connection files) go to the
    folder's scratch folder."""
    step = planned.step
    (folder.root / "notebooks").mkdir(parents=True, exist_ok=True)
    out_nb = folder.root / step.executed
    folder.tmp.mkdir(parents=True, exist_ok=True)
    error_file = folder.tmp / f"{step.name}-error.json"
    error_file.unlink(missing_ok=True)
    env = jupyter_env()  # the study's kernel spec: no "TCP without encryption" warning per step
    # figures must reach the executed notebook: the kernel inherits the environment, and a
    # non-interactive MPLBACKEND (Agg, common on servers and in CI) would swallow every plot
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env[BATCH_ENV] = "1"  # browsers show a note, not live widgets (see ssl_lib.widgets)
    folder.system_tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(folder.system_tmp)  # kernels' connection files: removed by the next run if left
    env[_RUNNER_PID_ENV] = str(os.getpid())
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "ssl_lib", "_notebook", str(step.template), str(out_nb), str(error_file),
           json.dumps(planned.params)] + (["--log-output"] if log_output else [])
    # a session of its own: a terminal's Ctrl-C reaches the runner only, which stops the whole tree
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), start_new_session=True)
    return _Running(step, proc, error_file, time.perf_counter(), threads)


def _finish(run: _Running, folder: RunFolder) -> None:
    """Raise :class:`StudyError` if ``run`` (finished) failed; tidy its error file."""
    text = run.error_file.read_text() if run.error_file.is_file() else ""
    run.error_file.unlink(missing_ok=True)
    if run.proc.returncode == 0:
        return
    out_nb = folder.root / run.step.executed
    info = json.loads(text) if text.strip() else {}
    if "ename" in info:
        raise StudyError(f"step {run.step.name!r} failed in cell {info.get('exec_count')}: {info['ename']}: "
                         f"{info['evalue']}\nsee the executed notebook {out_nb}")
    raise StudyError(f"step {run.step.name!r} stopped with exit code {run.proc.returncode}"
                     f"{': ' + info['error'] if 'error' in info else ''}\nsee the executed notebook {out_nb}")


#: What a source path becomes in executed notebooks (outputs never carry source paths).
REDACTED = "<source path>"


def source_paths(params: dict) -> list[str]:
    """Source paths among a step's parameter values (also inside lists, dicts and JSON strings).

    A value counts when it names an existing file or folder outside ``params["output_dir"]``;
    each is returned as given and resolved, longest first (for :func:`redact_notebook`).
    """
    out_dir = Path(str(params.get("output_dir", ""))).resolve() if params.get("output_dir") else None
    found: set[str] = set()

    def visit(value):
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, str) and value.strip():
            text = value.strip()
            if text[:1] in "[{":
                try:
                    visit(json.loads(text))
                    return
                except ValueError:
                    pass
            try:
                path = Path(text).expanduser()
                if not path.exists():
                    return
                resolved = path.resolve()
            except (OSError, ValueError):
                return
            if out_dir is not None and (resolved == out_dir or out_dir in resolved.parents):
                return
            found.update({text, str(resolved)})

    for key, value in params.items():
        if key != "output_dir":
            visit(value)
    return sorted((p for p in found if len(p) > 1), key=len, reverse=True)


def redact_notebook(path: str | os.PathLike, secrets: list[str]) -> None:
    """Replace every occurrence of ``secrets`` in a notebook's strings (cells, outputs, metadata) with :data:`REDACTED`."""
    if not secrets or not Path(path).is_file():
        return

    def clean(value):
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    nb = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps(clean(nb), indent=1, ensure_ascii=False) + "\n")


def execute_notebook(template: str, out_nb: str, error_file: str, params: dict, log_output: bool = False) -> int:
    """Run one notebook with papermill (the child side of :func:`_launch`); 0, or 1 with the error in ``error_file``.

    SIGTERM (from the runner, or the parent-death signal when the runner is killed) ends the
    kernel and everything it started, then this process. Source paths among the parameters are
    redacted from the executed notebook (:func:`redact_notebook`) and from the error, since a
    folder name may name a patient.
    """
    procs.stop_children_on(signal.SIGTERM)
    if os.environ.get(_RUNNER_PID_ENV):
        procs.die_with_parent(signal.SIGTERM, int(os.environ[_RUNNER_PID_ENV]))
    secrets = source_paths(params)
    try:
        return _execute(template, out_nb, error_file, params, log_output)
    finally:
        redact_notebook(out_nb, secrets)
        if Path(error_file).is_file() and Path(error_file).stat().st_size:
            redact_notebook(error_file, secrets)


#: What nbclient raises when the kernel process ends before it answers (nothing has run yet).
KERNEL_START_FAILED = "Kernel died before replying to kernel_info"
#: Kernel starts one step tries. jupyter_client picks the kernel's free TCP ports in the step's
#: process and the kernel binds them a moment later; a step started beside it can take one in
#: between, and the kernel then dies with "Address already in use" (seen once in a CI run of the
#: interrupt tests, where two steps start together). A fresh start picks fresh ports.
KERNEL_START_TRIES = 3


def _execute(template: str, out_nb: str, error_file: str, params: dict, log_output: bool) -> int:
    import papermill as pm

    try:
        for attempt in range(1, KERNEL_START_TRIES + 1):
            try:
                pm.execute_notebook(template, out_nb, parameters=params, cwd=str(REPO), kernel_name="python3",
                                    progress_bar=False, log_output=log_output)
                break
            except RuntimeError as err:
                if KERNEL_START_FAILED not in str(err) or attempt == KERNEL_START_TRIES:
                    raise
                print(f"the kernel ended before it started ({KERNEL_START_FAILED.lower()}); starting it again "
                      f"({attempt + 1} of {KERNEL_START_TRIES})", file=sys.stderr, flush=True)
    except pm.PapermillExecutionError as err:
        Path(error_file).write_text(json.dumps({"exec_count": err.exec_count, "ename": err.ename,
                                                "evalue": str(err.evalue)}))
        return 1
    except Exception as err:  # noqa: BLE001 - kernel died, bad template, ...: reported by the parent
        Path(error_file).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        return 1
    return 0


def _stop(running: list[_Running]) -> None:
    """End the running steps' process trees (kernels and their workers included)."""
    for run in running:
        procs.stop_tree(run.proc.pid)
        run.proc.wait()
        run.error_file.unlink(missing_ok=True)


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise StudyInterrupted(signum=signum)


#: The store of the pre-training data (every pre-trained init's numbers come from it).
PRETRAINING_STORE = "lidc"


def page_sources(step: Step, paths: StudyPaths) -> tuple[str, ...] | None:
    """The stores whose numbers ``step``'s page shows (``None``: all of the study's), by ``step.shows``."""
    if step.shows == "pretraining":
        return (PRETRAINING_STORE,)
    if step.shows == "explained":
        from .explain import explained_tasks

        return (PRETRAINING_STORE, *explained_tasks(paths.root))
    return None


def stage_book(paths: StudyPaths) -> Path:
    """Copy the book sources and the executed notebooks into ``<output>/book`` (the build root).

    Each notebook becomes a page as :func:`_copy_without_widget_state` prepares it: no live
    widgets or progress bars, no local paths, and the synthetic-data notice where a source whose
    numbers the page shows was synthetic (:func:`page_sources`,
    :func:`ssl_lib.present.synthetic_notice`). ``<output>/book`` is the runner's own
    folder: staging refuses a folder it did not create (and an output folder that is not a
    study's), and empties only that folder.
    """
    import pandas as pd

    from .book_config import write_staged_config
    from .book_values import book_values
    from .present import synthetic_notice
    from .templates import toc_text

    folder = RunFolder(paths.root)
    if not folder.is_ours():
        raise StudyError(f"{paths.root} is not a study output folder (no manifest): nothing to build")
    folder.load()
    folder.claim(["book"])
    stage = paths.root / "book"
    if stage.exists():
        for item in stage.iterdir():
            if item.name != "_build":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    stage.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, stage / name)
    # the table of contents of these steps: a method registered at run time has its chapter too
    (stage / "_toc.yml").write_text(toc_text([f"notebooks/{Path(s.notebook).name}" for s in _steps() if s.method]))
    (stage / "notebooks").mkdir(exist_ok=True)
    for step in _steps():
        executed = paths.notebooks / Path(step.notebook).name
        # a step not run yet appears with its template (prose, no outputs); the notice names only
        # the synthetic sources of what this page shows
        notice = synthetic_notice(paths.root, page_sources(step, paths)) if executed.exists() else ""
        _copy_without_widget_state(executed if executed.exists() else step.template,
                                   stage / "notebooks" / executed.name, paths, notice)
    if paths.timings.exists():
        _append_timings(stage / "book" / "reproduce.md", pd.read_csv(paths.timings))
    write_staged_config(stage / "_config.yml", book_values(paths.root), REPO)
    return stage


#: Output types that are only ever progress bars or live widgets: nothing a static page can show.
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _path_replacements(paths: StudyPaths | None) -> list[tuple[str, str]]:
    """(absolute path, what the page shows instead), longest first: the output folder (relative to
    the repository when inside it, else a placeholder), the repository, the home folder."""
    pairs = []
    if paths is not None:
        root = paths.root.resolve()
        try:
            shown = root.relative_to(REPO).as_posix()
        except ValueError:
            shown = "<output folder>"
        pairs.append((str(root), shown))
    pairs += [(str(REPO), "."), (str(Path.home()), "~")]
    return sorted({a: b for a, b in pairs if len(a) > 1}.items(), key=lambda p: -len(p[0]))


def _strip_paths(value, pattern, table: dict):
    """``value`` (a notebook's JSON tree) with every absolute path in ``table`` replaced; image data is left alone."""
    if isinstance(value, str):
        return pattern.sub(lambda m: table[m.group(0)], value)
    if isinstance(value, list):
        return [_strip_paths(v, pattern, table) for v in value]
    if isinstance(value, dict):
        return {k: v if k.startswith("image/") else _strip_paths(v, pattern, table) for k, v in value.items()}
    return value


def _is_progress_bar(out: dict) -> bool:
    text = out.get("text", "") if out.get("output_type") == "stream" else ""
    return out.get("name") == "stderr" and ("\r" in text or "it/s]" in text or "s/it]" in text)


def _copy_without_widget_state(src: Path, dst: Path, paths: StudyPaths | None = None, notice: str = "") -> None:
    """Copy a notebook as a page of the book (and its "Download .ipynb").

    * live widgets (their state and views) and progress bars go: a static page cannot use them,
      and widget state would make the build load require.js and the widget manager from a CDN.
      The notebooks' browsers show pre-rendered frames in batch runs (:mod:`ssl_lib.viewer`).
    * absolute paths (the output folder, the repository, the home folder) become relative ones
      in sources, outputs and metadata (papermill's injected ``output_dir`` among them).
    * one parameters block: the template's and papermill's parameter cells are kept for the
      download but not shown; a table of the values this run used stands in their place
      (:func:`ssl_lib.book_params.one_parameters_block`).
    * ``notice`` (Markdown), if any, goes right under the page's title.
    """
    import re

    import nbformat

    from .book_params import one_parameters_block

    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [out for out in cell.get("outputs", [])
                        if _WIDGET_VIEW not in out.get("data", {}) and not _is_progress_bar(out)]
    table = dict(_path_replacements(paths))
    pattern = re.compile("(?<![A-Za-z0-9+/=_.-])(?:" + "|".join(re.escape(a) for a in table) + ")(?![A-Za-z0-9+=_.-])")
    nb = nbformat.from_dict(_strip_paths(dict(nb), pattern, table))
    one_parameters_block(nb)
    if notice:
        at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# ") else 0
        cell = nbformat.v4.new_markdown_cell(notice)
        cell["id"] = "synthetic-data-notice"
        nb.cells.insert(at, cell)
    nbformat.write(nb, dst)


def wall_seconds(timings: pd.DataFrame) -> float:
    """The study's wall-clock time: the last step's end (steps overlap when run side by side)."""
    if "start_s" in timings:
        return float((timings["start_s"] + timings["seconds"]).max())
    return float(timings["seconds"].sum())


def _append_timings(page: Path, timings: pd.DataFrame) -> None:
    total = wall_seconds(timings)
    if "start_s" not in timings:
        timings = timings.assign(start_s=timings["seconds"].cumsum() - timings["seconds"])
    if "threads" not in timings:
        timings = timings.assign(threads="")
    lines = ["", "## Timing of the last run", "",
             f"Profile `{timings['profile'].iloc[0]}`, measured by the study runner on "
             f"{timings['machine'].iloc[0]}: **{total / 60:.1f} minutes** from start to finished book.", "",
             "Steps whose inputs are ready run side by side (the pre-trainings two by two on a CPU), "
             "each on its share of the cores (*threads*); *share* is a step's time over the total, "
             "so overlapping steps add up to more than 100 %.", "",
             "| step | start (min) | minutes | threads | share |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.step} | {r.start_s / 60:.2f} | {r.seconds / 60:.2f} | {r.threads} | "
              f"{100 * r.seconds / max(total, 1e-9):.1f} % |" if r.seconds > 0 or r.step != "book" else
              f"| book | {r.start_s / 60:.2f} | (this build) | {r.threads} | |" for r in timings.itertuples()]
    with open(page, "a") as fh:
        fh.write("\n".join(lines) + "\n")


def build_book(paths: StudyPaths) -> Path:
    """Build the staged book to HTML offline; returns the path of ``index.html``."""
    stage = stage_book(paths)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage), "--quiet", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StudyError(f"the book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return stage / "_build" / "html" / "index.html"


def _machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {device}"


def _write_timings(folder: RunFolder, paths: StudyPaths) -> None:
    """``timings.csv``: each step's last real run (a skipped step keeps the time of the run that made it)."""
    import pandas as pd

    records = folder.manifest["steps"]
    rows = [{"step": s.name, **records[s.name]["timing"]} for s in _steps()
            if s.name in records and "timing" in records[s.name]]
    if "book_timing" in folder.manifest:
        rows.append({"step": "book", **folder.manifest["book_timing"]})
    pd.DataFrame(rows).to_csv(paths.timings, index=False)  # kept current so the book shows progress


def run_study(output: str | os.PathLike, profile: str = "quick", steps: list[str] | None = None,
              extra: dict | None = None, book: bool = True, log_output: bool = False,
              jobs: int | None = None, overwrite: bool = False, force: bool = False):
    """Run the study's steps (all, or those named in ``steps``) and build the book; returns this run's timings.

    Everything is checked first (:func:`check_request`); then, holding the folder's lock,
    :func:`plan_steps` decides which steps run (``overwrite``: clear outputs made with other
    settings). ``jobs``: steps run side by side (``None``: :func:`default_jobs`). A step starts
    once the steps in its ``after`` (among those run) are done; a failed step stops the study
    (steps still running are ended) with a :class:`StudyError` naming it and its executed
    notebook; Ctrl-C/SIGTERM ends every child and raises :class:`StudyInterrupted`. The returned
    table has one row per chosen step (``status``: ``ran`` or ``skipped``) and the book's.
    """
    import pandas as pd

    extra = dict(extra or {})
    chosen = check_request(output, profile, steps, extra, jobs, force)
    needs = PROFILE_NEEDS[profile]
    folder = RunFolder(output)
    paths = StudyPaths(output)
    with folder.locked(profile):
        folder.load()
        if folder.stale:
            print(f"note: the run of pid {folder.stale.get('pid')} (started {folder.stale.get('started')}) ended "
                  "without finishing; continuing where it stopped", flush=True)
        plan = plan_steps(folder, profile, chosen, extra, overwrite, book)
        cleaned = folder.clean_temp()
        if cleaned:
            print(f"removed {cleaned} temporary file(s) left by an interrupted run", flush=True)
        folder.claim(RUNNER_OUTPUTS + (("book",) if book else ()))
        folder.manifest["profile"] = profile
        folder.save()
        jobs = default_jobs() if jobs is None else int(jobs)
        machine = _machine()
        print(f"profile {profile}: {'a GPU, ' if needs.gpu else ''}about {needs.memory_gb:g} GB per step, "
              f"{needs.time} (this machine: {machine})", flush=True)
        with _interrupts_raise():
            rows = _run_steps(folder, paths, plan, profile, jobs, machine, log_output)
            ran_any = any(r["status"] == "ran" for r in rows)
            if book:
                rows.append(_book(folder, paths, plan, machine, ran_any))
        shutil.rmtree(folder.system_tmp, ignore_errors=True)
    timings = pd.DataFrame(rows)
    skipped = [r["step"] for r in rows if r["status"] == "skipped"]
    if skipped:
        print(f"skipped (unchanged, outputs complete): {', '.join(skipped)}")
    ran = [r for r in rows if r["status"] == "ran"]
    if ran:
        total = max(r["start_s"] + r["seconds"] for r in ran)
        print(f"\nstep timings ({jobs} at a time; share = the step's time over the total wall-clock time):")
        print(f"  {'step':<16} {'start':>6} {'minutes':>8} {'share':>7}")
        for r in ran:
            print(f"  {r['step']:<16} {r['start_s'] / 60:6.2f} {r['seconds'] / 60:8.2f} "
                  f"{100 * r['seconds'] / max(total, 1e-9):6.1f} %")
        print(f"  {'total (wall)':<16} {'':>6} {total / 60:8.2f}")
    return timings


class _interrupts_raise:
    """SIGTERM raises :class:`StudyInterrupted` and Ctrl-C (SIGINT) KeyboardInterrupt in the block,
    also where the runner was started with SIGINT ignored (a shell's background job: ``cmd &``)."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            signal.signal(signal.SIGTERM, _on_sigterm)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():  # also undoes the cleanup's SIG_IGN
            signal.signal(sig, handler)
        return False


def _run_steps(folder: RunFolder, paths: StudyPaths, plan: dict[str, _Planned], profile: str, jobs: int,
               machine: str, log_output: bool) -> list[dict]:
    """Run the planned steps (skipping the unchanged ones); see :func:`run_study`."""
    cpus = os.cpu_count() or 1
    records = folder.manifest["steps"]
    rows: list[dict] = []
    n = len(plan)
    t0 = time.perf_counter()
    run_id = time.strftime("%Y-%m-%d %H:%M:%S")
    done = {name for name, p in plan.items() if not p.run}
    for k, name in enumerate([n_ for n_ in plan if n_ in done], 1):
        print(f"[{k}/{n}] {name}: unchanged, outputs complete - skipped (executed notebook reused)", flush=True)
        rows.append({"step": name, "status": "skipped", "start_s": 0.0, "seconds": 0.0, "threads": 0,
                     "profile": profile, "machine": machine})
    pending = [p for p in plan.values() if p.run]
    running: list[_Running] = []
    try:
        while pending or running:
            ready = [p for p in pending if all(d in done or d not in plan for d in p.step.after)]
            ready.sort(key=lambda p: -p.step.cost)
            while ready and len(running) < jobs:
                planned = ready.pop(0)
                pending.remove(planned)
                step = planned.step
                # a fixed share of the cores, whatever runs beside it: results do not depend on scheduling
                threads = step_threads(step, cpus)
                folder.claim([*step.outputs, step.executed])
                records[step.name] = {"identity": planned.identity, "fp": planned.fp, "params": planned.shown,
                                      "state": "running", "outputs": list(step.outputs)}
                folder.save()
                print(f"[{n - len(pending)}/{n}] {step.name} ({step.notebook}) started ({planned.why})"
                      f" on {threads} thread(s) ...", flush=True)
                running.append(_launch(planned, folder, log_output, threads))
            time.sleep(0.2)
            for run in [r for r in running if r.proc.poll() is not None]:
                running.remove(run)
                _finish(run, folder)
                seconds = time.perf_counter() - run.start
                done.add(run.step.name)
                row = {"start_s": round(run.start - t0, 1), "seconds": round(seconds, 1),
                       "threads": run.threads, "profile": profile, "machine": machine, "run": run_id}
                rec = records[run.step.name]
                rec.update(state="done", timing=row,
                           outputs=[r for r in run.step.outputs if (folder.root / r).exists()])
                folder.save()
                _write_timings(folder, paths)
                rows.append({"step": run.step.name, "status": "ran", **row})
                print(f"    {run.step.name} done in {seconds / 60:.1f} min", flush=True)
    except KeyboardInterrupt as err:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        _stop(running)
        folder.clean_temp([r for run in running for r in run.step.outputs])
        finished = [name for name in plan if name in done]
        stopped = [run.step.name for run in running]
        signum = getattr(err, "signum", signal.SIGINT)
        raise StudyInterrupted(
            f"interrupted ({signal.Signals(signum).name}): {len(finished)} of {n} step(s) finished"
            + (f" ({', '.join(finished)})" if finished else "")
            + (f"; stopped {', '.join(stopped)}" if stopped else "")
            + ". Run the same command again to resume: finished steps are skipped, pre-training continues from "
              "its last checkpoint and fine-tuning from its last finished run.", signum) from None
    except BaseException:  # a failed step: the steps beside it are ended
        _stop(running)
        raise
    return rows


def _book(folder: RunFolder, paths: StudyPaths, plan: dict[str, _Planned], machine: str, ran_any: bool) -> dict:
    """Build the book unless nothing it shows changed since the last build; returns its timings row."""
    records = folder.manifest["steps"]
    fp = _hash([records[s.name]["fp"] for s in _steps() if s.name in records],
               _file_hash(*(REPO / f for f in BOOK_FILES)))
    index = paths.root / "book" / "_build" / "html" / "index.html"
    profile = folder.manifest["profile"]
    if not ran_any and folder.manifest.get("book_fp") == fp and index.is_file():
        print(f"[book] up to date: {index}", flush=True)
        return {"step": "book", "status": "skipped", "start_s": 0.0, "seconds": 0.0, "threads": 0,
                "profile": profile, "machine": machine}
    print("[book] building HTML ...", flush=True)
    ends = [r["timing"]["start_s"] + r["timing"]["seconds"] for r in records.values() if "timing" in r]
    row = {"start_s": round(max(ends, default=0.0), 1), "seconds": 0.0, "threads": os.cpu_count() or 1,
           "profile": profile, "machine": machine}
    folder.manifest["book_timing"] = row
    folder.manifest.pop("book_fp", None)
    folder.save()
    _write_timings(folder, paths)
    start = time.perf_counter()
    index = build_book(paths)
    row["seconds"] = round(time.perf_counter() - start, 1)
    folder.manifest["book_timing"] = row
    folder.manifest["book_fp"] = fp
    folder.save()
    _write_timings(folder, paths)
    print(f"[book] done: {index}", flush=True)
    return {"step": "book", "status": "ran", **row}


def _parse_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--param expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            extra[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[key] = value
    return extra


def _executor_params(args: argparse.Namespace) -> dict:
    """The notebooks' ``executor``/``executor_options`` parameters from the runner's cluster options."""
    given = [(name, attr) for name, attr in (
        ("partition", "partition"), ("gpus_per_job", "gpus_per_job"), ("cpus_per_job", "cpus_per_job"),
        ("mem_gb", "mem_gb"), ("time_min", "time_limit"), ("array_parallelism", "array_parallelism"),
        ("per_job", "per_job")) if getattr(args, attr) is not None]
    options = {name: getattr(args, attr) for name, attr in given}
    if args.executor in (None, "local"):
        if given:
            raise SystemExit(f"error: --{given[0][1].replace('_', '-')} needs --executor slurm (or submitit-local)")
        return {"executor": "local"} if args.executor else {}
    from .cluster import make_executor

    try:
        make_executor(args.executor, **options)  # bad values fail here, before any step runs
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return {"executor": args.executor, "executor_options": options}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the step names only where they are shown (a step's own process needs none of the registry)
    step_names = [s.name for s in _steps()] if argv[:1] == ["study"] else []
    method_choices = None  # the registry (it imports torch) only for the pretrain command
    if argv[:1] == ["pretrain"]:
        from .pretrain.registry import method_names

        method_choices = list(method_names())
    parser = argparse.ArgumentParser(prog="python -m ssl_lib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{study,book,pretrain}")
    p_study = sub.add_parser("study", help="run the study's notebooks and build the book")
    p_study.add_argument("--profile", default="quick", choices=sorted(PROFILE_NEEDS))
    p_study.add_argument("--output", default=None, help="output folder (default outputs/<profile>)")
    p_study.add_argument("--steps", nargs="*", default=None, help=f"run only these steps: {step_names}")
    p_study.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                         help="pre-train (and compare with random) only these registered methods (default: all)")
    p_study.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="notebook parameter passed to every step that declares it (e.g. devices=4, lidc_root=/data/LIDC-IDRI)")
    p_study.add_argument("--jobs", type=int, default=None,
                         help="steps run side by side (default: 2 on a CPU-only machine with 2+ cores, else 1)")
    p_study.add_argument("--overwrite", action="store_true",
                         help="delete the runner's outputs made with other settings (profile, sources, parameters) "
                              "and run those steps again")
    p_study.add_argument("--force", action="store_true", help="start even if the profile needs more than this machine has")
    p_study.add_argument("--no-book", action="store_true", help="skip the book build")
    grid = p_study.add_argument_group("fine-tuning grid on a cluster (notebooks 06 and 07, see ssl_lib.cluster)")
    grid.add_argument("--executor", default=None, choices=["local", "slurm", "submitit-local"],
                      help="local: worker processes of this machine (default); slurm: one SLURM job array per "
                           "batch of runs (submitit); submitit-local: the same jobs as local subprocesses")
    grid.add_argument("--partition", default=None, help="SLURM partition of the jobs (default: the cluster's)")
    grid.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per job: 1 (default; submitit-local gives each job its own GPU) or 0 for CPU jobs")
    grid.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores per job (default: the cluster's)")
    grid.add_argument("--mem-gb", type=float, default=None, help="memory per job (default: the cluster's)")
    grid.add_argument("--time-limit", type=int, default=None, metavar="MINUTES", help="time limit per job (default 240)")
    grid.add_argument("--array-parallelism", type=int, default=None, help="jobs of an array running at once (default 64)")
    grid.add_argument("--per-job", default=None, choices=["run", "group"],
                      help="one fine-tuning run per job (default) or all runs of one task and init")
    p_study.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    p_book = sub.add_parser("book", help="build the book from an output folder's executed notebooks")
    p_book.add_argument("--output", required=True)
    p_pre = sub.add_parser("pretrain", help="one pre-training run outside a notebook (for srun/torchrun on clusters)")
    p_pre.add_argument("method", choices=method_choices)
    p_pre.add_argument("--output", required=True, help="study output folder (reads stores/lidc, writes pretrain/<method>)")
    p_pre.add_argument("--profile", default="paper", choices=["smoke", "quick", "paper"])
    p_pre.add_argument("--store", default=None, help="slice store (default <output>/stores/lidc)")
    p_pre.add_argument("--epochs", type=int, default=None)
    p_pre.add_argument("--batch-size", type=int, default=None,
                       help="the global batch, split evenly over all devices (default: the profile's)")
    p_pre.add_argument("--devices", type=int, default=1, help="GPUs per node")
    p_pre.add_argument("--nodes", type=int, default=1)
    p_pre.add_argument("--num-workers", type=int, default=4)
    p_nb = sub.add_parser("_notebook", help=argparse.SUPPRESS)  # internal: one step's notebook, for the runner
    p_nb.add_argument("template")
    p_nb.add_argument("out")
    p_nb.add_argument("error_file")
    p_nb.add_argument("params")
    p_nb.add_argument("--log-output", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "_notebook":
            return execute_notebook(args.template, args.out, args.error_file, json.loads(args.params), args.log_output)
        if args.command == "study":
            if args.methods is not None:  # this process runs one study: its steps are those of the chosen methods
                globals()["STEPS"] = study_steps(args.methods)
            # a folder given on the command line is relative to the working folder; the default
            # (and any relative folder a notebook names) to the repository root
            out = Path(args.output).resolve() if args.output else f"outputs/{args.profile}"
            run_study(out, args.profile, args.steps, _parse_extra(args.param) | _executor_params(args),
                      book=not args.no_book, log_output=args.log_output, jobs=args.jobs, overwrite=args.overwrite,
                      force=args.force)
        elif args.command == "pretrain":
            from .pretrain import pretrain

            paths = StudyPaths(Path(args.output).resolve())
            result = pretrain(args.method, args.store or paths.store("lidc"), paths.pretrain(args.method),
                              profile=args.profile, epochs=args.epochs, batch_size=args.batch_size,
                              devices=args.devices, num_nodes=args.nodes, num_workers=args.num_workers)
            print(f"{args.method}: {result.epochs_done} epochs, encoders in {result.run_dir / 'encoders'}")
        else:
            folder = RunFolder(Path(args.output).resolve())
            if not folder.is_ours():
                raise StudyError(f"{args.output} is not a study output folder (no manifest): nothing to build")
            with folder.locked("(book build)"):
                print(build_book(StudyPaths(Path(args.output).resolve())))
    except StudyInterrupted as err:
        print(err.message or "interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + int(err.signum)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a folder that became unwritable, a full disk, ...
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
