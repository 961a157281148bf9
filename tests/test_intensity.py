import numpy as np
import pytest

from ssl_lib.data.intensity import interval_map, to_grey, to_hu, window


def test_to_hu_applies_slope_and_intercept():
    stored = np.array([[0, 1024], [2048, 100]], dtype=np.int16)
    hu = to_hu(stored, slope=2.0, intercept=-1024.0)
    np.testing.assert_array_equal(hu, [[-1024, 1024], [3072, -824]])
    assert hu.dtype == np.float32


def test_interval_map_paper_range_ends_and_middle():
    hu = np.array([-2000, -1024, 1023.5, 3071, 5000], dtype=np.float32)
    out = interval_map(hu)
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[1] == 0          # clipped below, low end
    assert out[3] == 255 and out[4] == 255      # high end, clipped above
    assert out[2] == 128                        # middle of [-1024, 3071] -> 127.5 -> 128


def test_window_brain():
    hu = np.array([-5, 35, 75, 200], dtype=np.float32)  # centre 35, width 80 -> [-5, 75]
    np.testing.assert_array_equal(window(hu, 35, 80), [0, 128, 255, 255])
    with pytest.raises(ValueError):
        window(hu, 35, 0)


def test_to_grey_rgb_rgba_and_16bit():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    grey = to_grey(rgb)
    assert grey.shape == (2, 2) and grey[0, 0] == round(0.299 * 100 + 0.587 * 200)
    rgba = np.concatenate([rgb, np.full((2, 2, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_grey(rgba), grey)
    sixteen = np.array([[0, 65535]], np.uint16)
    np.testing.assert_array_equal(to_grey(sixteen), [[0, 255]])
    with pytest.raises(ValueError):
        to_grey(np.zeros((2, 2, 5), np.uint8))
