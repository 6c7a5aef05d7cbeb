"""The eager UNet backend hands the UNet its latents in the UNet's own memory layout."""

from __future__ import annotations

import copy

import torch

from streamdiff.backends.torch import TorchDenoiser


@torch.no_grad()
def test_the_unet_gets_latents_in_its_own_memory_layout(_tiny_cache):
    # A compiled UNet guards on strides: img2img's channels-last latents and txt2img's plain noise must not
    # reach it in two layouts, or a switch between the two compiles it again.
    unet = copy.deepcopy(_tiny_cache["taesd"].unet).eval()
    seen = []
    unet.conv_in.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([999.0, 500.0])
    embeddings = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    denoiser = TorchDenoiser(unet, cache_conditioning=False)
    plain = denoiser(latents, timesteps, embeddings)
    unet.to(memory_format=torch.channels_last)
    from_plain = denoiser(latents, timesteps, embeddings)
    from_channels_last = denoiser(latents.contiguous(memory_format=torch.channels_last), timesteps, embeddings)
    assert seen == [False, True, True]
    torch.testing.assert_close(from_plain, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(from_channels_last, plain, rtol=1e-4, atol=1e-5)
