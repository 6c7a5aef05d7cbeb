"""The fused GEGLU kernel against diffusers' GEGLU: Triton's interpreter on the CPU, real kernels with -m gpu."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import random_frames

from streamdiff import StreamPipeline
from streamdiff.backends import geglu_fusion as gf
from streamdiff.backends.accelerate import accelerate
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.models.tiny import build_tiny_unet

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    """Triton kernels run by its CPU interpreter (read when the kernel is defined, so defined afresh)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gf._kernel.cache_clear()
    yield
    gf._kernel.cache_clear()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("rows,channels,hidden", [(70, 40, 24), (5, 16, 8), (64, 64, 48)])
def test_the_kernel_computes_diffusers_geglu(interpreted, dtype, tolerance, rows, channels, hidden):
    # Odd sizes leave partial tiles in every dimension; a bias on both halves catches a swapped half.
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(2, rows, channels, generator=gen).to(dtype)
    weight = (torch.randn(2 * hidden, channels, generator=gen) / channels ** 0.5).to(dtype)
    bias = torch.randn(2 * hidden, generator=gen).to(dtype)
    out = gf.geglu_linear(x, weight, bias, gf.TileConfig(32, 16, 16, 4, 4, 1))
    expected = gf.reference(x.float(), weight.float(), bias.float())
    assert out.shape == (2, rows, hidden) and out.dtype == dtype
    assert (out.float() - expected).abs().max() <= tolerance * expected.abs().max()
    no_bias = gf.geglu_linear(x, weight, None, gf.TileConfig(32, 16, 16, 4, 4, 1))
    torch.testing.assert_close(no_bias.float(), gf.reference(x.float(), weight.float(), None),
                               atol=tolerance * expected.abs().max().item(), rtol=0)


def test_a_weight_of_the_wrong_shape_is_refused(interpreted):
    with pytest.raises(ValueError, match=r"GEGLU weight must be \(2H, 16\)"):
        gf.geglu_linear(torch.zeros(3, 16), torch.zeros(7, 16), None)


def test_fuse_routes_each_geglu_through_the_kernel_and_unfuse_restores_it(interpreted):
    unet = build_tiny_unet().eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([999, 500])
    context = torch.randn(2, 7, unet.config.cross_attention_dim)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        before = unet(x, t, context).sample
        assert gf.fuse(unet) == 4 and gf.is_fused(unet)
        fused = unet(x, t, context).sample
        gf.unfuse(unet)
        after = unet(x, t, context).sample
    torch.testing.assert_close(fused, before, atol=1e-5, rtol=1e-5)
    assert not gf.is_fused(unet) and torch.equal(after, before)
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())


def test_unsupported_says_why():
    assert "CUDA" in gf.unsupported(torch.device("cpu"), torch.float16)
    if torch.cuda.is_available():
        assert "float16 or bfloat16" in gf.unsupported(torch.device("cuda"), torch.float32)
        assert gf.unsupported(torch.device("cuda"), torch.float16) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,channels,hidden", [(4096, 320, 1280), (300, 1280, 5120), (77, 40, 24)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_kernel_matches_diffusers_geglu(dtype, rows, channels, hidden):
    gen = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(rows, channels, device="cuda", generator=gen).to(dtype)
    weight = (torch.randn(2 * hidden, channels, device="cuda", generator=gen) / channels ** 0.5).to(dtype)
    bias = (0.1 * torch.randn(2 * hidden, device="cuda", generator=gen)).to(dtype)
    expected = gf.reference(x.float(), weight.float(), bias.float())
    plain = gf.reference(x, weight, bias)
    fused = gf.geglu_linear(x, weight, bias)
    # No worse than diffusers' own half-precision GEGLU (plus one rounding step of the output's scale).
    step = expected.abs().max().item() * (2 ** -10 if dtype == torch.float16 else 2 ** -7)
    assert (fused.float() - expected).abs().max() <= (plain.float() - expected).abs().max() + step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_replays_with_fused_geglu_match_the_eager_engine(_tiny_cache):
    def stream() -> StreamPipeline:
        pipe = StreamPipeline.from_diffusers(copy.deepcopy(_tiny_cache["taesd"]), device="cuda", dtype="float16",
                                             seed=3, width=64, height=64, t_index_list=(10, 30), feedback=0.2)
        pipe.denoiser = TorchDenoiser(pipe.components.unet, cache_conditioning=True)
        pipe.prepare("a red fox", negative_prompt="blurry")
        return pipe

    eager = stream()
    fast, report = accelerate(stream(), "max", fuse_geglu=True)
    assert report.mode == "max" and gf.is_fused(fast.pipe.components.unet)
    for k, frame in enumerate(random_frames(6, (64, 64, 3))):
        difference = np.abs(fast.img2img(frame).astype(int) - eager.img2img(frame).astype(int))
        assert difference.max() <= 3, f"frame {k}: {difference.max()} levels"
