"""Saved fine-tuned models: half precision on disk, float32 back, the same predictions."""

import torch

from ssl_lib.models.classifier import Classifier, load_classifier, save_classifier


def test_saved_in_half_precision_and_loaded_as_float32(tmp_path):
    torch.manual_seed(0)
    model = Classifier("resnet18", 3)
    with torch.no_grad():  # BN statistics that are not the defaults
        model.train()(torch.randn(8, 3, 64, 64))
    model.eval()
    path = save_classifier(model, tmp_path / "m.pt", task="covid", mean=0.3, std=0.2)
    raw = torch.load(path, weights_only=True)
    floats = [v for v in raw["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert raw["state_dict"]["backbone.bn1.num_batches_tracked"].dtype == torch.int64
    loaded, info = load_classifier(path)
    assert info["task"] == "covid" and (info["mean"], info["std"]) == (0.3, 0.2) and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.state_dict().values() if p.is_floating_point())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)
    assert path.stat().st_size < 0.6 * sum(p.numel() * 4 for p in model.state_dict().values())
