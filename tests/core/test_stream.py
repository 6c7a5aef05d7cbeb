"""Engine behaviour on tiny random components: stream batch, guidance modes, prompts, seeds, live strength,
outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from denoisers import RecordingDenoiser

from streamdiff import StreamPipeline

SIZE = 64


def make(pipe, **settings) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "device": "cpu", "seed": 4, **settings}
    stream = StreamPipeline.from_diffusers(pipe, **settings)
    stream.prepare("a lighthouse at dusk", negative_prompt="fog")
    return stream


def frames(count: int, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, SIZE, SIZE, generator=g) for _ in range(count)]


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
def test_stream_batch_equals_step_by_step(tiny_pipe_factory, cfg):
    """Output k of the stream batch is frame k-(n-1) denoised step by step through the same steps and noise."""
    t_index = (15, 30, 45)
    inputs = frames(5)
    batched = make(tiny_pipe_factory(), t_index_list=t_index, cfg_type=cfg, guidance_scale=1.5)
    sequential = make(tiny_pipe_factory(), t_index_list=t_index, cfg_type=cfg, guidance_scale=1.5,
                      use_denoising_batch=False)
    outs = [batched.img2img(f) for f in inputs]
    for k in range(2, 5):
        torch.testing.assert_close(outs[k], sequential.img2img(inputs[k - 2]), rtol=1e-5, atol=1e-5)


def test_frame_buffer_with_several_steps(tiny_pipe_factory):
    """F frames per call with n steps: each of the F outputs equals that frame run alone."""
    t_index = (20, 40)
    batch_inputs = frames(3, batch=2)
    buffered = make(tiny_pipe_factory(), t_index_list=t_index, frame_buffer_size=2, use_denoising_batch=True)
    outs = [buffered.img2img(f) for f in batch_inputs]
    assert outs[0].shape == (2, 3, SIZE, SIZE)
    # A lone stream with the same per-frame noise: frames at slot j use noise j of the buffered stream.
    for j in range(2):
        lone = make(tiny_pipe_factory(), t_index_list=t_index, use_denoising_batch=False)
        noise = buffered._batch.noise
        lone._batch.set_noise(noise[[j, 2 + j]])
        torch.testing.assert_close(outs[2][j : j + 1], lone.img2img(batch_inputs[1][j : j + 1]), rtol=1e-5, atol=1e-5)


def test_latency_and_flush_give_every_frame_in_order(tiny_pipe_factory):
    stream = make(tiny_pipe_factory(), t_index_list=(10, 25, 40))
    sequential = make(tiny_pipe_factory(), t_index_list=(10, 25, 40), use_denoising_batch=False)
    inputs = frames(4)
    outs = [stream.img2img(f) for f in inputs]
    tail = stream.flush()
    assert stream.config.latency_frames == 2 and len(tail) == 2
    aligned = outs[2:] + tail
    for frame, out in zip(inputs, aligned):
        torch.testing.assert_close(out, sequential.img2img(frame), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["assigned", "set_backend"])
def test_a_denoiser_handed_to_a_running_stream_runs_its_next_frames(tiny_pipe_factory, how):
    """`stream.denoiser = d` does what set_backend(denoiser=d) does: the stream batch calls d from the next
    frame on, conditioned first; the pictures go on as they would have."""
    settings = {"t_index_list": (10, 30), "cfg_type": "initialize", "guidance_scale": 1.4}
    inputs = frames(3)
    plain, stream = make(tiny_pipe_factory(), **settings), make(tiny_pipe_factory(), **settings)
    torch.testing.assert_close(stream.img2img(inputs[0]), plain.img2img(inputs[0]))
    new = RecordingDenoiser(stream.components.unet)
    if how == "assigned":
        stream.denoiser = new
    else:
        stream.set_backend(denoiser=new)
    assert stream.denoiser is new and new.log == ["condition"]
    for frame in inputs[1:]:
        torch.testing.assert_close(stream.img2img(frame), plain.img2img(frame))
    assert new.log == ["condition", "call", "call"]


def test_one_step_equals_diffusers_img2img(tiny_pipe_factory):
    from diffusers import StableDiffusionImg2ImgPipeline

    image = frames(1, seed=9)[0]
    # LCM's 1-step schedule is [999]; its 2-step one is [999, 499], of which strength 0.5 keeps 499.
    for strength, steps, t_index in ((1.0, 1, (0,)), (0.5, 2, (25,))):
        ref_pipe = StableDiffusionImg2ImgPipeline(**tiny_pipe_factory().components)
        expected = ref_pipe("a lighthouse at dusk", image=image, strength=strength, num_inference_steps=steps,
                            guidance_scale=1.0, generator=torch.Generator().manual_seed(4), output_type="pt").images
        stream = make(tiny_pipe_factory(), t_index_list=t_index)
        torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)


def test_guidance_modes_change_the_picture(tiny_pipe_factory):
    image = frames(1)[0]
    results = {}
    for cfg in ("none", "full", "self", "initialize"):
        stream = make(tiny_pipe_factory(), t_index_list=(20, 40), cfg_type=cfg, guidance_scale=3.0)
        for _ in range(2):
            out = stream.img2img(image)
        results[cfg] = out
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (results[a] - results[b]).abs().max() > 1e-4, (a, b)


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
def test_prompt_changes_at_runtime_for_every_mode(tiny_pipe_factory, cfg):
    image = frames(1)[0]
    changed = make(tiny_pipe_factory(), t_index_list=(30,), cfg_type=cfg, guidance_scale=2.0)
    changed.update_prompt("a red balloon", negative_prompt="grey")
    direct = StreamPipeline.from_diffusers(tiny_pipe_factory(), t_index_list=(30,), cfg_type=cfg, guidance_scale=2.0,
                                           width=SIZE, height=SIZE, device="cpu", seed=4)
    direct.prepare("a red balloon", negative_prompt="grey")
    torch.testing.assert_close(changed.img2img(image), direct.img2img(image))
    stale = make(tiny_pipe_factory(), t_index_list=(30,), cfg_type=cfg, guidance_scale=2.0)
    assert (stale.img2img(image) - direct.img2img(image)).abs().max() > 1e-5


def test_negative_prompt_matters_only_with_guidance(tiny_pipe_factory):
    image = frames(1)[0]
    outs = {}
    for cfg in ("full", "none"):
        a = make(tiny_pipe_factory(), t_index_list=(30,), cfg_type=cfg, guidance_scale=2.0)
        b = make(tiny_pipe_factory(), t_index_list=(30,), cfg_type=cfg, guidance_scale=2.0)
        b.update_prompt("a lighthouse at dusk", negative_prompt="bright sunshine")
        outs[cfg] = float((a.img2img(image) - b.img2img(image)).abs().max())
    assert outs["full"] > 1e-5 and outs["none"] == 0.0


def test_prompt_transition_moves_smoothly_to_the_new_prompt(tiny_pipe_factory):
    image = frames(1)[0]
    stream = make(tiny_pipe_factory(), t_index_list=(30,))
    target = make(tiny_pipe_factory(), t_index_list=(30,))
    target.update_prompt("a red balloon")
    start_out, end_out = stream.img2img(image), target.img2img(image)
    stream.update_prompt("a red balloon", transition_frames=4)
    steps = [stream.img2img(image) for _ in range(4)]
    distances = [float((s - end_out).abs().mean()) for s in steps]
    assert distances[0] > distances[1] > distances[2] > distances[3]
    torch.testing.assert_close(steps[-1], end_out)
    assert float((steps[0] - start_out).abs().mean()) < float((start_out - end_out).abs().mean())


@pytest.mark.parametrize("mode", ["linear", "slerp"])
def test_prompt_blend_endpoints_equal_single_prompts(tiny_pipe_factory, mode):
    stream = make(tiny_pipe_factory(), prompt_blend=mode)
    single = stream.prompts.encode("a red balloon")
    other = stream.prompts.encode("a blue whale")
    torch.testing.assert_close(stream.prompts.encode_weighted([("a red balloon", 1.0), ("a blue whale", 0.0)], mode),
                               single)
    torch.testing.assert_close(stream.prompts.encode_weighted([("a red balloon", 0.0), ("a blue whale", 2.0)], mode),
                               other)
    middle = stream.prompts.encode_weighted([("a red balloon", 1.0), ("a blue whale", 1.0)], mode)
    assert (middle - single).abs().max() > 1e-4 and (middle - other).abs().max() > 1e-4


def test_seed_blend_endpoints_equal_single_seeds(tiny_pipe_factory):
    image = frames(1)[0]
    stream = make(tiny_pipe_factory(), t_index_list=(30,))
    seven = make(tiny_pipe_factory(), t_index_list=(30,), seed=7)
    stream.set_seed([(7, 1.0), (11, 0.0)])
    torch.testing.assert_close(stream.img2img(image), seven.img2img(image))
    stream.set_seed([(7, 0.5), (11, 0.5)])
    mixed_noise = stream._batch.noise
    assert abs(float(mixed_noise.std()) - 1.0) < 0.1  # variance-preserving blend


def test_same_seed_same_stream_and_fixed_noise_shape(tiny_pipe_factory):
    a = make(tiny_pipe_factory(), t_index_list=(20, 40), frame_buffer_size=2)
    b = make(tiny_pipe_factory(), t_index_list=(20, 40), frame_buffer_size=2)
    expected = torch.randn((4, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a._batch.noise, expected, rtol=0, atol=0)
    inputs = frames(2, batch=2)
    for f in inputs:
        torch.testing.assert_close(a.img2img(f), b.img2img(f), rtol=0, atol=0)


def test_shared_noise_gives_the_frames_of_a_call_the_noise_of_one_frame(tiny_pipe_factory):
    # Step-major slots: frames 0-2 at step 0, frames 0-2 at step 1. Each step's noise is the one a
    # single-frame stream with the same seed draws, F times over; after a new seed too.
    shared = make(tiny_pipe_factory(), t_index_list=(20, 40), frame_buffer_size=3, shared_noise=True)
    single = make(tiny_pipe_factory(), t_index_list=(20, 40))
    for seed in (None, 9):
        if seed is not None:
            shared.set_seed(seed)
            single.set_seed(seed)
        noise = shared._batch.noise
        assert noise.shape == (6, 4, SIZE // 8, SIZE // 8)
        torch.testing.assert_close(noise, single._batch.noise.repeat_interleave(3, dim=0), rtol=0, atol=0)
    # With one step, three frames per call are the same pictures as one frame per call.
    one_step = make(tiny_pipe_factory(), t_index_list=(30,), frame_buffer_size=3, shared_noise=True)
    one_by_one = make(tiny_pipe_factory(), t_index_list=(30,))
    inputs = frames(3)
    together = one_step.img2img(torch.cat(inputs))
    torch.testing.assert_close(together, torch.cat([one_by_one.img2img(f) for f in inputs]), atol=1e-4, rtol=0)


def test_txt2img_is_seeded(tiny_pipe_factory):
    a = make(tiny_pipe_factory(), t_index_list=(0,))
    b = make(tiny_pipe_factory(), t_index_list=(0,), seed=5)
    pic_a = a.txt2img(output_type="np")
    assert pic_a.shape == (SIZE, SIZE, 3) and pic_a.dtype == np.uint8
    assert np.array_equal(pic_a, a.txt2img(output_type="np"))
    assert not np.array_equal(pic_a, b.txt2img(output_type="np"))


def test_feedback_and_ema(tiny_pipe_factory):
    inputs = frames(3)
    plain = make(tiny_pipe_factory(), t_index_list=(30,))
    smooth = make(tiny_pipe_factory(), t_index_list=(30,))
    smooth.set_temporal(ema=0.5)
    p = [plain.img2img(f) for f in inputs]
    s = [smooth.img2img(f) for f in inputs]
    torch.testing.assert_close(s[0], p[0])
    torch.testing.assert_close(s[1], 0.5 * s[0] + 0.5 * p[1])
    fed = make(tiny_pipe_factory(), t_index_list=(30,))
    fed.set_temporal(feedback=0.4)
    f = [fed.img2img(x) for x in inputs]
    torch.testing.assert_close(f[0], p[0])
    assert (f[1] - p[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="feedback must be in"):
        fed.set_temporal(feedback=1.2)


def test_output_kinds_follow_the_input_or_the_caller(tiny_pipe_factory):
    from PIL import Image

    stream = make(tiny_pipe_factory(), t_index_list=(30,))
    array = (frames(1)[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out_np = stream.img2img(array)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (SIZE, SIZE, 3) and out_np.dtype == np.uint8
    assert isinstance(stream.img2img(Image.fromarray(array)), Image.Image)
    as_tensor = stream.img2img(array, output_type="pt")
    assert as_tensor.shape == (1, 3, SIZE, SIZE) and 0.0 <= float(as_tensor.min()) <= float(as_tensor.max()) <= 1.0
    # uint8 numpy and the same picture as a float tensor give the same result.
    same = make(tiny_pipe_factory(), t_index_list=(30,)).img2img(torch.from_numpy(array).permute(2, 0, 1)[None] / 255.0)
    torch.testing.assert_close(as_tensor, make(tiny_pipe_factory(), t_index_list=(30,)).img2img(array, "pt"))
    assert same.shape == as_tensor.shape


def test_other_sizes_are_adapted_only_when_asked(tiny_pipe_factory):
    big = np.zeros((96, 128, 3), dtype=np.uint8)
    exact = make(tiny_pipe_factory(), t_index_list=(30,))
    with pytest.raises(ValueError, match="expected a 64x64 picture"):
        exact.img2img(big)
    for fit in ("crop", "pad", "stretch"):
        assert make(tiny_pipe_factory(), t_index_list=(30,), fit=fit).img2img(big).shape == (SIZE, SIZE, 3)


def test_non_square_sizes(tiny_pipe_factory):
    stream = StreamPipeline.from_diffusers(tiny_pipe_factory(), width=96, height=64, device="cpu", t_index_list=(30,))
    stream.prepare("x")
    assert stream.img2img(np.zeros((64, 96, 3), np.uint8)).shape == (64, 96, 3)


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
@pytest.mark.parametrize("old,new", [((10,), (30,)), ((10, 30), (20, 45))], ids=["1-step", "2-step"])
def test_a_new_schedule_continues_as_a_new_stream_would(tiny_pipe_factory, cfg, old, new):
    """After set_t_index_list the stream's outputs are those of a stream built with the new indices and fed
    the same frames from there on (no feedback or EMA, which carry pictures across the change on purpose)."""
    inputs = frames(7)
    settings = {"cfg_type": cfg, "guidance_scale": 1.5}
    live = make(tiny_pipe_factory(), t_index_list=old, **settings)
    kept = make(tiny_pipe_factory(), t_index_list=old, **settings)
    for frame in inputs[:3]:
        torch.testing.assert_close(live.img2img(frame), kept.img2img(frame), rtol=0, atol=0)
    live.set_t_index_list(new)
    assert live.config.t_index_list == new
    fresh = make(tiny_pipe_factory(), t_index_list=new, **settings)
    for k, frame in enumerate(inputs[3:]):
        out = live.img2img(frame)
        torch.testing.assert_close(out, fresh.img2img(frame), rtol=0, atol=0, msg=f"frame {k + 3}")
        assert not torch.equal(out, kept.img2img(frame)), f"frame {k + 3} ignored the new schedule"


def test_strength_maps_to_the_first_index_and_keeps_the_steps(tiny_pipe_factory):
    stream = make(tiny_pipe_factory(), t_index_list=(0,))
    assert stream.strength == 1.0
    stream.set_strength(0.5)
    assert stream.config.t_index_list == (25,) and stream.strength == 0.5
    two = make(tiny_pipe_factory(), strength=0.8, steps=2)
    two.set_strength(0.4)
    assert two.config.t_index_list == (30, 40) and two.strength == pytest.approx(0.4)
    fresh = make(tiny_pipe_factory(), strength=0.4, steps=2)
    picture = frames(1)[0]
    torch.testing.assert_close(two.img2img(picture), fresh.img2img(picture), rtol=0, atol=0)


def test_txt2img_follows_the_new_schedule(tiny_pipe_factory):
    live = make(tiny_pipe_factory(), t_index_list=(0,))
    live.txt2img("pt")
    live.set_strength(0.6)
    fresh = make(tiny_pipe_factory(), t_index_list=(20,))
    torch.testing.assert_close(live.txt2img("pt"), fresh.txt2img("pt"), rtol=0, atol=0)


@pytest.mark.parametrize("change,message", [
    (lambda s: s.set_t_index_list((10, 30)), "keeps the stream.s 1 step"),
    (lambda s: s.set_t_index_list((60,)), r"t_index_list entries must be in \[0, 49\]"),
    (lambda s: s.set_strength(0.0), r"strength must be in \(0, 1\]"),
    (lambda s: s.set_strength(1.5), r"strength must be in \(0, 1\]"),
    (lambda s: s.set_steps(0), "steps must be at least 1"),
    (lambda s: s.set_steps(2.0), "steps must be a whole number"),
    (lambda s: s.set_steps(True), "steps must be a whole number"),
    (lambda s: s.set_steps(41), "steps=41 does not fit strength=0.8"),
])
def test_a_schedule_that_does_not_fit_is_refused_and_changes_nothing(tiny_pipe_factory, change, message):
    inputs = frames(4)
    stream = make(tiny_pipe_factory(), t_index_list=(10,), cfg_type="self", guidance_scale=1.5)
    untouched = make(tiny_pipe_factory(), t_index_list=(10,), cfg_type="self", guidance_scale=1.5)
    for frame in inputs[:2]:
        stream.img2img(frame)
        untouched.img2img(frame)
    with pytest.raises(ValueError, match=message):
        change(stream)
    assert stream.config == untouched.config
    for frame in inputs[2:]:
        torch.testing.assert_close(stream.img2img(frame), untouched.img2img(frame), rtol=0, atol=0)


def test_several_steps_that_do_not_fit_a_low_strength_are_refused(tiny_pipe_factory):
    stream = make(tiny_pipe_factory(), t_index_list=(10, 20, 30, 40))
    with pytest.raises(ValueError, match="steps=4 does not fit strength=0.05"):
        stream.set_strength(0.05)
    assert stream.config.t_index_list == (10, 20, 30, 40)
