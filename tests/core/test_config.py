from __future__ import annotations

import pytest

from streamdiff import CfgType, StreamConfig
from streamdiff.config import strength_to_t_index


def test_strength_and_steps_resolve_to_indices():
    assert StreamConfig(strength=1.0, steps=1).t_index_list == (0,)
    assert StreamConfig(strength=0.5, steps=2).t_index_list == (25, 37)
    assert strength_to_t_index(0.36, 2, 50) == (32, 41)
    assert StreamConfig().t_index_list == (0,)


def test_config_is_frozen_and_changes_make_new_configs():
    cfg = StreamConfig(t_index_list=(32, 45))
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]
    assert cfg.with_changes(seed=3).t_index_list == (32, 45)
    assert cfg.with_changes(strength=1.0).t_index_list == (0,)
    assert cfg.latency_frames == 1


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(cfg_type="half"), "cfg_type must be one of none, full, self, initialize"),
        (dict(t_index_list=(10, 50)), "t_index_list entries must be in [0, 49]"),
        (dict(t_index_list=(30, 10)), "strictly increasing"),
        (dict(width=500), "width must be a positive multiple of 8"),
        (dict(height=0), "height must be a positive multiple of 8"),
        (dict(strength=0.0), "strength must be in (0, 1]"),
        (dict(strength=0.02, steps=3), "steps=3 does not fit"),
        (dict(t_index_list=(1,), strength=0.5), "either t_index_list or strength/steps"),
        (dict(frame_buffer_size=0), "frame_buffer_size must be at least 1"),
        (dict(ema=1.0), "ema must be in [0, 1)"),
        (dict(fit="zoom"), "fit must be one of"),
        (dict(similarity_threshold=1.5), "similarity_threshold must be in [0, 1]"),
    ],
)
def test_bad_settings_name_what_was_expected(settings, words):
    with pytest.raises(ValueError) as info:
        StreamConfig(**settings)
    assert words in str(info.value)


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown setting"):
        StreamConfig.from_settings(None, guidance=2.0)


def test_cfg_type_accepts_enum_and_text():
    assert StreamConfig(cfg_type="SELF").cfg_type is CfgType.SELF
    assert not StreamConfig(cfg_type="full", guidance_scale=1.0).uses_guidance
    assert StreamConfig(cfg_type="full", guidance_scale=1.5).uses_guidance
