"""Bad input is refused with a message naming what was expected; the similarity filter; blends."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from streamdiff import StreamPipeline
from streamdiff.similarity import SimilarityFilter, skip_probability
from streamdiff.temporal import blend

SIZE = 64


@pytest.fixture
def stream(tiny_pipe):
    s = StreamPipeline.from_diffusers(tiny_pipe, width=SIZE, height=SIZE, device="cpu", t_index_list=(30,))
    s.prepare("a lighthouse")
    return s


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((SIZE, SIZE), np.uint8), "shape (H, W, 3) or (B, H, W, 3)"),
        (np.zeros((SIZE, SIZE, 4), np.uint8), "expected 3 colour channels"),
        (np.zeros((SIZE, SIZE, 3), np.float64), "expected a uint8 numpy array"),
        (torch.zeros(1, 1, SIZE, SIZE), "expected 3 colour channels"),
        (torch.zeros(SIZE, SIZE), "expected a tensor of shape (B, 3, H, W)"),
        (torch.full((1, 3, SIZE, SIZE), float("nan")), "NaN"),
        (torch.full((1, 3, SIZE, SIZE), 2.0), "expected tensor values in [0, 1]"),
        (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8), "expected a float tensor"),
        (torch.zeros(2, 3, SIZE, SIZE), "expected 1 picture(s) per call"),
        ("picture.png", "expected a float tensor (B, 3, H, W)"),
        (np.zeros((SIZE, 40, 3), np.uint8), "expected a 64x64 picture"),
    ],
)
def test_bad_frames_raise_value_errors(stream, bad, words):
    with pytest.raises(ValueError) as info:
        stream.img2img(bad)
    assert words in str(info.value)
    assert stream.stats.frames == 0  # nothing was consumed: the stream is unchanged



def test_read_only_frames_are_read_without_warnings(stream, recwarn):
    frame = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
    writable = stream.img2img(frame.copy())
    stream.reset()
    frame.setflags(write=False)  # as np.frombuffer over a decoder's bytes gives
    assert np.array_equal(stream.img2img(frame), writable)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_size_not_multiple_of_8_and_unknown_cfg(tiny_pipe):
    with pytest.raises(ValueError, match="width must be a positive multiple of 8"):
        StreamPipeline.from_diffusers(tiny_pipe, width=100, height=64, device="cpu")
    with pytest.raises(ValueError, match="cfg_type must be one of"):
        StreamPipeline.from_diffusers(tiny_pipe, cfg_type="double", device="cpu")
    with pytest.raises(ValueError, match=r"t_index_list entries must be in \[0, 3\]"):
        StreamPipeline.from_diffusers(tiny_pipe, t_index_list=(2, 4), num_inference_steps=4, device="cpu")


def test_bad_output_type_and_unprepared_stream(tiny_pipe):
    s = StreamPipeline.from_diffusers(tiny_pipe, width=SIZE, height=SIZE, device="cpu")
    with pytest.raises(RuntimeError, match="call prepare"):
        s.img2img(np.zeros((SIZE, SIZE, 3), np.uint8))
    s.prepare("x")
    with pytest.raises(ValueError, match="output_type must be one of pt, np, pil"):
        s.img2img(np.zeros((SIZE, SIZE, 3), np.uint8), output_type="jpeg")


def test_long_prompt_is_truncated_with_a_warning(stream, caplog):
    long_prompt = " ".join(["zebra"] * 60)
    with caplog.at_level(logging.WARNING, logger="streamdiff.prompts"):
        embeds = stream.prompts.encode(long_prompt)
    assert "truncated" in caplog.text and embeds.shape[1] == 77
    with caplog.at_level(logging.WARNING, logger="streamdiff.prompts"):
        caplog.clear()
        stream.prompts.encode("short zebra")
    assert "truncated" not in caplog.text


def test_prompt_embeddings_are_cached(stream):
    first = stream.prompts.encode("a cached prompt")
    assert stream.prompts.encode("a cached prompt") is first


def test_skip_probability_formula():
    assert skip_probability(0.99, 0.98) == pytest.approx(0.5)
    assert skip_probability(0.5, 0.98) == 0.0
    assert skip_probability(1.0, 0.98) == pytest.approx(1.0)
    assert skip_probability(1.0, 1.0) == 0.0


def test_identical_frames_are_skipped_up_to_the_cap():
    flt = SimilarityFilter(threshold=0.9, max_skip=3, seed=0)
    frame = torch.rand(1, 3, 8, 8)
    decisions = [flt.should_skip(frame) for _ in range(13)]
    # First frame processed, then runs of 3 skips each followed by one processed frame.
    assert decisions == [False] + [True, True, True, False] * 3


def test_changing_frames_are_processed():
    flt = SimilarityFilter(threshold=0.98, max_skip=10, seed=0)
    g = torch.Generator().manual_seed(1)
    decisions = [flt.should_skip(torch.rand(1, 3, 8, 8, generator=g) - 0.5) for _ in range(20)]
    assert not any(decisions)


def test_skip_rate_follows_the_probability():
    """Similarity held at a value with skip probability 0.5: about half of the frames are skipped."""
    flt = SimilarityFilter(threshold=0.5, max_skip=1000, seed=0)
    base = torch.tensor([1.0, 0.0])
    near = torch.tensor([0.75, (1 - 0.75**2) ** 0.5])  # cosine 0.75 -> p = 0.5
    flt.should_skip(base)
    skips = 0
    for _ in range(400):
        skips += flt.should_skip(near)
        flt._previous = base.clone()
    assert 160 < skips < 240


def test_filter_in_the_stream_reports_skips_and_repeats_the_output(tiny_pipe):
    s = StreamPipeline.from_diffusers(tiny_pipe, width=SIZE, height=SIZE, device="cpu", t_index_list=(30,),
                                      similarity_threshold=0.95, similarity_max_skip=2)
    s.prepare("x")
    frame = np.full((SIZE, SIZE, 3), 120, np.uint8)
    outs = [s.img2img(frame) for _ in range(7)]
    assert s.stats.skipped == 4 and s.stats.processed == 3 and s.stats.frames == 7
    assert np.array_equal(outs[1], outs[0])
    s.set_similarity_filter(None)
    s.img2img(frame)
    assert s.stats.processed == 4


def test_camera_blend_endpoints_and_kinds():
    cam = np.full((4, 4, 3), 200, np.uint8)
    ai = np.full((4, 4, 3), 100, np.uint8)
    assert np.array_equal(blend(cam, ai, 0.0), ai) and np.array_equal(blend(cam, ai, 1.0), cam)
    assert int(blend(cam, ai, 0.3)[0, 0, 0]) == 130
    t = blend(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), 0.25)
    assert float(t.mean()) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="one shape"):
        blend(cam, ai[:2], 0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        blend(cam, ai, 1.5)


def test_uint8_blend_without_opencv_gives_the_opencv_pictures(monkeypatch):
    import streamdiff.temporal as temporal

    rng = np.random.default_rng(5)
    cam, ai = rng.integers(0, 256, (2, 32, 48, 3), np.uint8)
    with_opencv = blend(cam, ai, 0.37)
    monkeypatch.setattr(temporal, "_opencv", lambda: None)
    without = blend(cam, ai, 0.37)
    assert without.dtype == np.uint8 and np.abs(without.astype(int) - with_opencv.astype(int)).max() <= 1
    expected = np.clip(np.rint(0.37 * cam + 0.63 * ai), 0, 255)
    assert np.abs(without.astype(int) - expected).max() <= 1
