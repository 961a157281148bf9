"""One study profile (ssl_lib.profiles): the parts agree, validate() catches what does not fit,
overrides go through it, and every step reads its part from it."""

from __future__ import annotations

import pytest

from ssl_lib import profiles as P
from ssl_lib.errors import SslCtError


@pytest.mark.parametrize("name", P.PROFILE_NAMES)
def test_every_shipped_profile_validates(name):
    prof = P.get_profile(name)
    assert prof.problems() == [] and prof.validate() is prof
    assert set(prof.methods()) == set(P.pretrain_profiles())  # every registered method has this profile
    for method in prof.methods():
        assert prof.pretrain(method).arch == prof.finetune.arch


def test_quick_is_resnet18_on_both_sides_at_64_px():
    quick = P.get_profile("quick")
    assert quick.finetune.arch == "resnet18" and {quick.pretrain(m).arch for m in quick.methods()} == {"resnet18"}
    assert quick.data.lidc_size == quick.data.task_size == quick.finetune.image_size == 64


def test_a_mismatched_architecture_is_caught():
    with pytest.raises(P.ProfileError, match=r"pre-trains a resnet18 but fine-tuning builds a resnet50") as err:
        P.get_profile("quick", finetune={"arch": "resnet50"})
    assert isinstance(err.value, SslCtError) and isinstance(err.value, ValueError)
    with pytest.raises(P.ProfileError, match="resnet50 but fine-tuning builds a resnet18"):
        P.get_profile("paper", finetune={"arch": "resnet18", "image_size": 224})
    with pytest.raises(P.ProfileError, match="finetune.arch 'resnet 50' is not a ResNet both steps build"):
        P.get_profile("smoke", finetune={"arch": "resnet 50"})


def test_mismatched_sizes_are_caught():
    with pytest.raises(P.ProfileError, match=r"task stores are 64 px \(data.task_size\) but fine-tuning trains at 96"):
        P.get_profile("quick", finetune={"image_size": 96})
    with pytest.raises(P.ProfileError, match=r"meant for a 64 px pre-training store but the lidc store is 128 px"):
        P.get_profile("quick", data={"lidc_size": 128})
    with pytest.raises(P.ProfileError, match="explain.input_size 32 px is smaller than the fine-tuning size 64"):
        P.get_profile("quick", explain={"input_size": 32})
    with pytest.raises(P.ProfileError, match="no grid cell"):
        P.get_profile("smoke", explain={"stage": "layer4", "input_size": None}, data={"task_size": 16},
                      finetune={"image_size": 16})
    with pytest.raises(P.ProfileError, match="not a ResNet stage"):
        P.get_profile("smoke", explain={"stage": "layer5"})
    # several problems: one error that lists them all
    with pytest.raises(P.ProfileError, match=r"does not fit together:\n  - .*\n  - "):
        P.get_profile("quick", finetune={"image_size": 96}, explain={"input_size": 32})


def test_consistent_overrides_pass_and_reach_the_parts():
    prof = P.get_profile("quick", data={"task_size": 96}, finetune={"image_size": 96}, pretrain={"epochs": 3, "lr": None})
    assert prof.finetune.image_size == prof.data.task_size == 96
    assert {prof.pretrain(m).epochs for m in prof.methods()} == {3}
    assert prof.pretrain("byol").lr == P.get_profile("quick").pretrain("byol").lr  # None: the profile's
    assert P.get_profile("quick").finetune.image_size == 64  # the shipped profile is untouched


def test_unknown_names_say_what_exists():
    with pytest.raises(P.ProfileError, match=r"unknown profile 'quik' \(did you mean 'quick'\?\)"):
        P.get_profile("quik")
    with pytest.raises(P.ProfileError, match=r"unknown finetune setting\(s\) \['epochz'\]"):
        P.get_profile("quick", finetune={"epochz": 1})
    with pytest.raises(P.ProfileError, match="unknown pre-training method 'byl'"):
        P.get_profile("quick").pretrain("byl")
    with pytest.raises(P.ProfileError, match="unknown synthetic profile"):
        P.synthetic_profile("huge")


def test_the_steps_read_their_part_from_the_one_profile():
    from ssl_lib import explain, finetune
    from ssl_lib.data import prepare, synthetic
    from ssl_lib.pretrain import get_config

    for name in P.PROFILE_NAMES:
        prof = P.get_profile(name)
        assert finetune.get_profile(name) is prof.finetune
        assert P.explain_profile(name) is prof.explain
        assert prepare.data_profile(name) is prof.data
        assert synthetic.synthetic_profile(prof.data.synthetic) is prof.synthetic
        for method in prof.methods():
            assert get_config(method, name) == prof.pretrain(method)
    for old in (finetune, explain, prepare, synthetic):
        assert not hasattr(old, "PROFILES")  # one table, here
    assert P.synthetic_profile("paper") is P.synthetic_profile("paper-demo")


def test_runner_parameters_become_validated_overrides(tmp_path):
    from ssl_lib import study

    assert P.overrides_from_params({"epochs": 2, "batch_size": None, "image_size": 0, "seed": 1}) == \
        {"pretrain": {"epochs": 2}}
    with pytest.raises(study.StudyError, match=r"--param \['image_size'\].*task stores are 96 px"):
        study.check_request(tmp_path / "out", "quick", None, {"image_size": 96}, None, force=True)
    assert not (tmp_path / "out").exists()
    assert study.check_request(tmp_path / "out", "smoke", ["preprocess"], {"epochs": 1}, None, force=True)


def test_no_pretraining_crop_reaches_the_last_stage_as_one_by_one(monkeypatch):
    """bf16 convolution gradients of 1 x 1 maps were not finite on the CPU (the smoke SwAV NaN): every
    crop of every method must reach layer4 (stride 32) as at least 2 x 2, i.e. be at least 33 px."""
    from dataclasses import replace

    from ssl_lib.pretrain import swav

    assert [P.stage_side(s) for s in (16, 32, 33, 40, 64, 65, 96, 224, 512)] == [1, 1, 2, 2, 2, 3, 3, 7, 16]
    assert P.stage_side(40, "layer3") == 3 and P.stage_side(64, "layer1") == 16
    for name in P.PROFILE_NAMES:  # the shipped profiles pass, SwAV's small crops and SparK's input included
        prof = P.get_profile(name)
        for method in prof.methods():
            assert all(P.stage_side(side) >= P.MIN_LAST_STAGE for side in prof.pretrain(method).crop_sizes().values())
    assert set(P.get_profile("paper").pretrain("swav").crop_sizes()) == {"crop_size", "small_size"}
    with pytest.raises(P.ProfileError, match=r"'smoke': byol's crop_size of 32 px reaches the last ResNet stage "
                                             r"\(layer4, stride 32\) as 1 x 1") as err:
        P.get_profile("smoke", pretrain={"crop_size": 32})
    assert "swav's crop_size of 32 px" in str(err.value) and "spark's crop_size of 32 px" in str(err.value)
    monkeypatch.setitem(swav.SPEC.profiles, "quick", replace(swav.PROFILES["quick"], small_size=32))
    with pytest.raises(P.ProfileError, match=r"profile 'quick': swav's small_size of 32 px .* as 1 x 1"):
        P.get_profile("quick")
    monkeypatch.setitem(swav.SPEC.profiles, "quick", replace(swav.PROFILES["quick"], small_size=32, n_small=0))
    assert P.get_profile("quick").problems() == []  # no small crops: their size is not used
