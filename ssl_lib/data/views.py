"""Tables and pictures of the slice stores for the pre-processing chapter."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .intensity import PAPER_HU_RANGE, interval_map
from .store import SliceStore


def _window(options: dict) -> str:
    w = options.get("window")
    if w:
        return f"window {w[0]:g}/{w[1]:g} HU"
    lo, hi = options.get("hu_range") or (-1024, 3071)
    return f"HU {lo:g}…{hi:g} → 0…255"


def read_as(meta: dict) -> str:
    """What a store's reader read and how it made grey values, from its metadata (no paths)."""
    reader = meta.get("reader", {})
    kind, options, counts = reader.get("kind", ""), reader.get("options", {}), reader.get("counts", {})
    if kind == "lidc":
        return f"DICOM series, {_window(options)}"
    if kind == "covid":
        return "PNG/JPG as given (grey)"
    if kind == "medmnist":
        return "MedMNIST .npz as given"
    if kind == "folder":
        parts = []
        if counts.get("dicom_files"):
            parts.append(f"DICOM, {_window(options)}")
        if counts.get("images"):
            parts.append(f"16-bit PNG, {_window(options)}" if options.get("png16") else "PNG/JPG as given (grey)")
        return " + ".join(parts) or "-"
    return kind or "-"


def patients_from(meta: dict) -> str:
    """Where a store's patient keys came from, and what that means for its patient-level split."""
    reader = meta.get("reader", {})
    kind, counts = reader.get("kind", ""), reader.get("counts", {})
    if kind == "lidc":
        return "DICOM PatientID"
    if kind == "covid":
        return "file-name prefix (COVID-CT has no patient ids); official split files"
    if kind == "medmnist":
        return "none (MedMNIST's official split)"
    if kind == "folder":
        sources = [f"{what} ({counts[key]} file{'s' if counts[key] != 1 else ''})" for key, what in (
            ("patients_from_csv", "labels CSV"), ("patients_from_dicom", "DICOM PatientID"),
            ("patients_from_file_name", "file name")) if counts.get(key)]
        text = ", ".join(sources) or "-"
        if counts.get("patients_from_file_name"):
            text += ": no patient ids there, each such image counts as its own patient, so one " \
                    "patient's images may fall into different splits"
        return text
    return "-"


def store_summary(stores: dict[str, SliceStore]) -> pd.DataFrame:
    """One row per store: data (real or synthetic), what was read, where patients came from, task,
    slices, patients, image size, normalisation, masks, skipped files."""
    rows = []
    for name, s in stores.items():
        m = s.meta
        rows.append({
            "store": name, "data": "synthetic" if m.get("synthetic") else "real (user)", "read as": read_as(m),
            "patients from": patients_from(m), "task": m["task"], "classes": len(m["class_names"]) or "-",
            "slices": m["num_slices"], "patients": m["num_patients"], "image size": f"{m['image_size']}²",
            "mean": round(m["mean"], 4), "std": round(m["std"], 4), "masks": m["has_masks"],
            "skipped files": m.get("skipped", 0),
        })
    return pd.DataFrame(rows).set_index("store")


def split_conflicts(stores: "SliceStore | dict[str, SliceStore]") -> pd.DataFrame:
    """Files whose patient key the patient rule put into more than one given split (COVID-CT layouts).

    One row per file: the store, the key, the split the official split file gives it, the file name
    (COVID-CT names are figure ids, not people). Empty when there are none. The stores keep the
    official split; see :mod:`ssl_lib.data.readers.covidct`.
    """
    stores = stores if isinstance(stores, dict) else {stores.meta.get("name", ""): stores}
    rows = [{"store": name, "key": c["key"], "split": split, "file": file}
            for name, store in stores.items()
            for c in store.meta.get("reader", {}).get("conflicts", []) for split, file in c["files"]]
    return pd.DataFrame(rows, columns=["store", "key", "split", "file"])


def first_labelled(stores: dict[str, SliceStore]) -> SliceStore:
    """The first store with labels (the study's first task), else the first store."""
    return next((s for s in stores.values() if s.meta["task"] != "unlabeled"), next(iter(stores.values())))


def class_counts(stores: dict[str, SliceStore]) -> pd.DataFrame:
    """Slices per store, split and class (labelled stores only)."""
    frames = []
    for name, s in stores.items():
        if s.meta["task"] == "unlabeled":
            continue
        names = s.class_names
        man = s.manifest.assign(store=name, cls=[names[k] if 0 <= k < len(names) else str(k) for k in s.labels])
        frames.append(man.groupby(["store", "cls", "split"]).size().rename("slices"))
    table = pd.concat(frames).unstack("split", fill_value=0)
    return table[[c for c in ("train", "val", "test") if c in table.columns]]


