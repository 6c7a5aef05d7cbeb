"""The runner's captured similarity check decides exactly as the engine's eager filter does.

Pairs of streams with the same config and seed: one plain StreamPipeline, one AcceleratedStream whose steps
and checks run as direct calls (the CPU stand-in for CUDA graphs, same code path). Each frame is compared:
output, whether it was skipped, the similarity the filter saw.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import random_frames

from streamdiff import StreamPipeline
from streamdiff.backends import call_graph
from streamdiff.backends.accelerate import accelerate
from streamdiff.backends.graphs import DirectCall
from streamdiff.backends.runner import AcceleratedStream
from streamdiff.backends.similarity_check import SimilarityCheck
from streamdiff.similarity import SimilarityFilter, flatten

THRESHOLD = 0.9


def _pair(make_stream, **settings) -> tuple[Any, AcceleratedStream]:
    settings = {"t_index_list": (30,), "fit": "crop", **settings}
    eager, fast = make_stream(**settings), make_stream(**settings)
    return eager, AcceleratedStream(fast, DirectCall.capture, mode="direct")


def _clip(shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Scenes held for a while: exact repeats (skipped up to the cap), slight changes (skipped at random)
    and cuts to new scenes (processed)."""
    rng = np.random.default_rng(seed)
    frames = []
    for scene in random_frames(3, shape, seed=seed):
        for k in range(7):
            if k in (2, 5):
                jitter = rng.integers(-60, 61, shape)
                frames.append(np.clip(scene.astype(int) + jitter, 0, 255).astype(np.uint8))
            else:
                frames.append(scene)
    return frames


def _frame(stream: Any, frame: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """A frame's output, whether the filter skipped it, and the similarity it saw."""
    skipped = stream.stats.skipped
    out = stream.img2img(frame)
    return out, stream.stats.skipped > skipped, stream.stats.last_similarity


def _decision(frame: tuple[np.ndarray, bool, float]) -> tuple[bool, float | None]:
    """Skipped, and the similarity (None before the filter saw any: nan, which equals nothing)."""
    return frame[1], None if math.isnan(frame[2]) else frame[2]


def _same(eager: Any, fast: AcceleratedStream, frames: list[np.ndarray]) -> list[tuple[bool, float]]:
    """Feed both streams; every frame must agree. Returns the decisions (skipped, similarity)."""
    decisions = []
    for k, frame in enumerate(frames):
        want, got = _frame(eager, frame), _frame(fast, frame)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"frame {k}")
        assert _decision(got) == _decision(want), f"frame {k}"
        decisions.append(want[1:])
    assert fast.stats == eager.stats
    return decisions


def _count_eager_checks(stream: AcceleratedStream) -> list[int]:
    """Count the filter's eager should_skip calls: the runner uses them only for frames it does not replay."""
    calls = [0]
    flt = stream.pipe.similarity_filter
    assert flt is not None
    eager_check = flt.should_skip

    def counted(frame: torch.Tensor) -> bool:
        calls[0] += 1
        return eager_check(frame)

    flt.should_skip = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("frame_buffer_size", [1, 2])
def test_captured_check_takes_the_eager_filters_decisions(make_stream, frame_buffer_size):
    eager, fast = _pair(make_stream, similarity_threshold=THRESHOLD, similarity_max_skip=3,
                        frame_buffer_size=frame_buffer_size)
    shape = (frame_buffer_size, 64, 64, 3) if frame_buffer_size > 1 else (64, 64, 3)
    eager_checks = _count_eager_checks(fast)
    decisions = _same(eager, fast, _clip(shape))
    skips = [skipped for skipped, _ in decisions]
    assert 0 < sum(skips) < len(skips) - 3
    assert any(THRESHOLD < s < 1.0 for _, s in decisions)  # some decisions were random draws, not certainties
    assert eager_checks[0] == 2  # the frames that warmed the stream and captured its step; the check did the rest
    assert fast.captured == [f"img2img of {frame_buffer_size} x 64x64 uint8 frames"]


def test_a_new_input_size_continues_from_the_same_previous_frame(make_stream):
    """The new size's first frame takes the eager filter, the next ones its own check: one filter state."""
    eager, fast = _pair(make_stream, similarity_threshold=THRESHOLD, similarity_max_skip=4)
    small = _clip((64, 64, 3))[:10]
    large = [np.asarray(np.kron(f, np.ones((2, 2, 1), np.uint8))) for f in small]  # the same scenes, 128x128
    decisions = _same(eager, fast, small[:5] + large + small[5:])
    assert any(skipped for skipped, _ in decisions) and not all(skipped for skipped, _ in decisions)
    assert len(fast.captured) == 2


def test_switching_the_filter_on_mid_stream_and_resetting_agree(make_stream):
    eager, fast = _pair(make_stream)
    clip = _clip((64, 64, 3), seed=1)
    decisions = _same(eager, fast, clip[:4])  # captured with the filter off: no check yet
    assert not any(skipped for skipped, _ in decisions)
    for stream in (eager, fast):
        stream.set_similarity_filter(THRESHOLD, max_skip=2)
    decisions += _same(eager, fast, clip[4:10])
    for stream in (eager, fast):
        stream.reset()
    decisions += _same(eager, fast, clip[10:15])  # the first frame after a reset runs the ordinary way
    for stream in (eager, fast):
        stream.set_similarity_filter(THRESHOLD, max_skip=5)  # a new filter: no previous frame, a fresh generator
    decisions += _same(eager, fast, clip[15:])
    for stream in (eager, fast):
        stream.set_similarity_filter(None)
    assert not any(skipped for skipped, _ in _same(eager, fast, clip[:3]))
    assert any(skipped for skipped, _ in decisions) and sum(not skipped for skipped, _ in decisions) > 4


