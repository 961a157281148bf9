"""Sphinx extension of the ssl-ct book (listed under ``sphinx.local_extensions`` in ``_config.yml``).

* Every page loads each script once. sphinx-thebe adds its configuration script (``const
  THEBE_JS_URL = ...``) a second time on Jupyter Book 1 rebuilds, and the second copy throws
  "Identifier 'THEBE_JS_URL' has already been declared" in the browser's console.
* The theme starts in light mode unless ``html_theme_options.default_mode`` says otherwise
  (left empty, pydata-sphinx-theme logs "Got invalid theme mode" as a console error).
"""

from __future__ import annotations


def _unique_scripts(app, pagename, templatename, context, doctree):
    scripts, seen = [], set()
    for js in context.get("script_files", []):
        key = (getattr(js, "filename", None) or str(js), repr(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            scripts.append(js)
    if "script_files" in context:
        context["script_files"][:] = scripts


def _default_mode(app, config):
    options = dict(config.html_theme_options or {})
    options.setdefault("default_mode", "light")
    config.html_theme_options = options


def setup(app):
    app.connect("config-inited", _default_mode)
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
