"""The runner's store of captured steps: which shapes it keeps, and when it forgets them."""

from __future__ import annotations

import torch

from streamdiff.backends.step_cache import Step, StepCache, StepKey

BUFFERS = (1, 2, 3)  # the pipeline's buffer addresses the steps were captured over


def key(width: int) -> StepKey:
    return StepKey("img2img", (1, 64, width, 3), torch.uint8, True)


def step(name: str) -> Step:
    return Step(buffers=name, record=name, out=None)  # type: ignore[arg-type]  plain markers stand in for buffers


def filled(*widths: int, max_shapes: int = 3) -> tuple[StepCache, list[str]]:
    said: list[str] = []
    cache = StepCache(max_shapes, said.append)
    for width in widths:
        assert cache.lookup(key(width), BUFFERS) is None
        cache.make_room()
        cache.add(key(width), step(f"w{width}"))
    return cache, said


def test_the_step_used_longest_ago_leaves_first():
    cache, _ = filled(64, 72, 80)
    assert cache.lookup(key(64), BUFFERS).record == "w64"  # 64 is now the newest used
    cache.make_room()
    cache.add(key(88), step("w88"))
    assert key(72) not in cache
    assert [cache.lookup(key(w), BUFFERS) is not None for w in (64, 80, 88)] == [True, True, True]
    assert cache.described() == [key(w).describe() for w in (64, 80, 88)]


def test_new_pipeline_buffers_drop_every_step_and_say_so():
    cache, said = filled(64, 72)
    assert cache.lookup(key(64), (4, 5, 6)) is None
    assert key(72) not in cache and cache.described() == []
    assert said == ["the stream has new buffers (prepared again, or another step count): steps captured again"]


def test_a_shape_kept_uncaptured_is_known_but_never_replayed():
    cache, _ = filled(64, 72)
    cache.keep_uncaptured(key(80))
    assert key(80) in cache and key(64) not in cache  # the other steps' memory was given up
    assert cache.lookup(key(80), BUFFERS) is None
    assert cache.described() == []
