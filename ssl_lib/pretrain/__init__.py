"""Self-supervised pre-training: BYOL, SwAV, MoCo v2 and SparK on the slice store (Lightning).

``pretrain(method, store, out_dir, profile=...)`` is the entry point. The package, one job per module:

- :mod:`.base`: the config and Lightning module every method derives from, the momentum-copy helper;
- one module per method (:mod:`.byol`, :mod:`.swav`, :mod:`.mocov2`, :mod:`.spark`): its config,
  profiles, label, summary, the paper's numbers and its ``SPEC``;
- :mod:`.registry`: the methods in table order (``methods()``, ``get_method``, ``init_label``, ``get_config``);
- :mod:`.run`: the loop, the data module, the callbacks;
- :mod:`.encoder_file`: the only writer and reader of exported encoders;
- :mod:`.present`: previews of the views, figures, widgets and the parameter table.

The names below are loaded on first use (``import ssl_lib.pretrain.encoder_file`` does not import
Lightning). ``METHODS``, ``PROFILES`` and ``CONFIG_CLASSES`` are computed from the registry.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MethodSpec": "base", "PretrainConfig": "base", "PretrainError": "base", "PretrainModule": "base",
    "MomentumModule": "base",
    "build_module": "registry", "get_config": "registry", "get_method": "registry", "init_label": "registry",
    "method_class": "registry", "method_names": "registry", "methods": "registry",
    "PretrainResult": "run", "count_parameters": "run", "load_module": "run", "pretrain": "run",
    "resolve_device_options": "run",
    "load_encoder": "encoder_file", "save_encoder": "encoder_file",
    "param_table": "present", "run_size": "present", "plot_views": "present", "preview": "present",
    "view_browser": "present",
}
_COMPUTED = ("METHODS", "PROFILES", "CONFIG_CLASSES", "export_encoder")

__all__ = sorted([*_EXPORTS, *_COMPUTED])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _COMPUTED:
        registry = importlib.import_module(f"{__name__}.registry")
        if name == "METHODS":
            return registry.method_names()
        if name == "PROFILES":
            return registry.profiles()
        if name == "CONFIG_CLASSES":
            return {s.name: s.config_class for s in registry.methods()}
        return importlib.import_module(f"{__name__}.encoder_file").save_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
