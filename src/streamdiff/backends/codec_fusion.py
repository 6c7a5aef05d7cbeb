"""TAESD with each convolution's bias, ReLU and residual add done inside the convolution (cuDNN fusion).

TAESD is a stack of 64-channel 3x3 convolutions, each followed by a ReLU, in blocks that end with a
residual add and a ReLU. Unfused, every convolution writes its full-resolution output and a second
kernel reads it back to add the bias and apply the ReLU (and the skip). cuDNN's fused
convolution-bias-(add)-ReLU kernels do it in one pass: on an H100 a 512x512 layer took 58 us fused against
130 us as separate kernels (batch 16: 648 against 1769 us); see benchmarks/NOTES-cuda.md. The decoder's
2x nearest upsampling and the convolution after it become one transposed convolution on the small map
(upsample_fold.py: 4/9 of the work, and the doubled map is never written); an upsampling followed by
anything else becomes one broadcast copy in the channels-last layout (PyTorch's own channels-last
upsampling kernel took 140 us per frame for TAESD's three).

The encoder's first and the decoder's last convolution (3 picture channels) run on 8 aligned channels with
the scalings around them and their bias folded into the weights, computed once when fusing: fuse after
loading weights. The fused modules keep their parameters and structure (state dicts do not change): only
`forward` is replaced per instance, and `unfuse` restores it. The fused kernels have no tracing support in
torch.compile, so a fused codec runs eagerly (inside the captured CUDA graph, where launches are free).

Where cuDNN's fused kernels cannot run (the CPU, or float32), the same rewrite with PyTorch's own kernels
(`TORCH`: the ReLU and the skip added in place on the convolution's output) still takes the folded
upsampling's work out and a pass per layer: on a 2-core CPU TAESD's encoder and decoder together took
1.47-1.54 instead of 1.80-2.26 s at 512x512 (benchmarks/cpu_rewrites_probe.py). It is used off CUDA where the
codec is not compiled (ops_for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import upsample_fold

ConvReLU = Callable[[Tensor, nn.Conv2d], Tensor]
ConvAddReLU = Callable[[Tensor, nn.Conv2d, Tensor], Tensor]

_MARK = "_streamdiff_fused"


def upsample_nearest_2x(x: Tensor) -> Tensor:
    """2x nearest-neighbour upsampling of (N, C, H, W) as one broadcast copy, in the channels-last layout
    (the layout the accelerated codec runs in); equal to F.interpolate(x, scale_factor=2, mode="nearest").

    Where each pixel's channels are contiguous, the copy moves them as 8-byte words: PyTorch's broadcast
    copy is not vectorised, so four half-precision values per element make it several times faster."""
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1)
    words = nhwc.view(torch.int64) if _word_aligned(nhwc) else nhwc
    k = words.shape[-1]
    wide = words[:, :, None, :, None, :].expand(n, h, 2, w, 2, k).reshape(n, 2 * h, 2 * w, k)
    return wide.view(x.dtype).permute(0, 3, 1, 2)


def _word_aligned(t: Tensor) -> bool:
    """Whether t's last dimension can be viewed as 8-byte words (contiguous, sizes and offsets aligned)."""
    size = t.element_size()
    if size >= 8 or t.stride(-1) != 1 or t.is_complex():
        return False
    spans = [t.shape[-1], t.storage_offset(), *t.stride()[:-1]]
    return all(v * size % 8 == 0 for v in spans)


@dataclass(frozen=True)
class FusedOps:
    """relu(conv(x) + bias) and relu(conv(x) + bias + z): cuDNN's fused kernels by default; the 2x nearest
    upsampling; and a 3x3 convolution of the upsampled map, given its folded kernel (upsample_fold.py)."""

    conv_relu: ConvReLU
    conv_add_relu: ConvAddReLU
    upsample_2x: Callable[[Tensor], Tensor] = upsample_nearest_2x
    upsample_conv: Callable[[Tensor, Tensor, Tensor | None], Tensor] = upsample_fold.upsample_conv


def _cudnn_conv_relu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return torch.cudnn_convolution_relu(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                        conv.groups)


def _cudnn_conv_add_relu(x: Tensor, conv: nn.Conv2d, z: Tensor) -> Tensor:
    return torch.cudnn_convolution_add_relu(x, conv.weight, z, 1.0, conv.bias, conv.stride, conv.padding,
                                            conv.dilation, conv.groups)


CUDNN = FusedOps(_cudnn_conv_relu, _cudnn_conv_add_relu)


def _torch_conv_relu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return F.relu_(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups))


def _torch_conv_add_relu(x: Tensor, conv: nn.Conv2d, z: Tensor) -> Tensor:
    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.relu_(out.add_(z))


def _interpolate_2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")  # keeps the input's layout, unlike the word copy


# PyTorch's own kernels in the fused structure: for devices and precisions cuDNN's fused kernels do not serve.
TORCH = FusedOps(_torch_conv_relu, _torch_conv_add_relu, upsample_2x=_interpolate_2x)


