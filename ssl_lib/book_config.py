"""The staged book's ``_config.yml``: the study's own numbers and real links, or no links.

The repository's ``_config.yml`` holds what every build shares. Staging
(:func:`ssl_lib.study.stage_book`) writes the copy it builds from with:

* ``parse.myst_substitutions``: the values of :func:`ssl_lib.book_values.book_values`, which the
  hand-written pages quote as ``{{ name }}``;
* the repository and launch buttons from **one setting**, the repository's address
  (:func:`repository_url`): ``SSL_CT_REPO_URL`` (``make publish REPO_URL=...`` sets it), else
  GitHub Actions' ``GITHUB_REPOSITORY``, else the ``origin`` remote of the clone when it is a
  GitHub address. Binder and Colab open notebooks from that repository, so without an address
  neither they nor the repository button are shown (no page links to a placeholder); the
  JupyterHub button appears only with ``SSL_CT_JUPYTERHUB_URL``. The "Download .ipynb" button
  needs nothing and stays.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Mapping

_GITHUB = re.compile(r"^(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)([\w.-]+/[\w.-]+?)(?:\.git)?/?$")


def github_url(remote: str) -> str | None:
    """``https://github.com/owner/name`` for a GitHub remote address (https or ssh), else None."""
    m = _GITHUB.match(remote.strip())
    return f"https://github.com/{m.group(1)}" if m else None


def repository_url(repo: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The repository's public address, or None when nothing names one (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("SSL_CT_REPO_URL", "").strip():
        return env["SSL_CT_REPO_URL"].strip().rstrip("/")
    if env.get("GITHUB_REPOSITORY", "").strip():
        return f"https://github.com/{env['GITHUB_REPOSITORY'].strip()}"
    if repo is None:
        return None
    try:
        remote = subprocess.run(["git", "remote", "get-url", "origin"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return github_url(remote) if remote.strip() else None


def staged_config(cfg: dict, substitutions: Mapping[str, str], repo_url: str | None,
                  hub_url: str | None = None) -> dict:
    """``cfg`` (the parsed ``_config.yml``) with the substitutions and the links of this build."""
    cfg = dict(cfg)
    parse = dict(cfg.get("parse") or {})
    extensions = list(parse.get("myst_enable_extensions") or [])
    if "substitution" not in extensions:
        extensions.append("substitution")
    parse["myst_enable_extensions"] = extensions
    parse["myst_substitutions"] = dict(substitutions)
    cfg["parse"] = parse
    repository = dict(cfg.get("repository") or {})
    buttons = dict(cfg.get("launch_buttons") or {})
    html = dict(cfg.get("html") or {})
    if repo_url:
        repository["url"] = repo_url
    else:
        repository.pop("url", None)
        buttons["binderhub_url"] = ""
        buttons["colab_url"] = ""
    buttons["jupyterhub_url"] = hub_url or ""
    html["use_repository_button"] = bool(repo_url)
    html["use_issues_button"] = False
    html["use_edit_page_button"] = False
    cfg["repository"], cfg["launch_buttons"], cfg["html"] = repository, buttons, html
    return cfg


def write_staged_config(config: Path, substitutions: Mapping[str, str], repo: str | os.PathLike | None) -> None:
    """Rewrite the staged ``config`` file (a copy of the repository's) for this build."""
    import yaml

    cfg = yaml.safe_load(config.read_text()) or {}
    cfg = staged_config(cfg, substitutions, repository_url(repo),
                        os.environ.get("SSL_CT_JUPYTERHUB_URL", "").strip() or None)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
