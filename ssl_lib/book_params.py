"""One parameters block per book page: the values a step ran with, as a small table.

A notebook executed by papermill holds two parameter cells: the template's ``parameters`` cell
(defaults, with a comment per name) and papermill's ``injected-parameters`` cell (the runner's
values) right after it. A page showing both reads as two competing settings. :func:`one_parameters_block`
keeps both code cells in the notebook (so the page's "Download .ipynb" still runs as it is, the
injected values overriding the defaults) but removes them from the page (the ``remove-cell`` tag
of MyST-NB) and puts one Markdown table in their place: every parameter with the value this run
used and the template's comment saying what it is, a run's own values marked.
"""

from __future__ import annotations

import ast

PARAMS_CELL_ID = "run-parameters"
HEADING = "**Parameters of this run**"


def assignments(source: str) -> dict[str, tuple[str, str]]:
    """``name -> (value as written, comment)`` of the top-level ``name = value  # comment`` lines."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    lines = source.splitlines()
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = ast.get_source_segment(source, node.value) or ""
            rest = lines[node.end_lineno - 1][node.end_col_offset:]
            comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
            out[node.targets[0].id] = (" ".join(value.split()), comment)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parameters_table(template: str, injected: str) -> str:
    """The Markdown block: one row per parameter of ``template`` (then any only ``injected`` names)."""
    defaults, given = assignments(template), assignments(injected)
    rows = [HEADING + " (set by the study runner where marked \\*; the notebook's own defaults elsewhere):", "",
            "| parameter | value | what it is |", "|---|---|---|"]
    for name in list(defaults) + [n for n in given if n not in defaults]:
        value, comment = given.get(name, defaults.get(name, ("", "")))[0], defaults.get(name, ("", ""))[1]
        mark = " \\*" if name in given else ""
        rows.append(f"| `{name}`{mark} | `{_cell(value)}` | {_cell(comment)} |")
    return "\n".join(rows)


def one_parameters_block(nb) -> None:
    """In place: hide the template's and papermill's parameter cells, insert the table before them."""
    import nbformat

    template = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                     and "parameters" in c.metadata.get("tags", [])), None)
    injected = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                     and "injected-parameters" in c.metadata.get("tags", [])), None)
    if template is None and injected is None:
        return
    src = nb.cells[template].source if template is not None else ""
    inj = nb.cells[injected].source if injected is not None else ""
    for i in (template, injected):
        if i is not None:
            tags = nb.cells[i].metadata.setdefault("tags", [])
            if "remove-cell" not in tags:
                tags.append("remove-cell")
    table = nbformat.v4.new_markdown_cell(parameters_table(src, inj))
    table["id"] = PARAMS_CELL_ID
    nb.cells.insert(min(i for i in (template, injected) if i is not None), table)