def unsupported(vae: nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why cuDNN's fused kernels cannot run the codec here, or None when they can."""
    if device.type != "cuda" or not torch.backends.cudnn.is_available():
        return "fused codec convolutions need cuDNN on a CUDA GPU"
    if dtype not in (torch.float16, torch.bfloat16):
        return "fused codec convolutions are used in float16 and bfloat16 only"
    if not _plans(vae):
        return "only the tiny autoencoder (TAESD) has fusable convolution blocks"
    return None


def ops_for(vae: nn.Module, device: torch.device, dtype: torch.dtype, *, compiled: bool) -> FusedOps | None:
    """The kernels to fuse the codec with here: cuDNN's where they run; off CUDA, PyTorch's unless the codec
    is compiled (the compiler fuses its bias and ReLU itself); None for a codec with nothing to fuse.

    CUDA in float32 keeps the plain codec: fused this way, a 1-step frame there differed from the plain
    engine's by more than one level on an H100 (likely TF32, which its float32 convolutions use by default,
    rounding the folded weights differently)."""
    if not _plans(vae):
        return None
    if unsupported(vae, device, dtype) is None:
        return CUDNN
    return None if compiled or device.type == "cuda" else TORCH


def fuse(vae: nn.Module, ops: FusedOps = CUDNN) -> bool:
    """Replace the forward of every fusable block and layer stack of a TAESD encoder and decoder; True if any.

    A module fused with the same ops before keeps its forward, and with it the folded weights that forward
    holds: a CUDA graph captured over the codec reads them, so another stream sharing the codec (accelerated
    in turn) must not free them. After changing the codec's weights, unfuse it first."""
    plans = _plans(vae)
    for module, forward in plans:
        if module.__dict__.get(_MARK) is not ops:
            module.__dict__["forward"] = forward(ops)
            module.__dict__[_MARK] = ops
    return bool(plans)


def unfuse(vae: nn.Module) -> None:
    for module in vae.modules():
        if module.__dict__.pop(_MARK, None) is not None:
            module.__dict__.pop("forward", None)


def is_fused(module: nn.Module) -> bool:
    return any(m.__dict__.get(_MARK) is not None for m in module.modules())


Plan = Callable[[FusedOps], Callable[[Tensor], Tensor]]


def _plans(vae: nn.Module) -> list[tuple[nn.Module, Plan]]:
    """The modules to change and how: residual blocks, TAESD's encoder and decoder (their outer convolutions
    with the scalings around them folded in), and the conv+ReLU pairs of any other Sequential."""
    blocks = [m for m in vae.modules() if _is_tiny_block(m)]
    plans: list[tuple[nn.Module, Plan]] = [(block, lambda ops, block=block: _block_forward(block, ops))
                                           for block in blocks]
    inside = {id(b.conv) for b in blocks}  # a fused module no longer calls its own layer stack
    for name, make in (("encoder", _encoder_forward), ("decoder", _decoder_forward)):
        part = getattr(vae, name, None)
        if _is_tiny_coder(part, name):
            plans.append((part, lambda ops, part=part, make=make: make(part, ops)))
            inside.add(id(part.layers))
    plans += [(seq, lambda ops, seq=seq: _layers_forward(list(seq), ops)) for seq in vae.modules()
              if isinstance(seq, nn.Sequential) and id(seq) not in inside and _pairs(list(seq))]
    return plans


def _fusable_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.bias is not None and module.padding_mode == "zeros"


def _is_tiny_block(module: nn.Module) -> bool:
    """diffusers' AutoencoderTinyBlock with ReLU activations: conv-ReLU-conv-ReLU-conv, identity skip, ReLU."""
    conv, skip, fuse_act = getattr(module, "conv", None), getattr(module, "skip", None), getattr(module, "fuse", None)
    if not (isinstance(conv, nn.Sequential) and len(conv) == 5 and isinstance(skip, nn.Identity)
            and isinstance(fuse_act, nn.ReLU)):
        return False
    return (all(_fusable_conv(conv[i]) for i in (0, 2, 4))
            and all(isinstance(conv[i], nn.ReLU) for i in (1, 3)))


def _pairs(items: list[nn.Module]) -> list[int]:
    """Indices i where items[i] is a fusable conv directly followed by a ReLU."""
    return [i for i in range(len(items) - 1) if _fusable_conv(items[i]) and isinstance(items[i + 1], nn.ReLU)]


def _is_plain_3x3(conv: nn.Module) -> bool:
    return (_fusable_conv(conv) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def _is_tiny_coder(part: nn.Module | None, name: str) -> bool:
    """diffusers' EncoderTiny (pictures in [-1, 1], scaled to [0, 1] first) or DecoderTiny (tanh clamp first,
    scaled from [0, 1] to [-1, 1] last), opening or ending with a 3x3 convolution of the 3 picture channels."""
    expected = {"encoder": "EncoderTiny", "decoder": "DecoderTiny"}[name]
    layers = getattr(part, "layers", None)
    if type(part).__name__ != expected or not isinstance(layers, nn.Sequential) or len(layers) < 2:
        return False
    if name == "encoder":
        return _is_plain_3x3(layers[0]) and layers[0].in_channels == 3 and not isinstance(layers[1], nn.ReLU)
    return _is_plain_3x3(layers[-1]) and layers[-1].out_channels == 3


def _is_upsample_2x(module: nn.Module) -> bool:
    return (isinstance(module, nn.Upsample) and module.mode == "nearest" and module.size is None
            and module.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)))


