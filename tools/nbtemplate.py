"""The template writer lives in :mod:`ssl_lib.templates.writer` (the runner generates templates too)."""

from ssl_lib.templates.writer import build_notebook, notebook_text, write_notebook  # noqa: F401
