"""Notebook templates from ``(kind, source[, id])`` cells, as nbformat writes them.

``kind`` is ``"md"`` (Markdown), ``"params"`` (the code cell tagged ``parameters`` that papermill
injects values after) or ``"code"``. Templates carry no outputs. Every cell has a stable id: the
one given, else ``f"{id_prefix}{position:02d}"``, so a regenerated template differs from the
committed one only where its text does.
"""

from __future__ import annotations

import os
from typing import Iterable

import nbformat

#: One cell: (kind, source) or (kind, source, id).
Cell = tuple

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def build_notebook(cells: Iterable[Cell], id_prefix: str = "cell-") -> nbformat.NotebookNode:
    """A validated nbformat v4 notebook of ``cells`` (no outputs)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src, *given) in enumerate(cells):
        src = src.strip("\n")
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(src)
        elif kind == "params":
            cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["parameters"]})
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(src)
        else:
            raise ValueError(f"cell {i}: unknown kind {kind!r} (md, params or code)")
        cell["id"] = given[0] if given else f"{id_prefix}{i:02d}"
        nb.cells.append(cell)
    ids = [c["id"] for c in nb.cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"cell ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    nbformat.validate(nb)
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """The file content nbformat writes for ``nb`` (what a committed template holds)."""
    return nbformat.writes(nb) + "\n"


def write_notebook(path: str | os.PathLike, cells: Iterable[Cell], id_prefix: str = "cell-") -> None:
    """Write the template of ``cells`` to ``path``."""
    nbformat.write(build_notebook(cells, id_prefix), os.fspath(path))
