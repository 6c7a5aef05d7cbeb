"""A running stream's number of denoising steps changed live (set_steps), on tiny random components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdiff import StreamPipeline, temporal

SIZE = 64
PROMPT, NEGATIVE = "a lighthouse at dusk", "fog"


def make(pipe, prompt: str = PROMPT, **settings) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "device": "cpu", "seed": 4, **settings}
    stream = StreamPipeline.from_diffusers(pipe, **settings)
    stream.prepare(prompt, negative_prompt=NEGATIVE)
    return stream


def frames(count: int, batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(batch, 3, SIZE, SIZE, generator=g) for _ in range(count)]


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
@pytest.mark.parametrize("old,new,indices", [((0,), 2, (0, 25)), ((10, 30), 1, (10,)), ((20, 35), 3, (20, 30, 40))],
                         ids=["1-to-2", "2-to-1", "2-to-3"])
def test_a_new_step_count_continues_as_a_new_stream_would(tiny_pipe_factory, cfg, old, new, indices):
    """After set_steps the outputs are those of a stream built with the new indices, the seed and prompts of the
    moment (both changed live before), fed the same frames from there on."""
    inputs = frames(7)
    settings = {"cfg_type": cfg, "guidance_scale": 1.5}
    live = make(tiny_pipe_factory(), t_index_list=old, **settings)
    for frame in inputs[:3]:
        live.img2img(frame)
    live.set_seed(9)
    live.update_prompt("a red barn", negative_prompt="rain")
    live.set_steps(new)
    assert live.config.t_index_list == indices and live.config.denoising_steps == new
    assert live.config.latency_frames == new - 1
    fresh = make(tiny_pipe_factory(), "a red barn", t_index_list=indices, **{**settings, "seed": 9})
    fresh.update_prompt("a red barn", negative_prompt="rain")
    for k, frame in enumerate(inputs[3:]):
        torch.testing.assert_close(live.img2img(frame), fresh.img2img(frame), rtol=0, atol=0, msg=f"frame {k + 3}")


def test_several_frames_per_call_and_shared_noise_follow_the_new_count(tiny_pipe_factory):
    inputs = frames(5, batch=2)
    settings = {"frame_buffer_size": 2, "shared_noise": True}
    live = make(tiny_pipe_factory(), t_index_list=(0,), **settings)
    live.img2img(inputs[0])
    live.set_steps(2)
    fresh = make(tiny_pipe_factory(), t_index_list=(0, 25), **settings)
    for frame in inputs[1:]:
        torch.testing.assert_close(live.img2img(frame), fresh.img2img(frame), rtol=0, atol=0)
    assert live.flush() and len(live.flush()) == 1


def test_txt2img_and_steps_run_one_after_another_follow_the_new_count(tiny_pipe_factory):
    live = make(tiny_pipe_factory(), t_index_list=(0,))
    live.txt2img("pt")
    live.set_steps(3)
    fresh = make(tiny_pipe_factory(), t_index_list=(0, 16, 33))
    for _ in range(3):
        torch.testing.assert_close(live.txt2img("pt"), fresh.txt2img("pt"), rtol=0, atol=0)
    sequential = make(tiny_pipe_factory(), t_index_list=(10,), use_denoising_batch=False)
    sequential.set_steps(2)
    fresh = make(tiny_pipe_factory(), t_index_list=(10, 30), use_denoising_batch=False)
    picture = frames(1)[0]
    torch.testing.assert_close(sequential.img2img(picture), fresh.img2img(picture), rtol=0, atol=0)


def test_the_temporal_state_carries_over_the_change(tiny_pipe_factory):
    """EMA and latent feedback keep the pictures of before the change, as they do over a strength change."""
    inputs = frames(3)
    live = make(tiny_pipe_factory(), t_index_list=(10,), ema=0.5)
    before = live.img2img(inputs[0])
    live.set_steps(2)
    fresh = make(tiny_pipe_factory(), t_index_list=(10, 30))
    expected = temporal.ema(before, fresh.img2img(inputs[1]), 0.5)
    torch.testing.assert_close(live.img2img(inputs[1]), expected, rtol=0, atol=0)


def test_going_back_restores_the_indices_the_stream_had(tiny_pipe_factory):
    """LCM's default (32, 45) is not evenly spaced: back at two steps the stream has it again, unless the
    strength moved meanwhile."""
    stream = make(tiny_pipe_factory(), t_index_list=(32, 45))
    stream.set_steps(3)
    assert stream.config.t_index_list == (32, 38, 44)
    stream.set_steps(1)
    assert stream.config.t_index_list == (32,)
    stream.set_steps(2)
    assert stream.config.t_index_list == (32, 45)
    stream.set_steps(1)
    stream.set_strength(0.5)
    stream.set_steps(2)
    assert stream.config.t_index_list == (25, 37)


def test_the_same_count_changes_nothing(tiny_pipe_factory):
    inputs = frames(4)
    stream = make(tiny_pipe_factory(), t_index_list=(10, 30))
    untouched = make(tiny_pipe_factory(), t_index_list=(10, 30))
    for frame in inputs[:2]:
        stream.img2img(frame)
        untouched.img2img(frame)
    stream.set_steps(2)
    for frame in inputs[2:]:
        torch.testing.assert_close(stream.img2img(frame), untouched.img2img(frame), rtol=0, atol=0)


def test_a_prompt_transition_goes_on_across_the_change(tiny_pipe_factory):
    picture = np.full((SIZE, SIZE, 3), 90, np.uint8)
    live = make(tiny_pipe_factory(), t_index_list=(0,))
    live.img2img(picture)
    live.update_prompt("a red barn", transition_frames=4)
    live.img2img(picture)
    live.set_steps(2)
    assert live.prompt_changing
    for _ in range(3):
        live.img2img(picture)
    assert not live.prompt_changing
    fresh = make(tiny_pipe_factory(), "a red barn", t_index_list=(0, 25))
    fresh.img2img(picture)
    torch.testing.assert_close(live.img2img(picture, "pt"), fresh.img2img(picture, "pt"), rtol=0, atol=0)
