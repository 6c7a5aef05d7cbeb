"""Streams over the tiny components, in pairs: one run the ordinary way, one through an accelerated runner."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from streamdiff import StreamPipeline

SIZE = 64


@pytest.fixture
def make_stream(_tiny_cache):
    """A prepared CPU stream over a private copy of the tiny components; settings as StreamConfig fields."""

    def make(prompt: str = "a red fox", **settings) -> StreamPipeline:
        settings.setdefault("width", SIZE)
        settings.setdefault("height", SIZE)
        pipe = StreamPipeline.from_diffusers(copy.deepcopy(_tiny_cache["taesd"]), device="cpu", seed=3, **settings)
        pipe.prepare(prompt, negative_prompt="blurry")
        return pipe

    return make


def random_frames(count: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