def show_examples(stores: dict[str, SliceStore], n: int = 6, seed: int = 0) -> plt.Figure:
    """A row of example slices per store, titled with the class, lesion masks outlined in red."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(stores), n, figsize=(1.35 * n, 1.55 * len(stores)), squeeze=False)
    for row, (name, s) in zip(axes, stores.items()):
        labels = s.labels
        if s.meta["task"] == "unlabeled":
            picks = rng.choice(len(s), size=min(n, len(s)), replace=False)
        else:  # alternate classes so every class shows up
            classes = np.unique(labels)
            picks = [rng.choice(np.flatnonzero(labels == classes[i % len(classes)])) for i in range(n)]
        for ax, i in zip(row, picks):
            ax.imshow(s.images[i], cmap="gray", vmin=0, vmax=255)
            if s.masks is not None and s.masks[i].any():
                ax.contour(s.masks[i], levels=[0.5], colors="red", linewidths=0.8)
            title = s.class_names[labels[i]] if labels[i] >= 0 and s.class_names else "unlabelled"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        row[0].text(-0.1, 0.5, name, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=11)
        for ax in row[len(picks):]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def hu_histogram(hu_values: np.ndarray, hu_range: tuple[float, float] = PAPER_HU_RANGE) -> plt.Figure:
    """Histogram of HU values of a CT series and of the same voxels after the interval mapping."""
    hu = np.asarray(hu_values, dtype=np.float32).ravel()
    grey = interval_map(hu, *hu_range)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.2, 3.2))
    a.hist(hu, bins=200, color="tab:blue", log=True)
    a.axvline(hu_range[0], color="k", ls="--", lw=0.8)
    a.axvline(hu_range[1], color="k", ls="--", lw=0.8)
    a.set(xlabel="Hounsfield units", ylabel="voxels (log)", title="before: HU")
    b.hist(grey, bins=256, range=(0, 255), color="tab:orange", log=True)
    b.set(xlabel="grey value", title=f"after: {hu_range[0]:g}…{hu_range[1]:g} HU → 0…255")
    fig.tight_layout()
    return fig


def draw_slice(store: SliceStore, i: int, show_mask: bool = True) -> plt.Figure:
    """One slice of a store with its class, split and (if any) mask outline in red."""
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    ax.imshow(store.images[i], cmap="gray", vmin=0, vmax=255)
    if show_mask and store.masks is not None and store.masks[i].any():
        ax.contour(store.masks[i], levels=[0.5], colors="red")
    row = store.manifest.iloc[i]
    label = store.class_names[row.label] if row.label >= 0 and store.class_names else "unlabelled"
    ax.set_title(f"#{i} {label} ({row.split})", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    return fig


def slice_browser(store: SliceStore, max_frames: int = 24):
    """A browser of a store's slices (and masks): ipywidgets in JupyterLab; in a batch run (the
    book) a :func:`ssl_lib.viewer.frame_viewer` over ``max_frames`` evenly spaced slices."""
    from ..viewer import evenly_spaced, frame_viewer
    from ..widgets import batch_run

    if batch_run():
        picks = evenly_spaced(len(store), max_frames)
        return frame_viewer(lambda k: draw_slice(store, picks[k]), [("slice", [f"#{i}" for i in picks])],
                            title=f"{store.meta.get('name', 'store')}: {len(picks)} of {len(store)} slices"
                                  + (", masks in red" if store.masks is not None else ""))
    import ipywidgets as widgets

    out = widgets.Output()
    slider = widgets.IntSlider(value=0, min=0, max=len(store) - 1, description="slice", continuous_update=False)
    show_mask = widgets.Checkbox(value=store.masks is not None, description="mask", disabled=store.masks is None)

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            draw_slice(store, slider.value, show_mask.value)
            plt.show()

    slider.observe(draw, "value")
    show_mask.observe(draw, "value")
    draw()
    return widgets.VBox([widgets.HBox([slider, show_mask]), out])


def series_hu(lidc_root: str | Path, max_slices: int = 64) -> np.ndarray:
    """HU values of the first CT series of a LIDC-IDRI tree (up to ``max_slices`` slices), float32 ``(S, H, W)``.

    For the before/after histogram of the interval mapping; uses the LIDC reader's own series
    walk and DICOM decoding.
    """
    from .readers.dicom import decode_hu, modality, read_dicom
    from .readers.lidc import LidcReader

    reader = LidcReader(lidc_root)
    for _, _, files in reader.series():
        if len(files) <= reader.min_series_images:
            continue
        datasets = [(f, read_dicom(f)) for f in files[:max_slices]]
        if all(modality(ds) == "CT" for _, ds in datasets):
            return np.stack([decode_hu(ds, f) for f, ds in datasets])
    raise ValueError(f"{lidc_root}: no CT series with more than {reader.min_series_images} images")


def hu_histogram_of(lidc_root: str | Path | None, output_dir: str | Path) -> plt.Figure:
    """:func:`hu_histogram` of the first CT series under ``lidc_root`` (empty: the synthetic LIDC tree)."""
    from ..paths import StudyPaths
    from .synthetic import sources_at

    return hu_histogram(series_hu(lidc_root or sources_at(StudyPaths(output_dir).synthetic).lidc))
