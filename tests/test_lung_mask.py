"""Tests for ssl_lib.lung_mask: the threshold lung mask against the phantom's own lung."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_lib.data.intensity import window
from ssl_lib.data.phantom import chest_slice_hu
from ssl_lib.data.store import resize_slice
from ssl_lib.data.synthetic import COVID_WINDOW
from ssl_lib.lung_mask import lung_mask, lung_masks, otsu_threshold, with_lesions


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _slice(seed, size=64, ggo=0.0):
    """A windowed phantom chest slice at ``size`` px (as a COVID store holds it) and its true lung and lesion."""
    z = np.random.default_rng(seed).uniform(0.45, 0.8)
    hu, m = chest_slice_hu((140, 130), z=z, seed=seed, ggo=ggo, ggo_hu=600.0)
    grey = resize_slice(window(hu, *COVID_WINDOW), size)
    lung = resize_slice((m["lung-left"] | m["lung-right"]).astype(np.uint8), size, nearest=True) > 0
    lesion = resize_slice(m["lesion"].astype(np.uint8), size, nearest=True) > 0
    return grey, lung, lesion


def test_lung_mask_matches_the_phantoms_lung():
    ious = [_iou(lung_mask(g), lung) for g, lung, _ in (_slice(s) for s in range(8))]
    assert min(ious) > 0.7 and np.mean(ious) > 0.8


def test_dense_lesions_fall_outside_the_threshold_but_with_lesions_adds_them():
    ious, ious_plus, covered = [], [], []
    for s in range(8):
        g, lung, lesion = _slice(s, ggo=0.3)
        est = lung_masks(g[None])
        plus = with_lesions(est, lesion[None])[0]
        ious.append(_iou(est[0], lung))
        ious_plus.append(_iou(plus, lung))
        covered.append((plus & lesion).sum() / lesion.sum())
    assert np.mean(ious_plus) > np.mean(ious) + 0.1  # ground glass as dense as the chest wall is cut out ...
    assert min(ious_plus) > 0.75 and min(covered) == 1.0  # ... and put back by the lesion mask
    assert with_lesions(np.zeros((1, 4, 4), bool), None).shape == (1, 4, 4)


def test_no_body_gives_an_empty_mask():
    rng = np.random.default_rng(0)
    for img in (np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8),
                rng.integers(0, 256, (64, 64), dtype=np.uint8)):
        m = lung_mask(img)
        assert m.shape == (64, 64) and m.dtype == bool and not m.any()
    ring = np.zeros((64, 64), np.uint8)  # a body without any air inside: no lung
    yy, xx = np.mgrid[:64, :64]
    ring[(yy - 32) ** 2 + (xx - 32) ** 2 < 25 ** 2] = 200
    assert not lung_mask(ring).any()
    ring[(yy - 32) ** 2 + (xx - 20) ** 2 < 8 ** 2] = 30  # one enclosed dark region: found, outside air not
    m = lung_mask(ring)
    assert m[32, 20] and not m[0, 0] and m.sum() == pytest.approx(np.pi * 64, rel=0.2)


def test_otsu_and_bad_shapes():
    img = np.r_[np.full(50, 20), np.full(50, 200)].astype(np.uint8).reshape(10, 10)
    assert 20 < otsu_threshold(img) <= 200
    assert np.isnan(otsu_threshold(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="one"):
        lung_mask(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="N, H, W"):
        lung_masks(np.zeros((4, 4), np.uint8))
