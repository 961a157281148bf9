"""No source path in any output: the pre-processing step run by the runner on sources whose folder
name carries a marker (as a folder named after a patient would), every output byte searched."""

import numpy as np
import pytest
from PIL import Image

from test_covid_real import make_real_covid
from test_ingest import lidc_tree
from ssl_lib.study import REDACTED, run_study, source_paths

MARKER = "Doe_Jane_MARKER_1234"


@pytest.mark.slow
def test_no_output_byte_holds_a_source_path(tmp_path):
    data = tmp_path / MARKER
    covid = make_real_covid(data / "COVID-CT")
    lidc = lidc_tree(data / "LIDC-IDRI", n_series=2, n=11, hw=(16, 16))
    brain = data / "brain"
    brain.mkdir()
    rows = ["file,label,patient"]
    for k in range(12):
        Image.fromarray(np.full((16, 16), 20 * k, np.uint8)).save(brain / f"s{k}.png")
        rows.append(f"s{k}.png,{k % 2},p{k // 2}")
    (brain / "broken.png").write_bytes(b"not a png")  # skipped: its log line must not name the folder
    rows.append("broken.png,1,p9")
    (brain / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    params = {"lidc_root": str(lidc), "covid_root": str(covid), "brain_root": str(brain), "skip_bad": True}
    run_study(out, "smoke", steps=["preprocess"], extra=params, book=False)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name == "01_preprocess.ipynb" for f in files) and any(f.name == "meta.json" for f in files)
    for f in files:
        assert MARKER.encode() not in f.read_bytes(), f"{f.relative_to(out)} holds a source path"
    notebook = (out / "notebooks" / "01_preprocess.ipynb").read_text()
    assert REDACTED in notebook and "skipped" in notebook and "CT_NonCOVID/14%0.jpg" in notebook  # conflicts listed


def test_source_paths_found_in_nested_and_json_values(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "out").mkdir()
    found = source_paths({"output_dir": str(tmp_path / "out"), "x": str(tmp_path / "a"),
                          "tasks": f'[{{"name": "liver", "source": "{tmp_path / "a"}"}}]',
                          "inside": str(tmp_path / "out"), "n": 3, "word": "auto"})
    assert found == [str(tmp_path / "a")]
