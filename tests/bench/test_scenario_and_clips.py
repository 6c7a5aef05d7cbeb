"""Benchmark cases and their synthetic clips."""

from __future__ import annotations

import numpy as np
import pytest

from streamdiff.bench.clips import batched, make_clip
from streamdiff.bench.scenario import Scenario, grid
from streamdiff.config import StreamConfig


@pytest.mark.parametrize("bad,message", [({"task": "video"}, "task must be one of"), ({"cfg": "half"}, "cfg_type"),
                                         ({"clip": "noise"}, "clip must be one of"), ({"steps": 0}, "steps must be"),
                                         ({"resolution": 500}, "multiple of 8"),
                                         ({"task": "txt2img", "pipelined": True}, "pipelined frames are img2img"),
                                         ({"controlnet": "canny", "control_scale": 6.0},
                                          r"control_scale must be in \[0, 5\]; got 6.0"),
                                         ({"controlnet": "canny", "control_preprocess": "midas"},
                                          "control_preprocess must be one of canny, depth, none"),
                                         ({"controlnet": "canny", "canny_thresholds": (200, 100)},
                                          "canny_thresholds must be two numbers with 0 <= low <= high")])
def test_bad_cases_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        Scenario(**bad)


def test_grid_is_the_product_in_order_and_names_tell_cases_apart():
    cases = grid(Scenario(), steps=[1, 2], accel=["none", "max"])
    assert [(c.steps, c.accel) for c in cases] == [(1, "none"), (1, "max"), (2, "none"), (2, "max")]
    assert len({c.name() for c in cases}) == 4
    assert "sequential" in Scenario(batched=False).name() and "fbs4" in Scenario(frame_buffer_size=4).name()
    assert "unfused-codec" in Scenario(codec_fusion=False).name()
    assert Scenario(pipelined=True).name().endswith(" pipelined")
    assert "unfused-codec" not in Scenario(codec_fusion=False, taesd=False).name()  # nothing to fuse in a KL VAE
    assert Scenario(controlnet="canny").name().endswith(" controlnet-canny")
    assert Scenario(controlnet="canny", control_scale=0.8).name().endswith(" controlnet-canny@0.8")
    assert Scenario(controlnet=("canny", "depth"), control_scale=(0.8, 0.5), depth_estimator="base").name().endswith(
        " controlnet-canny+depth@0.8,0.5 depth-estimator-base")
    told = Scenario(controlnet="depth", control_preprocess="none", canny_thresholds=(20, 60.5))
    assert told.name().endswith(" controlnet-depth preprocess-none canny-20-60.5")


def test_settings_make_a_stream_config_with_evenly_spaced_steps():
    config = StreamConfig(**Scenario(steps=2, frame_buffer_size=3, cfg="self", resolution=256).settings())
    observed = (config.t_index_list, config.frame_buffer_size, config.width, config.cfg_type.value)
    assert observed == ((0, 25), 3, 256, "self")
    assert StreamConfig(**Scenario(controlnet="canny", control_scale=0.8).settings()).control_scale == 0.8
    told = Scenario(controlnet="canny", control_preprocess="none", canny_thresholds=(20, 60))
    config = StreamConfig(**told.settings())
    assert (config.control_preprocess, config.canny_thresholds) == ("none", (20.0, 60.0))
    assert "canny_thresholds" not in Scenario(canny_thresholds=(20, 60)).settings()  # nothing to steer without one


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel() / 127.5 - 1, b.astype(np.float64).ravel() / 127.5 - 1
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_clips_are_deterministic_and_the_static_one_barely_changes():
    static, moving = make_clip("static", 4, 48, 64), make_clip("moving", 4, 48, 64)
    assert static[0].shape == (48, 64, 3) and static[0].dtype == np.uint8
    np.testing.assert_array_equal(make_clip("moving", 4, 48, 64)[3], moving[3])
    assert _cosine(static[0], static[1]) > 0.999
    assert _cosine(moving[0], moving[3]) < 0.99
    with pytest.raises(ValueError, match="clip must be one of"):
        make_clip("dark", 2, 8, 8)


def test_batched_groups_consecutive_frames():
    clip = make_clip("moving", 6, 8, 8)
    groups = batched(clip, 3)
    assert [g.shape for g in groups] == [(3, 8, 8, 3)] * 2
    np.testing.assert_array_equal(groups[1][0], clip[3])
    assert batched(clip, 1) == clip
