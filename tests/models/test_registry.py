import pytest

from streamdiff.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec, get_spec

# name: (repo_id, family, resolution, t_index_list, lcm_boundary, use_taesd, lora_repo)
EXPECTED = {
    "sdxs-512": ("IDKiro/sdxs-512-0.9", "sd21", 512, (0,), False, True, None),
    "sd-turbo": ("stabilityai/sd-turbo", "sd21", 512, (0,), False, True, None),
    "sd15-lcm": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15", 512, (32, 45), True, True,
                 "latent-consistency/lcm-lora-sdv1-5"),
    "tiny-sd": ("segmind/tiny-sd", "sd15", 512, (32, 45), True, True, "latent-consistency/lcm-lora-sdv1-5"),
    "sdxl-turbo": ("stabilityai/sdxl-turbo", "sdxl", 512, (0,), False, True, None),
    "sdxl-lcm": ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024, (32, 45), True, True,
                 "latent-consistency/lcm-lora-sdxl"),
    "tiny": ("", "tiny", 64, (32, 45), True, True, None),
    "tiny-sdxl": ("", "tiny", 64, (32, 45), True, True, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_entry_states_its_traits(name):
    spec = get_spec(name)
    actual = (spec.repo_id, spec.family, spec.resolution, spec.t_index_list, spec.lcm_boundary, spec.use_taesd,
              spec.lora_repo)
    assert actual == EXPECTED[name]
    assert spec.name == name and spec.num_inference_steps == 50 and spec.description


def test_registry_holds_exactly_the_documented_models_and_sdxs_is_default():
    assert set(REGISTRY) == set(EXPECTED)
    assert DEFAULT_MODEL == "sdxs-512"
    # SD 1.x and 2.x share one TAESD; SDXL's latents need the TAESD trained on them.
    assert {name: spec.taesd_repo for name, spec in REGISTRY.items() if spec.taesd_repo != "madebyollin/taesd"} \
        == {"sdxl-turbo": "madebyollin/taesdxl", "sdxl-lcm": "madebyollin/taesdxl"}


def test_default_timesteps_follow_the_lcm_schedule():
    # 50-step LCM schedule over 1000 training steps: 999, 979, ..., 19; index i -> 999 - 20 i.
    assert get_spec("sd-turbo").timesteps == (999,)
    assert get_spec("sdxs-512").timesteps == (999,)
    assert get_spec("sd15-lcm").timesteps == (359, 99)
    assert get_spec("sd15-lcm").default_steps == 2 and get_spec("sd-turbo").default_steps == 1


def test_only_the_tiny_entries_are_built_locally():
    assert [n for n, s in REGISTRY.items() if s.local_builder] == ["tiny", "tiny-sdxl"]
    assert get_spec("tiny").local_builder == "streamdiff.models.tiny:build_tiny_pipeline"
    assert get_spec("tiny-sdxl").local_builder == "streamdiff.models.tiny:build_tiny_sdxl_pipeline"


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError) as info:
        get_spec("sd-turbo-xl")
    assert all(name in str(info.value) for name in REGISTRY)


def test_traits_are_checked():
    spec = get_spec("sd-turbo")
    with pytest.raises(ValueError, match="t_index_list"):
        spec.with_traits(t_index_list=(45, 32))
    with pytest.raises(ValueError, match="num_inference_steps"):
        spec.with_traits(t_index_list=(50,))
    with pytest.raises(ValueError, match="resolution"):
        spec.with_traits(resolution=500)
    with pytest.raises(ValueError, match="unknown model traits"):
        spec.with_traits(turbo=True)
    changed = spec.with_traits(t_index_list=(10, 30), lcm_boundary=True)
    assert changed.t_index_list == (10, 30) and changed.lcm_boundary and spec.t_index_list == (0,)


def test_a_spec_named_like_a_turbo_model_keeps_the_conservative_defaults():
    spec = ModelSpec(name="my-turbo", repo_id="me/my-turbo", description="", family="sd21", resolution=512,
                     t_index_list=(32, 45))
    assert spec.lcm_boundary and spec.use_taesd and spec.lora_repo is None


def test_auxiliary_repos_follow_taesd_choice_and_lora():
    spec = get_spec("sd15-lcm")
    assert spec.auxiliary_repos() == ("madebyollin/taesd", "latent-consistency/lcm-lora-sdv1-5")
    assert spec.auxiliary_repos(taesd=False) == ("latent-consistency/lcm-lora-sdv1-5",)
    assert get_spec("tiny").auxiliary_repos() == ()
