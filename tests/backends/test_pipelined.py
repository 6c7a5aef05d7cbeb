"""Pipelined frames (each launched before the previous one's pictures are waited for) give img2img's pictures."""

from __future__ import annotations

import numpy as np
from conftest import random_frames
from PIL import Image

from streamdiff.backends.graphs import DirectCall
from streamdiff.backends.runner import AcceleratedStream


def _pair(make_stream, **settings):
    eager, fast = make_stream(**settings), make_stream(**settings)
    return eager, AcceleratedStream(fast, DirectCall.capture, mode="direct")


def test_pipelined_frames_equal_one_call_per_frame(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(20, 40), feedback=0.2, ema=0.3)
    frames = random_frames(8, (64, 64, 3))
    pictures = list(fast.img2img_pipelined(frames))
    assert len(pictures) == len(frames)
    for k, (picture, frame) in enumerate(zip(pictures, frames)):
        np.testing.assert_array_equal(picture, eager.img2img(frame, output_type="np"), err_msg=f"frame {k}")
    assert fast.captured == ["img2img of 1 x 64x64 uint8 frames"]  # warm frames went through the captured step


def test_frames_the_step_does_not_cover_run_in_order(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,), fit="crop")
    frames = random_frames(3, (64, 64, 3)) + random_frames(3, (48, 80, 3), seed=1) + random_frames(2, (64, 64, 3))
    frames.insert(5, Image.fromarray(frames[4]))  # a PIL picture: the ordinary path, still a numpy answer
    for k, (picture, frame) in enumerate(zip(fast.img2img_pipelined(frames), frames)):
        np.testing.assert_array_equal(picture, eager.img2img(frame, output_type="np"), err_msg=f"frame {k}")


def test_calls_between_pipelined_frames_do_not_overwrite_the_frame_in_flight(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,))
    frames, others = random_frames(5, (64, 64, 3)), random_frames(2, (64, 64, 3), seed=7)
    got, expected = [], []
    for k, picture in enumerate(fast.img2img_pipelined(frames)):
        got.append(picture)
        if k == 2:  # frame 3 is in flight now: two direct calls would reuse both of its host slots
            got.extend(fast.img2img(other) for other in others)
    device_order = frames[:4] + others + frames[4:]  # what ran, in order: frame 3 was launched before the calls
    expected = [eager.img2img(frame, output_type="np") for frame in device_order]
    order = [0, 1, 2, 4, 5, 3, 6]  # frame 3's pictures come back after the calls' own
    for k, (picture, index) in enumerate(zip(got, order)):
        np.testing.assert_array_equal(picture, expected[index], err_msg=f"returned picture {k}")


def test_a_prompt_changed_while_iterating_applies_from_the_next_launch(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,))
    frames = random_frames(6, (64, 64, 3))
    got = []
    for k, picture in enumerate(fast.img2img_pipelined(frames)):
        got.append(picture)
        if k == 2:  # frame 3 was launched already: the change reaches frame 4 on
            fast.update_prompt("a harbour at night")
    for k, frame in enumerate(frames):
        if k == 4:
            eager.update_prompt("a harbour at night")
        np.testing.assert_array_equal(got[k], eager.img2img(frame, output_type="np"), err_msg=f"frame {k}")


def test_the_similarity_filter_runs_frames_one_at_a_time_with_its_skips(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,))
    for stream in (eager, fast):
        stream.set_similarity_filter(0.5, max_skip=3)
    base = random_frames(1, (64, 64, 3))[0]
    frames = [base if k % 5 else random_frames(1, (64, 64, 3), seed=k)[0] for k in range(10)]
    for k, (picture, frame) in enumerate(zip(fast.img2img_pipelined(frames), frames)):
        np.testing.assert_array_equal(picture, eager.img2img(frame, output_type="np"), err_msg=f"frame {k}")
    assert fast.stats.skipped == eager.stats.skipped > 0


def test_an_engine_without_acceleration_runs_each_frame(make_stream):
    eager, plain = make_stream(t_index_list=(30,)), make_stream(t_index_list=(30,))
    frames = random_frames(4, (64, 64, 3))
    for picture, frame in zip(plain.img2img_pipelined(frames), frames):
        np.testing.assert_array_equal(picture, eager.img2img(frame, output_type="np"))
