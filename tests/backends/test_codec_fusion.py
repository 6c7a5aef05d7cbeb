"""TAESD with fused convolution kernels: the rewritten forwards compute what the modules computed.

cuDNN's fused kernels run only on a GPU; here the same rewrite runs with plain-PyTorch stand-ins for
them, so what is checked is the rewrite: which convolutions are fused, in which order, with which skip.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

from streamdiff.backends import codec_fusion
from streamdiff.backends.compile import compiled_parts, describe_parts
from streamdiff.backends.upsample_fold import upsample_conv
from streamdiff.models.architectures import TAESD_CONFIG


class CountingOps:
    """relu(conv + bias [+ z]) in plain PyTorch, counting the calls; the real upsampling and folded
    upsampling convolution, counted."""

    def __init__(self) -> None:
        self.calls = {"conv_relu": 0, "conv_add_relu": 0, "upsample_2x": 0, "upsample_conv": 0}

    def upsample_2x(self, x):
        self.calls["upsample_2x"] += 1
        return codec_fusion.upsample_nearest_2x(x)

    def upsample_conv(self, x, weight, bias):
        self.calls["upsample_conv"] += 1
        return upsample_conv(x, weight, bias)

    def conv_relu(self, x, conv):
        self.calls["conv_relu"] += 1
        return F.relu(conv(x))

    def conv_add_relu(self, x, conv, z):
        self.calls["conv_add_relu"] += 1
        return F.relu(conv(x) + z)

    def ops(self) -> codec_fusion.FusedOps:
        return codec_fusion.FusedOps(self.conv_relu, self.conv_add_relu, self.upsample_2x, self.upsample_conv)


def _taesd(seed: int = 0, gain: float = 3.0) -> AutoencoderTiny:
    """TAESD with seeded weights; gain > 1 makes a wrong skip or order show (in float32: float16 overflows)."""
    torch.manual_seed(seed)
    vae = AutoencoderTiny(**TAESD_CONFIG).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(gain)
    return vae


@torch.no_grad()
def test_fused_taesd_computes_what_taesd_computes():
    vae = _taesd().to(memory_format=torch.channels_last)  # the accelerated codec's layout
    pictures = (torch.rand(2, 3, 64, 64) * 2 - 1).to(memory_format=torch.channels_last)
    latents = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    expected = (vae.encoder(pictures), vae.decoder(latents))
    counting = CountingOps()
    assert codec_fusion.fuse(vae, counting.ops())
    outer = (vae.encoder.layers[0], vae.decoder.layers[-1])
    outer_calls = []
    for conv in outer:
        conv.register_forward_hook(lambda *_: outer_calls.append(1))
    got = (vae.encoder(pictures), vae.decoder(latents))
    for e, g in zip(expected, got):
        # The outer convolutions have the scalings and bias folded into their weights: rounding differs.
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))
    assert not outer_calls  # replaced by their folded, channel-aligned versions
    blocks = sum(1 for m in vae.modules() if type(m).__name__ == "AutoencoderTinyBlock")
    upsamples = sum(1 for m in vae.modules() if isinstance(m, torch.nn.Upsample))
    # two conv+ReLU per block and the decoder's first conv+ReLU; one conv+add+ReLU per block; each upsampling
    # and the convolution after it as one transposed convolution
    assert upsamples == 3
    assert counting.calls == {"conv_relu": 2 * blocks + 1, "conv_add_relu": blocks, "upsample_2x": 0,
                              "upsample_conv": upsamples}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@torch.no_grad()
def test_taesd_fused_with_pytorchs_kernels_computes_what_taesd_computes(layout):
    """The CPU's fused codec (ReLU and skip in place on each convolution's output, upsampling folded)."""
    vae = _taesd(3).to(memory_format=layout)
    pictures = (torch.rand(2, 3, 64, 64) * 2 - 1).contiguous(memory_format=layout)
    latents = torch.randn(2, 4, 8, 8).contiguous(memory_format=layout)
    expected = (vae.encoder(pictures), vae.decoder(latents))
    assert codec_fusion.fuse(vae, codec_fusion.TORCH)
    got = (vae.encoder(pictures), vae.decoder(latents))
    for e, g in zip(expected, got):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))


def test_the_fusing_kernels_are_cudnns_where_they_run_else_pytorchs_unless_the_codec_is_compiled():
    vae, cpu = _taesd(), torch.device("cpu")
    assert codec_fusion.ops_for(vae, cpu, torch.float32, compiled=False) is codec_fusion.TORCH
    assert codec_fusion.ops_for(vae, cpu, torch.float32, compiled=True) is None  # the compiler fuses instead
    kl = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    assert codec_fusion.ops_for(kl, cpu, torch.float32, compiled=False) is None
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert codec_fusion.ops_for(vae, cuda, torch.float16, compiled=True) is codec_fusion.CUDNN
        assert codec_fusion.ops_for(vae, cuda, torch.float32, compiled=False) is None


@torch.no_grad()
def test_unfuse_restores_the_modules_and_their_state_dict_never_changes():
    vae = _taesd(1)
    keys = list(vae.state_dict())
    counting = CountingOps()
    codec_fusion.fuse(vae, counting.ops())
    assert codec_fusion.is_fused(vae) and codec_fusion.is_fused(vae.decoder)
    assert list(vae.state_dict()) == keys
    codec_fusion.unfuse(vae)
    assert not codec_fusion.is_fused(vae)
    vae.decoder(torch.randn(1, 4, 8, 8))
    assert counting.calls == {"conv_relu": 0, "conv_add_relu": 0, "upsample_2x": 0, "upsample_conv": 0}


@pytest.mark.parametrize("channels_last,channels,dtype", [(True, 5, torch.float32), (False, 5, torch.float32),
                                                            (True, 8, torch.float16), (True, 6, torch.float32),
                                                            (False, 8, torch.float16)])
def test_broadcast_upsampling_equals_nearest_interpolation(channels_last, channels, dtype):
    x = torch.randn(2, channels, 7, 9).to(dtype)  # 8 half or 6 single-precision channels: moved as 8-byte words
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    got = codec_fusion.upsample_nearest_2x(x)
    assert torch.equal(got, F.interpolate(x, scale_factor=2, mode="nearest"))
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_fused_codec_parts_are_not_compiled():
    vae = _taesd()
    unet = torch.nn.Linear(2, 2)
    assert set(compiled_parts(unet, vae)) == {"unet", "vae.encoder", "vae.decoder"}
    assert describe_parts(compiled_parts(unet, vae)) == "the UNet and the codec"
    nets, estimator = (torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)), torch.nn.Linear(1, 1)
    parts = compiled_parts(unet, vae, nets, estimator)
    assert (parts["controlnet"], parts["controlnet.2"], parts["depth_estimator"]) == (*nets, estimator)
    assert describe_parts(parts) == "the UNet, 2 ControlNets, the depth estimator and the codec"
    codec_fusion.fuse(vae, CountingOps().ops())
    assert set(compiled_parts(unet, vae)) == {"unet"}
    assert describe_parts(compiled_parts(unet, vae, nets[:1])) == "the UNet and the ControlNet"


def test_unsupported_says_why():
    vae = _taesd()
    assert "cuDNN" in codec_fusion.unsupported(vae, torch.device("cpu"), torch.float16)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert "float16" in codec_fusion.unsupported(vae, cuda, torch.float32)
        kl = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
        assert "tiny autoencoder" in codec_fusion.unsupported(kl, cuda, torch.float16)


def test_a_kl_autoencoder_has_nothing_to_fuse():
    kl = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    assert not codec_fusion.fuse(kl, CountingOps().ops())
    assert not codec_fusion.is_fused(kl)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_cudnn_fused_taesd_matches_the_unfused_one_on_the_gpu():
    vae = _taesd(2, gain=1.0).to("cuda", torch.float16).to(memory_format=torch.channels_last)
    pictures = (torch.rand(2, 3, 128, 128, device="cuda") * 2 - 1).half()
    latents = torch.randn(2, 4, 16, 16, device="cuda").half()
    expected = (vae.encoder(pictures).float(), vae.decoder(latents).float())
    assert codec_fusion.unsupported(vae, torch.device("cuda"), torch.float16) is None
    codec_fusion.fuse(vae)
    got = (vae.encoder(pictures).float(), vae.decoder(latents).float())
    for e, g in zip(expected, got):
        assert torch.isfinite(e).all() and e.abs().max() > 0
        assert torch.linalg.vector_norm(g - e) / torch.linalg.vector_norm(e) < 5e-3


@torch.no_grad()
def test_an_upsampling_is_folded_only_into_a_plain_3x3_convolution_after_it():
    torch.manual_seed(2)

    def conv(k: int = 3) -> torch.nn.Conv2d:
        return torch.nn.Conv2d(4, 4, k, padding=k // 2)

    folds = torch.nn.Sequential(conv(), torch.nn.ReLU(), torch.nn.Upsample(scale_factor=2), conv())
    keeps = torch.nn.Sequential(conv(), torch.nn.ReLU(), torch.nn.Upsample(scale_factor=2), conv(1))
    model = torch.nn.ModuleList([folds, keeps])
    x = torch.randn(2, 4, 5, 6)
    expected = [folds(x), keeps(x)]
    counting = CountingOps()
    assert codec_fusion.fuse(model, counting.ops())
    for seq, e in zip((folds, keeps), expected):
        torch.testing.assert_close(seq(x), e, rtol=1e-5, atol=1e-5)
    assert counting.calls == {"conv_relu": 2, "conv_add_relu": 0, "upsample_2x": 1, "upsample_conv": 1}
