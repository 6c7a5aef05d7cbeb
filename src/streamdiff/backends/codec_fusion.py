"""TAESD with each convolution's bias, ReLU and residual add done inside the convolution (cuDNN fusion).

TAESD is a stack of 64-channel 3x3 convolutions, each followed by a ReLU, in blocks that end with a
residual add and a ReLU. Unfused, every convolution writes its full-resolution output and a second
kernel reads it back to add the bias and apply the ReLU (and the skip). cuDNN's fused
convolution-bias-(add)-ReLU kernels do it in one pass: on an H100 a 512x512 layer took 58 us fused against
130 us as separate kernels (batch 16: 648 against 1769 us); see benchmarks/NOTES-cuda.md. The decoder's
2x nearest upsampling becomes one broadcast copy in the channels-last layout (PyTorch's own channels-last
upsampling kernel took 140 us per frame for TAESD's three).

The fused modules keep their parameters and structure (state dicts do not change): only `forward` is
replaced per instance, and `unfuse` restores it. The fused kernels have no tracing support in
torch.compile, so a fused codec runs eagerly (inside the captured CUDA graph, where launches are free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

ConvReLU = Callable[[Tensor, nn.Conv2d], Tensor]
ConvAddReLU = Callable[[Tensor, nn.Conv2d, Tensor], Tensor]

_MARK = "_streamdiff_fused"


def upsample_nearest_2x(x: Tensor) -> Tensor:
    """2x nearest-neighbour upsampling of (N, C, H, W) as one broadcast copy, in the channels-last layout
    (the layout the accelerated codec runs in); equal to F.interpolate(x, scale_factor=2, mode="nearest")."""
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1)
    wide = nhwc[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)
    return wide.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class FusedOps:
    """relu(conv(x) + bias) and relu(conv(x) + bias + z): cuDNN's fused kernels by default; and the 2x
    nearest upsampling."""

    conv_relu: ConvReLU
    conv_add_relu: ConvAddReLU
    upsample_2x: Callable[[Tensor], Tensor] = upsample_nearest_2x


def _cudnn_conv_relu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return torch.cudnn_convolution_relu(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                        conv.groups)


def _cudnn_conv_add_relu(x: Tensor, conv: nn.Conv2d, z: Tensor) -> Tensor:
    return torch.cudnn_convolution_add_relu(x, conv.weight, z, 1.0, conv.bias, conv.stride, conv.padding,
                                            conv.dilation, conv.groups)


CUDNN = FusedOps(_cudnn_conv_relu, _cudnn_conv_add_relu)


def unsupported(vae: nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the codec cannot be fused here, or None when it can."""
    if device.type != "cuda" or not torch.backends.cudnn.is_available():
        return "fused codec convolutions need cuDNN on a CUDA GPU"
    if dtype not in (torch.float16, torch.bfloat16):
        return "fused codec convolutions are used in float16 and bfloat16 only"
    if not _plans(vae):
        return "only the tiny autoencoder (TAESD) has fusable convolution blocks"
    return None


def fuse(vae: nn.Module, ops: FusedOps = CUDNN) -> bool:
    """Replace the forward of every fusable block and layer stack of a TAESD encoder and decoder; True if any."""
    plans = _plans(vae)
    for module, forward in plans:
        module.__dict__["forward"] = forward(ops)
        module.__dict__[_MARK] = True
    return bool(plans)


def unfuse(vae: nn.Module) -> None:
    for module in vae.modules():
        if module.__dict__.pop(_MARK, False):
            module.__dict__.pop("forward", None)


def is_fused(module: nn.Module) -> bool:
    return any(m.__dict__.get(_MARK, False) for m in module.modules())


def _plans(vae: nn.Module) -> list[tuple[nn.Module, Callable[[FusedOps], Callable[[Tensor], Tensor]]]]:
    """The modules to change and how: residual blocks, and the conv+ReLU pairs of each Sequential."""
    blocks = [m for m in vae.modules() if _is_tiny_block(m)]
    inside = {id(b.conv) for b in blocks}  # a fused block no longer calls its own layer stack
    plans: list[tuple[nn.Module, Callable[[FusedOps], Callable[[Tensor], Tensor]]]] = [
        (block, lambda ops, block=block: _block_forward(block, ops)) for block in blocks]
    plans += [(seq, lambda ops, seq=seq: _sequential_forward(seq, ops)) for seq in vae.modules()
              if isinstance(seq, nn.Sequential) and id(seq) not in inside and _pairs(seq)]
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


def _pairs(seq: nn.Sequential) -> list[int]:
    """Indices i where seq[i] is a fusable conv directly followed by a ReLU."""
    items = list(seq)
    return [i for i in range(len(items) - 1) if _fusable_conv(items[i]) and isinstance(items[i + 1], nn.ReLU)]


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


def _sequential_forward(seq: nn.Sequential, ops: FusedOps) -> Callable[[Tensor], Tensor]:
    items = list(seq)
    starts = set(_pairs(seq))
    upsamples = {i for i, m in enumerate(items) if _is_upsample_2x(m)}

    def forward(x: Tensor) -> Tensor:
        i = 0
        while i < len(items):
            if i in starts:
                x = ops.conv_relu(x, items[i])
                i += 2
            else:
                x = ops.upsample_2x(x) if i in upsamples else items[i](x)
                i += 1
        return x

    return forward
