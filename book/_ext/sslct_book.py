"""Sphinx extension of the ssl-ct book (listed under ``sphinx.local_extensions`` in ``_config.yml``).

* Every page loads each script once. sphinx-thebe adds its configuration script (``const
  THEBE_JS_URL = ...``) a second time on Jupyter Book 1 rebuilds, and the second copy throws
  "Identifier 'THEBE_JS_URL' has already been declared" in the browser's console.
* The theme starts in light mode unless ``html_theme_options.default_mode`` says otherwise: the
  theme's page template reads ``default_mode`` from the page context, which nothing sets under
  Jupyter Book 1, and the empty mode makes pydata-sphinx-theme log "Got invalid theme mode" as a
  console error.
* Short table cells (numbers such as "0.737 ± 0.033", names) never break across lines, long
  ones (sentences, lists) wrap: the cell gets ``white-space: nowrap`` when its text is at most
  :data:`NOWRAP_CHARS` characters. Tables wider than the page scroll sideways (``ssl-ct.css``).
* Pages name a favicon (``_static/favicon.svg``), and the site root has a ``favicon.ico`` for
  pages that name none (Jupyter Book's redirecting ``index.html``): browsers then never ask the
  server for a missing ``/favicon.ico`` (a 404 in the console).
"""

from __future__ import annotations

import re

#: Table cells with at most this many characters of text stay on one line.
NOWRAP_CHARS = 32
_CELL = re.compile(r"<(td|th)((?:\s[^>]*)?)>([^<]{0,%d})</\1>" % NOWRAP_CHARS)


def nowrap_short_cells(body: str) -> str:
    """``body`` with ``style="white-space:nowrap"`` on every table cell of short plain text."""
    return _CELL.sub(lambda m: f'<{m.group(1)}{m.group(2)} style="white-space:nowrap">{m.group(3)}</{m.group(1)}>'
                     if "style=" not in m.group(2) else m.group(0), body)


def _script_key(js) -> tuple:
    """What makes two script entries the same: file name and attributes (an inline script's body among them)."""
    if isinstance(js, str):
        return (str(js), ())
    attributes = getattr(js, "attributes", {}) or {}
    return (getattr(js, "filename", None) or None, tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _page(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = nowrap_short_cells(context["body"])
    _unique_scripts(app, pagename, templatename, context, doctree)


def _unique_scripts(app, pagename, templatename, context, doctree):
    context.setdefault("default_mode", app.config.html_theme_options.get("default_mode", "light"))
    scripts, seen = [], set()
    for js in context.get("script_files", []):
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            scripts.append(js)
    if "script_files" in context:
        context["script_files"][:] = scripts


def _default_mode(app, config):
    options = dict(config.html_theme_options or {})
    options.setdefault("default_mode", "light")
    config.html_theme_options = options


def _root_favicon(app, exception):
    """Write ``favicon.ico`` (the same mark as ``_static/favicon.svg``, drawn with Pillow) at the site root."""
    if exception is not None or app.builder.format != "html":
        return
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((2, 2, 30, 30), fill="#2f6fb3")
    draw.ellipse((7, 9, 25, 23), fill="#d9d9d9")
    draw.ellipse((17, 12, 22, 17), fill="#c0392b")
    img.save(f"{app.outdir}/favicon.ico", sizes=[(16, 16), (32, 32)])


def setup(app):
    app.connect("build-finished", _root_favicon)
    app.connect("config-inited", _default_mode)
    app.connect("html-page-context", _page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