def test_a_check_is_not_captured_while_a_compilation_holds_captures(make_stream):
    """The filter switched on while another stream compiles: its frames measure directly, decide as the eager
    filter, and the check is captured at the first filtered frame after the hold."""
    captures = []

    def counted(step, state):
        captures.append(step)
        return DirectCall.capture(step, state)

    eager = make_stream(t_index_list=(30,), fit="crop")
    fast = AcceleratedStream(make_stream(t_index_list=(30,), fit="crop"), counted, mode="direct")
    clip = _clip((64, 64, 3), seed=2)
    _same(eager, fast, clip[:3])
    assert len(captures) == 1  # the step, captured with the filter off
    for stream in (eager, fast):
        stream.set_similarity_filter(THRESHOLD, max_skip=2)
    with call_graph.hold_captures():
        held = _same(eager, fast, clip[3:14])
    assert len(captures) == 1
    assert any(skipped for skipped, _ in held) and not all(skipped for skipped, _ in held)
    _same(eager, fast, clip[14:])
    assert len(captures) == 3  # the check's two directions


def test_building_at_start_up_leaves_the_filter_as_a_new_streams(make_stream):
    """build() runs dummy frames through the filter; the stream it leaves decides as a fresh eager one."""
    eager, fast = _pair(make_stream, similarity_threshold=THRESHOLD, similarity_max_skip=3)
    fast.build()
    assert fast.captured == ["img2img of 1 x 64x64 uint8 frames"]
    eager_checks = _count_eager_checks(fast)
    decisions = _same(eager, fast, _clip((64, 64, 3), seed=2))
    assert any(skipped for skipped, _ in decisions) and not all(skipped for skipped, _ in decisions)
    assert eager_checks[0] == 1  # the first frame after the restart; the captured step and check did the rest


def test_the_check_measures_the_cosine_the_eager_filter_computes(make_stream):
    pipe = make_stream()
    frames = [torch.from_numpy(f)[None] for f in random_frames(2, (64, 64, 3))]
    buffer = frames[0].clone()
    check = SimilarityCheck.capture(pipe, buffer, DirectCall.capture)
    flt, reference = SimilarityFilter(THRESHOLD), SimilarityFilter(THRESHOLD)
    assert check.measure(flt) is None  # nothing to compare with yet
    check.remember(flt)
    assert flt.previous is check.previous
    reference.should_skip(pipe.device_pixels(frames[0]))
    buffer.copy_(frames[1])
    cosine = check.measure(flt)
    expected = torch.nn.functional.cosine_similarity(flatten(pipe.device_pixels(frames[0])),
                                                     flatten(pipe.device_pixels(frames[1])), dim=0, eps=1e-6)
    assert cosine == float(expected)
    reference.should_skip(pipe.device_pixels(frames[1]))
    assert cosine == reference.last_similarity


def test_should_skip_is_decide_on_the_eager_cosine():
    """The split keeps should_skip's decisions: the same draws in the same order."""
    g = torch.Generator().manual_seed(2)
    base = torch.rand(1, 3, 8, 8, generator=g)
    inputs = [base + 0.3 * torch.rand(1, 3, 8, 8, generator=g) * (k % 3 == 0) for k in range(40)]
    whole, split = SimilarityFilter(0.8, max_skip=3, seed=4), SimilarityFilter(0.8, max_skip=3, seed=4)
    decisions = []
    for frame in inputs:
        flat = flatten(frame)
        previous = split.previous
        cosine = None if previous is None else float(torch.nn.functional.cosine_similarity(previous, flat, dim=0,
                                                                                          eps=1e-6))
        skip = split.decide(cosine)
        if not skip:
            split.remember(flat.clone())
        assert whole.should_skip(frame) == skip
        assert whole.consecutive_skips == split.consecutive_skips
        decisions.append(skip)
    assert any(decisions) and not all(decisions)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_captured_check_decides_as_the_eager_filter_on_cuda(_tiny_cache):
    """Real CUDA graphs: the same decisions and similarities; outputs within the graph tests' tolerance."""

    def stream() -> StreamPipeline:
        pipe = StreamPipeline.from_diffusers(copy.deepcopy(_tiny_cache["taesd"]), device="cuda", dtype="float16",
                                             seed=3, width=64, height=64, fit="crop", t_index_list=(30,),
                                             similarity_threshold=THRESHOLD, similarity_max_skip=3)
        pipe.prepare("a red fox", negative_prompt="blurry")
        return pipe

    eager, (fast, report) = stream(), accelerate(stream(), "graphs")
    assert report.mode == "graphs"
    decisions = []
    for k, frame in enumerate(_clip((64, 64, 3))):
        want, got = _frame(eager, frame), _frame(fast, frame)
        assert _decision(got) == _decision(want), f"frame {k}"
        assert np.abs(got[0].astype(int) - want[0].astype(int)).max() <= 3, f"frame {k}"
        decisions.append(want[1])
    assert any(decisions) and not all(decisions)
    assert fast.stats.skipped == eager.stats.skipped
