"""Write a notebook template from (kind, source) cells: used to (re)generate notebooks/*.ipynb.

Usage from Python: ``write_notebook(path, [("md", "# Title ..."), ("params", "profile = 'quick'"), ("code", "...")])``.
Templates are written without outputs; the ``params`` cell is tagged ``parameters`` for papermill.
"""

from __future__ import annotations

import nbformat


def write_notebook(path, cells) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        elif kind == "params":
            nb.cells.append(nbformat.v4.new_code_cell(src, metadata={"tags": ["parameters"]}))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(src))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.write(nb, path)
