"""The runner's handling of shapes, bad input, the similarity filter, re-preparing and running out of memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import random_frames

from streamdiff.backends.graphs import DirectCall
from streamdiff.backends.runner import AcceleratedStream, GpuMemoryError


def _pair(make_stream, capture=DirectCall.capture, **settings):
    eager, fast = make_stream(**settings), make_stream(**settings)
    return eager, AcceleratedStream(fast, capture, mode="direct")


def test_a_new_input_size_runs_once_uncaptured_then_gets_its_own_step(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,), fit="crop")
    frames = random_frames(3, (64, 64, 3)) + random_frames(3, (48, 80, 3), seed=1)
    for frame in frames:
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame))
    assert fast.captured == ["img2img of 1 x 64x64 uint8 frames", "img2img of 1 x 80x48 uint8 frames"]


def test_frames_given_as_strided_views_are_read_correctly(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,))
    for frame in random_frames(4, (64, 96, 3)):
        view = frame[:, 16:80, ::-1]  # a crop of a BGR picture read as RGB: negative strides
        np.testing.assert_array_equal(fast.img2img(view), eager.img2img(view))


def test_a_size_the_stream_refuses_raises_the_engines_error(make_stream):
    _, fast = _pair(make_stream, t_index_list=(30,), fit="exact")
    for frame in random_frames(2, (64, 64, 3)):
        fast.img2img(frame)
    with pytest.raises(ValueError, match="expected a 64x64 picture"):
        fast.img2img(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="frame_buffer_size"):
        fast.img2img(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        fast.img2img(np.zeros((64, 64, 3), np.float32))
    fast.img2img(random_frames(1, (64, 64, 3))[0])  # the stream goes on after bad input


def test_similarity_filter_skips_like_the_engine(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(30,))
    for stream in (eager, fast):
        stream.set_similarity_filter(0.5, max_skip=3)
    base = random_frames(1, (64, 64, 3))[0]
    for k in range(10):
        frame = base if k % 5 else random_frames(1, (64, 64, 3), seed=k)[0]
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame), err_msg=f"frame {k}")
    assert fast.stats.skipped == eager.stats.skipped > 0


def test_preparing_again_captures_again(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(20, 40))
    frames = random_frames(6, (64, 64, 3))
    for frame in frames[:3]:
        fast.img2img(frame), eager.img2img(frame)
    for stream in (eager, fast):
        stream.prepare("a harbour at night", negative_prompt="")
    for frame in frames[3:]:
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame))


def _capture_out_of_memory(step, state):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_while_capturing_keeps_the_stream_going_uncaptured(make_stream, caplog):
    eager, fast = _pair(make_stream, capture=_capture_out_of_memory, t_index_list=(30,))
    with caplog.at_level(logging.WARNING, logger="streamdiff.backends"):
        for frame in random_frames(4, (64, 64, 3)):
            np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame))
    assert fast.captured == []
    assert "out of GPU memory" in caplog.text


def test_out_of_memory_in_a_frame_is_a_clear_error(make_stream, monkeypatch):
    _, fast = _pair(make_stream, t_index_list=(30,))

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fast.pipe.codec, "encode", exhausted)
    with pytest.raises(GpuMemoryError, match="out of GPU memory for a 64x64 stream.*lower one of them"):
        fast.img2img(random_frames(1, (64, 64, 3))[0])
