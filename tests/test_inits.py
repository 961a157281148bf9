import argparse
import json

import pytest
import torch

from ssl_lib.inits import (RELEASED_FORMATS, InitError, apply_init, available_methods, detect_released_format,
                           list_encoder_epochs, load_init)
from ssl_lib.models import build_backbone, encoder_state_dict
from ssl_lib.models.classifier import Classifier
from ssl_lib.paths import StudyPaths


def _released(method, backbone, extra=None):
    top, prefix = RELEASED_FORMATS[method]
    inner = {prefix + k: v for k, v in backbone.state_dict().items()}
    inner[prefix + "fc.weight"] = torch.zeros(10, 512)  # a classifier/projection head under the prefix
    inner["projector.0.weight"] = torch.zeros(4, 4)  # a head outside the prefix
    ckpt = {top: inner, "epoch": 3}
    ckpt.update(extra or {})
    return ckpt


@pytest.mark.parametrize("method", sorted(RELEASED_FORMATS))
def test_released_formats_load_strictly(tmp_path, method):
    torch.manual_seed(0)
    bb = build_backbone("resnet18")
    path = tmp_path / f"{method}.pth"
    torch.save(_released(method, bb), path)
    for init in (load_init(path, arch="resnet18"), load_init(method, path, "resnet18")):
        assert init.card["format"] == method
        assert init.name == f"{method}-released"
        assert any(k.endswith("fc.weight") for k in init.ignored) and "projector.0.weight" in init.ignored
        model = apply_init(Classifier("resnet18", 2), init)
        for k, v in encoder_state_dict(bb).items():
            assert torch.equal(model.backbone.state_dict()[k], v), k


def test_detect_format_and_clear_errors(tmp_path):
    bb = build_backbone("resnet18")
    ck = _released("mocov2", bb)
    assert detect_released_format(ck) == "mocov2"
    del ck["state_dict"]["encoder_q.layer4.1.conv2.weight"]
    with pytest.raises(InitError, match=r"1 backbone keys missing.*layer4\.1\.conv2\.weight"):
        load_init(_save(tmp_path / "broken.pt", ck), arch="resnet18")
    with pytest.raises(InitError, match="does not fit torchvision resnet34"):
        load_init(_save(tmp_path / "r18.pt", _released("byol", bb)), arch="resnet34")
    with pytest.raises(InitError, match="none of the released formats"):
        load_init(_save(tmp_path / "other.pt", {"weights": {"a": torch.zeros(1)}}), arch="resnet18")
    with pytest.raises(InitError, match="no such checkpoint"):
        load_init(tmp_path / "nothere.pt", arch="resnet18")


def test_missing_num_batches_tracked_is_filled_and_noted(tmp_path):
    ck = _released("spark", build_backbone("resnet18"))
    ck["module"] = {k: v for k, v in ck["module"].items() if not k.endswith("num_batches_tracked")}
    init = load_init(_save(tmp_path / "s.pt", ck), arch="resnet18")
    assert init.notes and "num_batches_tracked" in init.notes[0]


def test_pickled_objects_need_trusted(tmp_path):
    path = _save(tmp_path / "lightning.ckpt", _released("swav", build_backbone("resnet18"),
                                                        {"hyper_parameters": argparse.Namespace(lr=1)}))
    with pytest.raises(InitError, match="trusted=True"):
        load_init(path, arch="resnet18")
    assert load_init(path, arch="resnet18", trusted=True).card["format"] == "swav"


def _save(path, obj):
    torch.save(obj, path)
    return path


def _export(out, method, epochs, arch="resnet18"):
    d = StudyPaths(out).pretrain(method) / "encoders"
    d.mkdir(parents=True, exist_ok=True)
    states = {}
    for ep in epochs:
        torch.manual_seed(ep)
        states[ep] = encoder_state_dict(build_backbone(arch))
        torch.save(states[ep], d / f"epoch_{ep:04d}.pt")
        (d / f"epoch_{ep:04d}.json").write_text(json.dumps({"method": method, "epoch": ep, "arch": arch}))
    return states


def test_our_exported_encoders(tmp_path):
    states = _export(tmp_path, "spark", [5, 10])
    _export(tmp_path, "byol", [1])
    assert list_encoder_epochs(tmp_path, "spark") == [5, 10]
    assert available_methods(tmp_path) == ["byol", "spark"]
    last = load_init("spark", tmp_path, "resnet18")
    assert last.epoch == 10 and last.name == "spark"
    first = load_init("spark", tmp_path, "resnet18", epoch=5)
    model = apply_init(Classifier("resnet18", 3), first)
    assert torch.equal(model.backbone.conv1.weight, states[5]["conv1.weight"])
    rnd = load_init("random")
    assert rnd.state is None and apply_init(model, rnd) is model
    with pytest.raises(InitError, match="no encoder for epoch 7"):
        load_init("spark", tmp_path, "resnet18", epoch=7)
    with pytest.raises(InitError, match="no exported encoders"):
        load_init("swav", tmp_path, "resnet18")
    with pytest.raises(InitError, match="encoder is a resnet18"):
        load_init("spark", tmp_path, "resnet50")
