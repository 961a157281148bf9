"""Batched tensor augmentations (ssl_lib.augment)."""

import pytest
import torch

from ssl_lib.augment import RandomGaussianBlur, RandomHorizontalFlip, RandomResizedCrop, ViewTransform


def _batch(b=6, c=1, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g)


def test_crop_output_size_and_dtype():
    x = _batch(c=3, h=40, w=48)
    y = RandomResizedCrop(24, scale=(0.2, 1.0))(x)
    assert y.shape == (6, 3, 24, 24) and y.dtype == x.dtype


def test_full_crop_is_identity():
    x = _batch(h=16, w=16)
    y = RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_crop_values_come_from_the_image():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, :16] = 1.0  # top half white
    y = RandomResizedCrop(16, scale=(0.05, 0.06))(x, torch.Generator().manual_seed(1))
    assert y.min() >= 0 and y.max() <= 1


def test_flip_is_a_flip():
    x = _batch()
    torch.testing.assert_close(RandomHorizontalFlip(1.0)(x), x.flip(-1))
    torch.testing.assert_close(RandomHorizontalFlip(0.0)(x), x)
    y = RandomHorizontalFlip(0.5)(x, torch.Generator().manual_seed(3))
    for i in range(len(x)):  # every sample is either itself or its mirror image
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))


def test_blur_preserves_mean_and_smooths():
    x = _batch(b=4, c=3, h=48, w=48)
    y = RandomGaussianBlur(1.0, sigma=(1.5, 2.0))(x)
    torch.testing.assert_close(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=5e-3, rtol=0)
    assert y.std() < 0.7 * x.std()  # noise is smoothed


def test_blur_probability_zero_is_identity_and_constant_stays_constant():
    x = _batch()
    torch.testing.assert_close(RandomGaussianBlur(0.0)(x), x)
    const = torch.full((2, 1, 20, 20), 0.3)
    torch.testing.assert_close(RandomGaussianBlur(1.0, sigma=(2.0, 2.0))(const), const)


def test_per_sample_randomness_differs_across_the_batch():
    x = _batch(b=1, h=32, w=32).expand(8, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(0)
    for t in (RandomResizedCrop(16, scale=(0.1, 1.0)), RandomGaussianBlur(1.0, sigma=(0.1, 3.0))):
        y = t(x, g)
        assert len({tuple(y[i].flatten()[:50].tolist()) for i in range(8)}) == 8


def test_reproducible_with_a_generator():
    x = _batch()
    view = ViewTransform.standard(16, (0.2, 1.0), flip_p=0.5, blur_p=0.5, sigma=(0.1, 1.0))
    a = view(x, torch.Generator().manual_seed(7))
    b = view(x, torch.Generator().manual_seed(7))
    c = view(x, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="float batch"):
        RandomResizedCrop(8)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="odd"):
        RandomGaussianBlur(kernel_size=4)
