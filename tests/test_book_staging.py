"""Book staging (ssl_lib.study._copy_without_widget_state): pages without widgets, progress bars or local paths."""

import base64
import json
from pathlib import Path

import nbformat

from ssl_lib import study
from ssl_lib.paths import REPO, StudyPaths


def executed_notebook(path: Path, root: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": str(REPO / "notebooks" / "x.ipynb"),
                                "parameters": {"output_dir": str(root)}}
    nb.metadata["widgets"] = {"state": {}}
    png = base64.b64encode(b"\x89PNG" + str(root).encode()).decode()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nProse."),
        nbformat.v4.new_code_cell(f'# Parameters\noutput_dir = "{root}"', metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("run()", outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="100%|#####| 3/3 [00:01<00:00, 2.9it/s]\r"),
            nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "m"},
                                                         "text/plain": "HBox(children=(FloatProgress(...)))"}),
            nbformat.v4.new_output("stream", name="stdout", text=f"store at {root}/stores/lidc; cache {Path.home()}/.cache\n"),
            nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
        ]),
    ]
    nbformat.write(nb, path)
    return path


def test_page_has_no_widgets_progress_bars_or_local_paths(tmp_path):
    out = tmp_path / "out"
    src = executed_notebook(tmp_path / "x.ipynb", out)
    study._copy_without_widget_state(src, tmp_path / "page.ipynb", StudyPaths(out), notice="NOTICE")
    nb = nbformat.read(tmp_path / "page.ipynb", as_version=4)
    text = json.dumps(nb)
    assert "widget-view" not in text and "FloatProgress" not in text and "it/s" not in text
    assert "widgets" not in nb.metadata
    assert str(out) not in text.replace(nb.cells[4].outputs[1]["data"]["image/png"], "")
    assert str(REPO) not in text and str(Path.home()) + "/" not in text
    assert nb.cells[3].source == '# Parameters\noutput_dir = "<output folder>"'  # outside the repository
    assert nb.cells[4].outputs[0]["text"] == "store at <output folder>/stores/lidc; cache ~/.cache\n"
    assert nb.metadata["papermill"]["input_path"] == "./notebooks/x.ipynb"
    assert base64.b64decode(nb.cells[4].outputs[1]["data"]["image/png"]).endswith(str(out).encode())  # untouched
    assert [c.source for c in nb.cells[:2]] == ["# Title\n\nProse.", "NOTICE"]  # the notice under the title


def test_output_inside_the_repository_is_shown_relative(tmp_path):
    out = REPO / "outputs" / "smoke"
    src = executed_notebook(tmp_path / "x.ipynb", out)
    study._copy_without_widget_state(src, tmp_path / "page.ipynb", StudyPaths("outputs/smoke"))
    nb = nbformat.read(tmp_path / "page.ipynb", as_version=4)
    assert nb.cells[2].source == '# Parameters\noutput_dir = "outputs/smoke"'  # runs as is in JupyterLab
    assert nb.cells[0].source.startswith("# Title")  # no notice given: none added


def test_one_parameters_block_per_page(tmp_path):
    """The template's and papermill's parameter cells stay in the download, hidden; one table shows the values."""
    import nbformat as nbf

    from ssl_lib.book_params import HEADING, assignments

    out = tmp_path / "out"
    src = executed_notebook(tmp_path / "x.ipynb", out)
    nb = nbf.read(src, as_version=4)
    nb.cells.insert(1, nbf.v4.new_code_cell('profile = "quick"   # smoke | quick | paper\n'
                                            'output_dir = "outputs/quick"   # the study folder\nseeds = None',
                                            metadata={"tags": ["parameters"]}))
    nbf.write(nb, src)
    study._copy_without_widget_state(src, tmp_path / "page.ipynb", StudyPaths(out))
    page = nbf.read(tmp_path / "page.ipynb", as_version=4)
    shown = [c for c in page.cells if "remove-cell" not in c.metadata.get("tags", [])]
    tables = [c for c in shown if c.cell_type == "markdown" and c.source.startswith(HEADING)]
    assert len(tables) == 1
    assert not [c for c in shown if c.cell_type == "code" and {"parameters", "injected-parameters"}
                & set(c.metadata.get("tags", []))]
    table = tables[0].source
    assert '| `output_dir` \\* | `"<output folder>"` | the study folder |' in table  # the run's value, marked
    assert '| `profile` | `"quick"` | smoke \\| quick \\| paper |' in table  # a default, its comment
    assert "| `seeds` | `None` |" in table
    kept = [c.source for c in page.cells if c.cell_type == "code"]
    assert any("injected" not in c and c.startswith("profile") for c in kept)  # the download still runs
    assert assignments('x = "a#b"  # what\ny = [1,\n     2]') == {"x": ('"a#b"', "what"), "y": ("[1, 2]", "")}
