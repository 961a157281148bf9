"""The pre-training methods the study knows, in the order of its tables (Wolf et al. 2023: BYOL, SwAV, MoCo v2, SparK).

Each method is one module of this package that defines ``SPEC``, a :class:`~.base.MethodSpec`
(config class, Lightning module, smoke/quick/paper profiles, label, summary paragraph, the
paper's numbers). :data:`METHOD_MODULES` lists the built-in ones, one line each; modules named
in the environment variable ``SSL_CT_EXTRA_METHODS`` (comma separated, importable names, e.g.
``tests.toy_method``) are added after them, so a plug-in method is seen by every process
(notebook kernels, grid workers) without an edit of the library. Adding a method is one file
plus one line here.

Everything that needs the list of methods or their labels asks this module: the runner's steps
(:mod:`ssl_lib.study`), initialisations (:mod:`ssl_lib.inits`), tables and figures
(:func:`init_label`), the benchmarks.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
from typing import Any

from ..baselines import BASELINE_INITS, BASELINE_LABELS, IMAGENET
from .base import MethodSpec, PretrainConfig, PretrainError, PretrainModule

__all__ = ["BASELINE_INITS", "ENV_VAR", "IMAGENET", "METHOD_MODULES", "MethodSpec", "PROFILE_NAMES", "build_module",
           "get_config", "get_method", "init_label", "init_order", "method_class", "method_names", "methods",
           "order_inits", "profiles"]

#: The built-in methods, in table order: one line per method.
METHOD_MODULES: list[str] = [
    "ssl_lib.pretrain.byol",
    "ssl_lib.pretrain.swav",
    "ssl_lib.pretrain.mocov2",
    "ssl_lib.pretrain.spark",
]

#: Extra method modules, comma separated (plug-ins and test methods).
ENV_VAR = "SSL_CT_EXTRA_METHODS"

#: The profiles every method defines.
PROFILE_NAMES = ("smoke", "quick", "paper")

#: The label of the initialisation without pre-training.
RANDOM_LABEL = BASELINE_LABELS["random"]
#: The label of the supervised ImageNet baseline (:mod:`ssl_lib.baselines`; only in a study given its weights).
IMAGENET_LABEL = BASELINE_LABELS[IMAGENET]

_loaded: dict[tuple[str, ...], tuple[MethodSpec, ...]] = {}


def _module_names() -> tuple[str, ...]:
    extra = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    return tuple(METHOD_MODULES) + tuple(m for m in extra if m not in METHOD_MODULES)


def _load(names: tuple[str, ...]) -> tuple[MethodSpec, ...]:
    specs: list[MethodSpec] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise PretrainError(f"pre-training method module {name!r} (from {ENV_VAR} or METHOD_MODULES) cannot be "
                                f"imported: {err}") from err
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, MethodSpec):
            raise PretrainError(f"{getattr(module, '__file__', name)}: a method module must define SPEC = MethodSpec(...)")
        if spec.name in {s.name for s in specs} or spec.name in BASELINE_INITS:
            raise PretrainError(f"{getattr(module, '__file__', name)}: method name {spec.name!r} is taken")
        specs.append(spec)
    return tuple(specs)


def methods() -> tuple[MethodSpec, ...]:
    """Every registered method's spec, built-ins first (table order), then those of ``SSL_CT_EXTRA_METHODS``."""
    names = _module_names()
    if names not in _loaded:
        _loaded[names] = _load(names)
    return _loaded[names]


def method_names() -> tuple[str, ...]:
    """``("byol", "swav", "mocov2", "spark", <extra methods>...)``."""
    return tuple(s.name for s in methods())


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; an unknown name is a :class:`PretrainError` with the closest names."""
    for spec in methods():
        if spec.name == name:
            return spec
    names = method_names()
    close = difflib.get_close_matches(str(name), names, n=2)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise PretrainError(f"unknown pre-training method {name!r}{hint}; choose one of {names}")


def init_order(imagenet: bool = False) -> tuple[str, ...]:
    """Initialisations in display order: ``"random"`` (no pre-training), with ``imagenet`` the
    ImageNet baseline, then the methods.

    The ImageNet init exists only in a study given its weights file, so a study's own list comes
    from the study (what fine-tuning ran, e.g. :func:`ssl_lib.finetune.default_inits`), ordered
    by :func:`order_inits`; this is the order every table and figure shows them in.
    """
    return ("random",) + ((IMAGENET,) if imagenet else ()) + method_names()


def order_inits(inits) -> list[str]:
    """``inits`` (each once) in display order: :func:`init_order` with ImageNet, then any others
    (e.g. ``"spark-released"``) by name."""
    inits = list(dict.fromkeys(str(i) for i in inits))
    known = init_order(imagenet=True)
    return [i for i in known if i in inits] + sorted(i for i in inits if i not in known)


def init_label(init: str) -> str:
    """The display label of an initialisation: ``"Random"``, ``"ImageNet (supervised)"``, a
    method's label, else ``init`` itself (e.g. ``"spark-released"``). Every table and figure uses this."""
    if init in BASELINE_LABELS:
        return BASELINE_LABELS[init]
    for spec in methods():
        if spec.name == init:
            return spec.label
    return str(init)


def profiles() -> dict[str, dict[str, PretrainConfig]]:
    """``{profile: {method: config}}`` of every registered method (the old ``PROFILES`` table)."""
    return {p: {s.name: s.profiles[p] for s in methods()} for p in PROFILE_NAMES}


def get_config(method: str, profile: str = "quick", **overrides: Any) -> PretrainConfig:
    """The profile's config for ``method`` with ``overrides`` (``None`` values are ignored)."""
    spec = get_method(method)
    if profile not in spec.profiles:
        raise PretrainError(f"unknown profile {profile!r}; choose one of {tuple(spec.profiles)}")
    cfg = spec.profiles[profile]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cfg)}
    if unknown:
        raise PretrainError(f"unknown {method} setting(s) {sorted(unknown)}")
    return dataclasses.replace(cfg, **overrides)  # PretrainConfig checks its own values


def method_class(method: str) -> type[PretrainModule]:
    """The :class:`PretrainModule` subclass of ``method``."""
    return get_method(method).module_class


def build_module(method: str, profile: str = "quick", *, mean: float = 0.5, std: float = 0.25, seed: int = 0,
                 total_steps: int = 1000, steps_per_epoch: int = 1, **overrides) -> PretrainModule:
    """A freshly initialised module of ``method`` with the profile's settings."""
    cfg = get_config(method, profile, **overrides)
    return method_class(method)(cfg, mean=mean, std=std, seed=seed, total_steps=total_steps,
                                steps_per_epoch=steps_per_epoch)
