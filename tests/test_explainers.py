"""Tests for ssl_lib.explainers: the registry, the shared-pass CAMs, occlusion with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_lib import explainers as X
from ssl_lib.heatmap_stats import ExplainError
from ssl_lib.models.classifier import Classifier


class RegionModel(torch.nn.Module):
    """Looks at one box only: logit of class 1 = mean of channel 0 inside rows y0:y1, cols x0:x1."""

    num_classes = 2

    def __init__(self, box):
        super().__init__()
        self.box = box
        self.gain = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        y0, y1, x0, x1 = self.box
        s = x[:, 0, y0:y1, x0:x1].mean((1, 2)) * self.gain
        return torch.stack([-s, s], 1)


def test_registry_names_labels_and_kinds():
    assert list(X.EXPLAINERS) == ["gradcam", "gradcam++", "layercam", "hirescam", "occlusion"]
    assert X.CAM_NAMES == ("gradcam", "gradcam++", "layercam", "hirescam")
    assert X.get_explainer("occlusion").kind == "perturbation" and X.explainer_label("layercam") == "LayerCAM"
    assert X.explainer_label("unknown") == "unknown"
    with pytest.raises(ExplainError, match="choose from"):
        X.get_explainer("smoothgrad")


def test_shared_pass_cams_equal_separate_library_calls():
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = Classifier("resnet18", 2).eval()
    x, targets = torch.randn(3, 3, 64, 64), np.array([1, 0, 1])
    layer = model.backbone.layer1[-1]
    maps, logits = X.cam_maps(model, x, targets, layer, X.CAM_NAMES)
    assert logits.shape == (3, 2) and set(maps) == set(X.CAM_NAMES)
    for name, m in maps.items():
        with getattr(pytorch_grad_cam, X.EXPLAINERS[name].cam)(model=model, target_layers=[layer]) as cam:
            ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        assert m.shape == (3, 64, 64) and m.dtype == np.float32 and 0 <= m.min() and m.max() == 1
        np.testing.assert_allclose(m, X.scale_maps(ref), atol=1e-6)
    assert not np.allclose(maps["gradcam"], maps["layercam"], atol=1e-3)  # the methods differ at layer1
    with pytest.raises(ExplainError, match="not a class activation map"):
        X.cam_maps(model, x, targets, layer, ["occlusion"])


def test_a_new_cam_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(X.EXPLAINERS, "xgradcam", X.Explainer("xgradcam", "XGrad-CAM", "cam", cam="XGradCAM"))
    torch.manual_seed(0)
    model = Classifier("resnet18", 2).eval()
    maps, _ = X.cam_maps(model, torch.randn(2, 3, 64, 64), None, model.backbone.layer2[-1], ["gradcam", "xgradcam"])
    assert maps["xgradcam"].shape == (2, 64, 64) and X.explainer_label("xgradcam") == "XGrad-CAM"


def test_occlusion_peaks_where_the_model_looks():
    box = (8, 16, 40, 48)  # rows 8-15, columns 40-47
    model = RegionModel(box)
    x = torch.ones(2, 3, 64, 64)
    x[1] += 0.1 * torch.randn(3, 64, 64)
    m = X.occlusion_maps(model, x, np.array([1, 1]), size=8, stride=4, fill=-1.0, batch_size=16)
    assert m.shape == (2, 64, 64) and m.dtype == np.float32 and m.max() == 1
    for k in range(2):
        y, xx = np.unravel_index(np.argmax(m[k]), m[k].shape)
        assert 8 <= y < 16 and 40 <= xx < 48  # the maximum lies in the box the model reads
        far = np.ones((64, 64), bool)
        far[box[0] - 8:box[1] + 8, box[2] - 8:box[3] + 8] = False
        assert np.all(m[k][far] == 0)  # squares that miss the box change nothing
    # hiding the box raises the other class's probability: no positive evidence, a constant (zero) map
    assert np.all(X.occlusion_maps(model, x[:1], np.array([0]), size=8, stride=8, fill=-1.0) == 0)
    assert model.training  # mode restored


def test_occlusion_bad_settings_are_one_clear_error():
    model, x = RegionModel((0, 4, 0, 4)), torch.ones(1, 3, 16, 16)
    with pytest.raises(ExplainError, match="does not fit"):
        X.occlusion_maps(model, x, np.array([1]), size=32, stride=8, fill=0.0)
    with pytest.raises(ExplainError, match="stride"):
        X.occlusion_maps(model, x, np.array([1]), size=4, stride=5, fill=0.0)
    with pytest.raises(ExplainError, match="target classes"):
        X.occlusion_maps(model, x, np.array([1, 1]), size=4, stride=4, fill=0.0)
    assert X.occlusion_positions(64, 8, 8) == 8 and X.occlusion_positions(64, 8, 3) == 20


def test_scale_maps_clips_negatives_and_keeps_flat_maps_zero():
    m = np.stack([np.array([[-1.0, 0.0], [1.0, 3.0]]), np.full((2, 2), 5.0), -np.ones((2, 2))])
    s = X.scale_maps(m)
    np.testing.assert_allclose(s[0], [[0, 0], [1 / 3, 1]])
    assert np.all(s[1] == 0) and np.all(s[2] == 0) and s.dtype == np.float32
