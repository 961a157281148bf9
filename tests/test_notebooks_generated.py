"""The notebook templates and the book's _toc.yml are what ssl_lib.templates generates
(``make notebooks``), with stable cell ids and the parameters cell the runner needs; the
pre-training chapter is one template function filled from a method's spec."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ssl_lib import study, templates
from ssl_lib.templates.pretrain import method_specs, pretrain_cells
from tools import make_notebooks

REPO = Path(study.REPO)


@pytest.fixture(scope="module")
def generated():
    return make_notebooks.generated()


def test_committed_templates_and_toc_are_the_generated_ones(generated):
    committed = {p.relative_to(REPO).as_posix() for p in (REPO / "notebooks").glob("*.ipynb")}
    assert committed == {n for n in generated if n.endswith(".ipynb")}  # no hand-made template beside them
    for name, text in generated.items():
        assert (REPO / name).read_text() == text, f"{name} differs from the generator: run `make notebooks`"
    assert make_notebooks.main(["--check"]) == 0


def test_every_registered_method_has_its_chapter_in_the_book(generated):
    toc = generated["_toc.yml"]
    for i, spec in enumerate(method_specs()):
        name = templates.pretrain_file(i, spec.name)
        assert f"- file: {name.removesuffix('.ipynb')}\n" in toc
        first = json.loads(generated[name])["cells"][0]["source"]
        first = "".join(first)
        assert first.startswith(f"# Pre-training with {spec.label}\n") and spec.summary.strip() in first


def test_cell_ids_are_stable_and_unique(generated):
    again = make_notebooks.generated()
    assert again == generated  # nothing random (the old 08 generator drew fresh ids)
    for name, text in generated.items():
        if name.endswith(".ipynb"):
            ids = [c["id"] for c in json.loads(text)["cells"]]
            assert len(set(ids)) == len(ids), name


def test_each_template_takes_what_the_runner_passes(tmp_path, generated):
    for name, text in generated.items():
        if name.endswith(".ipynb"):
            path = tmp_path / Path(name).name
            path.write_text(text)
            params = study.template_parameters(path)
            assert {"profile", "output_dir"} <= set(params), name
            cells = json.loads(text)["cells"]
            tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
            assert len(tagged) == 1 and all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), name


@dataclass(frozen=True)
class _ToySpec:
    name: str = "toy"
    label: str = "Toy"
    summary: str = "**Toy** is a test method that only exists in this test."
    paper: dict = field(default_factory=dict)

    @property
    def module_class(self):
        from ssl_lib.pretrain import PretrainModule

        return PretrainModule


def test_a_new_method_gets_its_chapter_from_its_spec_alone():
    cells = pretrain_cells(_ToySpec())
    text = "\n".join(src for _, src, *_ in cells)
    assert cells[0][1].startswith("# Pre-training with Toy\n\n**Toy** is a test method")
    assert 'pt.pretrain("toy", slices, paths.pretrain("toy")' in text and 'title="Toy pre-training loss"' in text
    assert 'pt.preview("toy", slices.read(range(6)), profile=profile)' in text  # base preview: before training
    assert "The paper does not list this method." in text
    assert "byol" not in text and "spark" not in text.lower()
    nb = templates.pretrain_notebook(_ToySpec())
    assert [c["id"] for c in nb.cells][:2] == ["title", "parameters"]
    path = templates.materialize(_ToySpec(), 4)
    assert path.name == "06_pretrain_toy.ipynb" and path.read_text() == templates.notebook_text(nb)
