"""Nearest 2x upsampling and a 3x3 convolution as one transposed convolution: the same numbers, less work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from streamdiff.backends import upsample_fold
from streamdiff.models.tiny import build_tiny_unet


def _upsample_then_conv(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("cin,cout,height,width,bias", [(3, 5, 1, 1, True), (8, 5, 7, 9, True),
                                                        (4, 16, 6, 4, False), (16, 8, 2, 11, True)])
def test_the_folded_kernel_is_the_same_convolution(cin, cout, height, width, bias):
    g = torch.Generator().manual_seed(cin * cout + height)
    x = torch.randn(2, cin, height, width, generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    folded = upsample_fold.folded_weight(w)
    assert folded.shape == (cin, cout, 4, 4) and folded.dtype == torch.float64
    got = upsample_fold.upsample_conv(x, folded, b)
    torch.testing.assert_close(got, _upsample_then_conv(x, w, b), rtol=1e-12, atol=1e-12)


def test_half_precision_weights_are_summed_in_single_precision():
    w = torch.ones(1, 1, 3, 3, dtype=torch.float16)
    w[0, 0, 1, 1] = 2048  # half precision has no odd numbers above 2048: 2048 + 1 rounds back to 2048
    folded = upsample_fold.folded_weight(w)
    assert folded.dtype == torch.float16
    assert folded[0, 0, 1, 1].item() == 2052  # 2051 rounded once, not 2048 from rounding after every addition


def _unet_and_inputs(latent: tuple[int, int]):
    torch.manual_seed(0)
    unet = build_tiny_unet()
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, *latent, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return unet, (sample, torch.tensor([999, 500]), text)


def _flops(unet, inputs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*inputs)
    return counter.get_total_flops()


def test_a_folded_unet_computes_the_same_with_four_ninths_of_the_upsampling_work():
    unet, inputs = _unet_and_inputs((8, 8))
    keys = list(unet.state_dict())
    with torch.no_grad():
        expected = unet(*inputs).sample
    before = _flops(unet, inputs)
    upsamplers = [m for m in unet.modules() if type(m).__name__ == "Upsample2D"]
    assert upsample_fold.fold_upsamplers(unet) == len(upsamplers) == upsample_fold.folded_count(unet) == 1
    conv = upsamplers[0].conv
    upsampled_work = 2 * 2 * 8 * 8 * conv.in_channels * conv.out_channels * 9  # batch 2, a 4x4 map doubled
    assert before - _flops(unet, inputs) == upsampled_work * 5 // 9
    with torch.no_grad():
        got = unet(*inputs).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert list(unet.state_dict()) == keys
    upsample_fold.unfold_upsamplers(unet)
    assert upsample_fold.folded_count(unet) == 0 and _flops(unet, inputs) == before
    assert not hasattr(upsamplers[0], "folded_weight")


def test_a_map_not_exactly_doubled_takes_the_original_path():
    """A latent with an odd side: the UNet asks its upsampler for the skip connection's size (9 from 5)."""
    unet, inputs = _unet_and_inputs((9, 8))
    with torch.no_grad():
        expected = unet(*inputs).sample
    before = _flops(unet, inputs)
    upsample_fold.fold_upsamplers(unet)
    with torch.no_grad():
        got = unet(*inputs).sample
    assert got.shape == (2, 4, 9, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert _flops(unet, inputs) == before


def test_the_folded_kernel_follows_the_module_and_folding_twice_refolds():
    unet, _ = _unet_and_inputs((8, 8))
    upsample_fold.fold_upsamplers(unet)
    up = next(m for m in unet.modules() if type(m).__name__ == "Upsample2D")
    memory = up.folded_weight.data_ptr()
    with torch.no_grad():
        up.conv.weight.mul_(2)
        upsample_fold.fold_upsamplers(unet)
    assert upsample_fold.folded_count(unet) == 1
    torch.testing.assert_close(up.folded_weight, upsample_fold.folded_weight(up.conv.weight))
    assert up.folded_weight.data_ptr() == memory  # written in place: graphs captured over it read the new kernel
    unet.to(torch.float64)
    assert up.folded_weight.dtype == torch.float64


def test_other_upsamplers_are_left_alone():
    from diffusers.models.upsampling import Upsample2D

    plain = Upsample2D(8, use_conv=True)
    transposed = Upsample2D(8, use_conv_transpose=True)
    no_conv = Upsample2D(8, use_conv=False)
    normed = Upsample2D(8, use_conv=True, norm_type="rms_norm", eps=1e-6, elementwise_affine=True)
    wide = Upsample2D(8, use_conv=True, kernel_size=5, padding=2)
    model = torch.nn.ModuleList([plain, transposed, no_conv, normed, wide])
    assert upsample_fold.fold_upsamplers(model) == 1
    assert upsample_fold.folded_count(plain) == 1
