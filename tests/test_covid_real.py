"""COVID-CT as published: the real repository's layout and file-name quirks, the official split kept."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_lib.data import views
from ssl_lib.data.build import build_store
from ssl_lib.data.readers import CovidCTReader
from ssl_lib.data.store import SliceRecord, StoreError, write_store

#: As in UCSD-AI4H/COVID-CT: NonCOVID 14.png/15.png train vs 14%0..3.jpg/15%0.jpg test, 33.png train vs 33%0/1 val.
REAL = {
    "CT_NonCOVID": {"train": ["14.png", "15.png", "33.png", "100.png", "2%0.jpg"],
                    "val": ["33%0.jpg", "33%1.jpg", "50.png"],
                    "test": ["14%0.jpg", "14%1.jpg", "14%2.jpg", "14%3.jpg", "15%0.jpg", "60.png"]},
    "CT_COVID": {"train": ["2020.01.24.919183-p27-132.png", "2020.01.24.919183-p27-133.png",
                           "PIIS0140673620303603%8.png"],
                 "val": ["Recurrence-of-positive-SARS-CoV-2-RNA-in-C_2020_International-Journal-of-Infectiou-p1-21%3.png"],
                 "test": ["2020.02.22.20024927-p18-66%2.png", "2020.03.01.20029769-p21-57%1.png"]},
}


def make_real_covid(root: Path) -> Path:
    """The repository as cloned and unzipped: Images-processed/CT_*/, Data-split/{COVID,NonCOVID}/*.txt
    with CRLF line ends and a UTF-8 BOM, RGBA and RGB PNGs, JPGs, '%' in names."""
    rng = np.random.default_rng(1)
    for folder, splits in REAL.items():
        images = root / "Images-processed" / folder
        images.mkdir(parents=True)
        split_dir = root / "Data-split" / folder.replace("CT_", "")
        split_dir.mkdir(parents=True)
        for split, names in splits.items():
            text = "\r\n".join(names) + "\r\n"
            (split_dir / f"{split}{folder}.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
            for k, name in enumerate(names):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                if name.endswith(".jpg"):
                    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(images / name)
                elif k % 2:
                    Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(images / name)
                else:
                    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(images / name)
    return root


def test_official_split_kept_and_conflicts_recorded(tmp_path):
    src = make_real_covid(tmp_path / "COVID-CT")
    store = build_store("covid", src, tmp_path / "store", size=16, salt="s")
    n = sum(len(v) for s in REAL.values() for v in s.values())
    assert len(store) == n
    by_source = dict(zip(store.manifest["source"], store.manifest["split"]))
    for folder, splits in REAL.items():
        for split, names in splits.items():
            for name in names:
                assert by_source[f"{folder}/{name}"] == split  # every file in its official split
    assert store.manifest.groupby("patient")["split"].nunique().max() == 1  # no key crosses splits
    reader = store.meta["reader"]
    assert reader["counts"]["patient_conflicts"] == 3  # 14, 15, 33
    assert reader["counts"]["conflicting_files"] == 10  # 5 + 2 + 3
    table = views.split_conflicts({"covid": store})
    assert set(table["store"]) == {"covid"} and len(views.split_conflicts(store)) == 10
    assert set(table["key"]) == {"CT_NonCOVID/14", "CT_NonCOVID/15", "CT_NonCOVID/33"}
    assert set(table.loc[table["key"] == "CT_NonCOVID/14", "file"]) == {
        "CT_NonCOVID/14.png", "CT_NonCOVID/14%0.jpg", "CT_NonCOVID/14%1.jpg", "CT_NonCOVID/14%2.jpg", "CT_NonCOVID/14%3.jpg"}
    assert dict(zip(table["file"], table["split"]))["CT_NonCOVID/33%1.jpg"] == "val"
    # names without a "%" are keys of their own
    man = store.manifest.set_index("source")
    assert man.at["CT_COVID/2020.01.24.919183-p27-132.png", "patient"] != man.at["CT_COVID/2020.01.24.919183-p27-133.png", "patient"]


def test_name_rule_has_no_conflicts_and_prefix_groups(tmp_path):
    src = make_real_covid(tmp_path / "COVID-CT")
    reader = CovidCTReader(src, patient="name")
    recs = list(reader)
    assert reader.counts["patient_conflicts"] == 0 and len({r.patient for r in recs}) == len(recs)
    prefix = {r.source: r.patient for r in CovidCTReader(src)}
    assert prefix["CT_NonCOVID/14%0.jpg"] == prefix["CT_NonCOVID/14%3.jpg"] == "CT_NonCOVID/14@test"
    assert prefix["CT_NonCOVID/14.png"] == "CT_NonCOVID/14@train"
    with pytest.raises(ValueError, match="unknown COVID-CT patient rule 'bogus'"):
        CovidCTReader(src, patient="bogus")


def test_strict_mode_names_every_conflicting_file_early(tmp_path):
    src = make_real_covid(tmp_path / "COVID-CT")
    with pytest.raises(StoreError) as info:
        build_store("covid", src, tmp_path / "stores" / "covid", size=16, conflicts="error")
    msg = str(info.value)
    for key, files in {"14": ["14.png", "14%0.jpg", "14%1.jpg", "14%2.jpg", "14%3.jpg"],
                       "15": ["15.png", "15%0.jpg"], "33": ["33.png", "33%0.jpg", "33%1.jpg"]}.items():
        assert f"key 'CT_NonCOVID/{key}'" in msg
        for f in files:
            assert f"CT_NonCOVID/{f} (" in msg
    assert "3 key(s)" in msg and "10 files" in msg
    assert not (tmp_path / "stores").exists() or not any((tmp_path / "stores").iterdir())  # nothing half-written


def test_store_conflict_error_names_every_slice(tmp_path):
    px = np.zeros((4, 4), np.uint8)
    recs = [SliceRecord(px, "p1", 0, "train", "a.png"), SliceRecord(px, "p1", 0, "test", "b.png"),
            SliceRecord(px, "p1", 0, "test", "c.png"), SliceRecord(px, "p2", 1, "train", "d.png")]
    with pytest.raises(StoreError, match=r"1 patient\(s\).*\n  patient [0-9a-f]{16}: train: a\.png; test: b\.png, c\.png"):
        write_store(recs, tmp_path / "s", size=4, name="s", salt="x")
    assert list(tmp_path.iterdir()) == []


def test_real_layout_in_repository_root_and_images_processed(tmp_path):
    src = make_real_covid(tmp_path / "COVID-CT")
    meta = CovidCTReader(src).summary()
    assert json.dumps(meta)  # JSON-safe
    assert CovidCTReader(src).image_root == src / "Images-processed"
