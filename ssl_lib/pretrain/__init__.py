"""Self-supervised pre-training: BYOL, SwAV, MoCo v2 and SparK on the slice store (Lightning).

``pretrain(method, store, out_dir, profile=...)`` is the entry point; see :mod:`.common` for the
profiles (``PROFILES``), the shared base module, checkpoints and encoder export.
"""

from .common import (CONFIG_CLASSES, METHODS, PROFILES, PretrainConfig, PretrainError, PretrainModule, PretrainResult,
                     build_module, count_parameters, export_encoder, get_config, load_encoder, load_module,
                     method_class, param_table, plot_views, pretrain, preview, view_browser)

__all__ = [
    "CONFIG_CLASSES", "METHODS", "PROFILES", "PretrainConfig", "PretrainError", "PretrainModule", "PretrainResult",
    "build_module", "count_parameters", "export_encoder", "get_config", "load_encoder", "load_module",
    "method_class", "param_table", "plot_views", "pretrain", "preview", "view_browser",
]
