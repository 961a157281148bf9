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