def _block_forward(block: nn.Module, ops: FusedOps) -> Callable[[Tensor], Tensor]:
    first, second, third = block.conv[0], block.conv[2], block.conv[4]

    def forward(x: Tensor) -> Tensor:
        h = ops.conv_relu(x, first)
        h = ops.conv_relu(h, second)
        return ops.conv_add_relu(h, third, x)

    return forward


_ALIGNED_CHANNELS = 8  # cuDNN's fast NHWC kernels want channel counts in multiples of 8 (16 bytes)


@torch.no_grad()
def _encoder_forward(encoder: nn.Module, ops: FusedOps) -> Callable[[Tensor], Tensor]:
    """EncoderTiny: relu-free first convolution of (x + 1) / 2 plus bias, as one convolution of 8 channels.

    With zero padding, conv(W, pad((x + 1) / 2)) + b = conv(W / 2, pad(x)) + conv(sum_c W / 2, pad(1)) + b:
    the picture's channels get W / 2, a constant-one channel (zero in the padding, as the scaled picture
    is) gets the channel sum of W / 2 with the bias on its centre tap, which never reads padding. Four
    zero channels make 8: a 3-channel input runs on a slow unaligned kernel (39 us instead of a few at
    512x512), and the bias no longer needs a pass of its own over the 64-channel output.
    """
    first, rest = encoder.layers[0], _layers_forward(list(encoder.layers)[1:], ops)
    kernel = first.weight.float()  # (C, 3, 3, 3)
    folded = torch.zeros(kernel.shape[0], _ALIGNED_CHANNELS, 3, 3, device=kernel.device)
    folded[:, :3] = kernel / 2
    folded[:, 3] = kernel.sum(dim=1) / 2
    folded[:, 3, 1, 1] += first.bias.float()
    weight = folded.to(first.weight.dtype).contiguous(memory_format=torch.channels_last)
    fill = torch.zeros(_ALIGNED_CHANNELS - 3, dtype=first.weight.dtype, device=kernel.device)
    fill[0] = 1

    def forward(x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        pixels = torch.cat([x.permute(0, 2, 3, 1), fill.expand(n, h, w, -1)], dim=3).permute(0, 3, 1, 2)
        return rest(F.conv2d(pixels, weight, None, 1, 1))

    return forward


@torch.no_grad()
def _decoder_forward(decoder: nn.Module, ops: FusedOps) -> Callable[[Tensor], Tensor]:
    """DecoderTiny: the last convolution with 8 output channels (5 of zero weights: an aligned, fast kernel
    instead of a 69 us unaligned one at 512x512), its weights doubled and 2b - 1 added to the 3 kept
    channels: 2 (conv(W, x) + b) - 1 in one pass after the convolution instead of three."""
    last, body = decoder.layers[-1], _layers_forward(list(decoder.layers)[:-1], ops)
    kernel = last.weight.float()  # (3, C, 3, 3)
    padded = torch.zeros(_ALIGNED_CHANNELS, *kernel.shape[1:], device=kernel.device)
    padded[:3] = 2 * kernel
    weight = padded.to(last.weight.dtype).contiguous(memory_format=torch.channels_last)
    shift = (2 * last.bias.float() - 1).to(last.weight.dtype).view(1, 3, 1, 1)

    def forward(x: Tensor) -> Tensor:
        h = body(torch.tanh(x / 3) * 3)
        return F.conv2d(h, weight, None, 1, 1)[:, :3] + shift

    return forward


@torch.no_grad()
def _layers_forward(items: list[nn.Module], ops: FusedOps) -> Callable[[Tensor], Tensor]:
    starts = set(_pairs(items))
    upsamples = {i for i, m in enumerate(items) if _is_upsample_2x(m)}
    folded = {i: upsample_fold.folded_weight(items[i + 1].weight).contiguous(memory_format=torch.channels_last)
              for i in upsamples if i + 1 < len(items) and upsample_fold.foldable_conv(items[i + 1])}

    def forward(x: Tensor) -> Tensor:
        i = 0
        while i < len(items):
            if i in starts:
                x = ops.conv_relu(x, items[i])
                i += 2
            elif i in folded:
                x = ops.upsample_conv(x, folded[i], items[i + 1].bias)
                i += 2
            else:
                x = ops.upsample_2x(x) if i in upsamples else items[i](x)
                i += 1
        return x

    return forward
