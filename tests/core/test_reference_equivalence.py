"""img2img equals the reference StreamDiffusion 0.1.1 from frame n onward, to float32 tolerance on CPU.

The reference is driven through its encode_image / predict_x0_batch / decode_image (its __call__
needs CUDA). Its first n-1 outputs come from all-zero latents, a fault we do not copy, so only
frames from n-1 (0-based) on are compared.
"""

from __future__ import annotations

import pytest
import torch

from streamdiff import StreamPipeline

reference = pytest.importorskip("streamdiffusion.pipeline", reason="pip install --no-deps streamdiffusion==0.1.1")

SIZE = 64
FRAMES = 5


def _frames(count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, SIZE, SIZE, generator=g) for _ in range(count)]


def _reference_outputs(pipe, frames, *, t_index, cfg, add_noise, guidance, seed):
    ref = reference.StreamDiffusion(pipe, t_index_list=list(t_index), torch_dtype=torch.float32, width=SIZE,
                                    height=SIZE, do_add_noise=add_noise, cfg_type=cfg)
    ref.prepare("a red fox in snow", negative_prompt="blurry, dark", num_inference_steps=50,
                guidance_scale=guidance, delta=0.8, generator=torch.Generator(), seed=seed)
    outs = []
    with torch.no_grad():
        for frame in frames:
            latent = ref.encode_image(ref.image_processor.preprocess(frame, SIZE, SIZE))
            decoded = ref.decode_image(ref.predict_x0_batch(latent))
            outs.append((decoded / 2 + 0.5).clamp(0, 1))
    return outs


def _our_outputs(pipe, frames, *, t_index, cfg, add_noise, guidance, seed):
    ours = StreamPipeline.from_diffusers(pipe, t_index_list=t_index, width=SIZE, height=SIZE, do_add_noise=add_noise,
                                         cfg_type=cfg, guidance_scale=guidance, delta=0.8, seed=seed, device="cpu")
    ours.prepare("a red fox in snow", negative_prompt="blurry, dark")
    return [ours.img2img(frame) for frame in frames]


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
@pytest.mark.parametrize("t_index", [(0,), (32, 45), (10, 25, 40)])
@pytest.mark.parametrize("add_noise", [True, False])
def test_matches_reference_from_frame_n(tiny_pipe_factory, cfg, t_index, add_noise):
    frames = _frames(FRAMES)
    kwargs = dict(t_index=t_index, cfg=cfg, add_noise=add_noise, guidance=1.4, seed=3)
    expected = _reference_outputs(tiny_pipe_factory(), frames, **kwargs)
    got = _our_outputs(tiny_pipe_factory(), frames, **kwargs)
    n = len(t_index)
    for k in range(n - 1, FRAMES):
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-5, msg=f"frame {k}")


def test_first_outputs_show_the_first_frame_not_zero_latents(tiny_pipe_factory):
    """The reference's first output denoises an all-zero latent, so it ignores the input picture;
    ours is filled from the first frame, so a different first frame gives a different first output."""
    kwargs = dict(t_index=(10, 25, 40), cfg="none", add_noise=True, guidance=1.0, seed=3)
    a, b = _frames(1, seed=1), _frames(1, seed=2)
    ref_a = _reference_outputs(tiny_pipe_factory(), a, **kwargs)[0]
    ref_b = _reference_outputs(tiny_pipe_factory(), b, **kwargs)[0]
    torch.testing.assert_close(ref_a, ref_b)
    ours_a = _our_outputs(tiny_pipe_factory(), a, **kwargs)[0]
    ours_b = _our_outputs(tiny_pipe_factory(), b, **kwargs)[0]
    assert (ours_a - ours_b).abs().max() > 1e-3


def test_full_vae_matches_reference_with_posterior_mean(tiny_pipe_factory, monkeypatch):
    """With a KL VAE we encode to the posterior mean (sampling it would add flicker); the oracle is
    switched to the mean too, so the rest of the math is compared exactly."""
    monkeypatch.setattr(reference, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode())
    frames = _frames(4)
    kwargs = dict(t_index=(32, 45), cfg="self", add_noise=True, guidance=1.4, seed=5)
    expected = _reference_outputs(tiny_pipe_factory(full_vae=True), frames, **kwargs)
    got = _our_outputs(tiny_pipe_factory(full_vae=True), frames, **kwargs)
    for k in range(1, 4):
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-5)
