"""The fine-tuning input path: device-side batches, prepared one step ahead with the same results."""

import torch

import ssl_lib.finetune as ft
from ssl_lib.finetune_augment import FlipRotate
from ssl_lib.finetune_feed import Prefetcher, prepare_images, shuffled_batches
from ssl_lib.models.classifier import Classifier


def test_prefetcher_prepares_the_next_batch_before_the_current_one_is_used():
    log = []

    def prepare(i):
        log.append(f"prepare {i}")
        return i

    for i in Prefetcher("cpu")(range(3), prepare):
        log.append(f"step {i}")
    assert log == ["prepare 0", "prepare 1", "step 0", "prepare 2", "step 1", "step 2"]
    log.clear()
    for i in Prefetcher("cpu", enabled=False)(range(2), prepare):
        log.append(f"step {i}")
    assert log == ["prepare 0", "step 0", "prepare 1", "step 1"]
    assert list(Prefetcher("cpu")([], prepare)) == []


def test_epoch_batches_are_device_indices_covering_every_item_once():
    gen = torch.Generator().manual_seed(0)
    batches = shuffled_batches(10, 4, gen)
    assert [len(b) for b in batches] == [4, 4, 2] and all(b.device == gen.device for b in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(batches), torch.cat(shuffled_batches(10, 4, gen)))  # a new order per epoch


def test_prepared_images_are_normalised_three_channel_and_augmented_per_sample():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (8, 1, 12, 12), dtype=torch.uint8, generator=g)
    plain = prepare_images(images, mean=0.5, std=0.25, device=torch.device("cpu"), channels_last=True)
    assert plain.shape == (8, 3, 12, 12) and plain.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain[:, 1:2], (images.float() / 255 - 0.5) / 0.25)
    assert torch.equal(plain[:, 0], plain[:, 2])
    out = prepare_images(images, mean=0.5, std=0.25, device=torch.device("cpu"), channels_last=False,
                         augment=FlipRotate(), generator=torch.Generator().manual_seed(1))
    again = prepare_images(images, mean=0.5, std=0.25, device=torch.device("cpu"), channels_last=False,
                           augment=FlipRotate(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and torch.equal(out[:, 0], out[:, 2])
    changed = [not torch.equal(o, p) for o, p in zip(out, plain)]
    assert any(changed) and not all(changed)  # per sample: some slices augmented, some not (p 0.25 untouched)


def test_fit_gives_the_same_model_with_and_without_prefetching():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 255, (20, 1, 32, 32), dtype=torch.uint8, generator=g), torch.arange(20) % 2
    for augment, bn in (("flip", False), ("monai", True)):
        prof = ft.get_profile("smoke", batch_size=8, linear_epochs=1, full_epochs=1, augment=augment,
                              train_bn_frozen=bn)
        results = []
        for prefetch in (True, False):
            torch.manual_seed(0)
            res = ft.fit(Classifier("resnet18", 2), x, y, x[:6], y[:6], prof, mean=0.5, std=0.25, seed=2,
                         prefetch=prefetch)
            results.append(res)
        a, b = results
        assert a.curves.drop(columns="time_s").equals(b.curves.drop(columns="time_s")), augment
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), augment
