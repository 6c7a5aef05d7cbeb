"""Depth pictures from colour frames, for a depth ControlNet, in tensor operations on the engine's device.

Depth ControlNets were trained on MiDaS-style pictures: relative inverse depth (near is bright) stretched to
the full range of each picture. Depth Anything V2 (models/depth_estimators.py) estimates that quantity from
a colour frame. This module turns frames in [0, 1] into its input (each side rounded to its 14-pixel
patches, ImageNet normalisation, as its own image processor does) and its estimate back into a grey picture
of the frame's size in [0, 1], frame by frame, with no host round trip, so a captured CUDA step holds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PATCH = 14  # Depth Anything's ViT patch: its input sides are multiples of this
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def estimator_size(height: int, width: int) -> tuple[int, int]:
    """The estimator's input size for frames of height x width: each side rounded to whole patches.

    At 512 this is 518, the size Depth Anything was trained and is served at; smaller render sizes give the
    estimator fewer patches, so it costs what the stream's own resolution costs.
    """
    return max(PATCH, round(height / PATCH) * PATCH), max(PATCH, round(width / PATCH) * PATCH)


def depth_input(picture: Tensor, size: tuple[int, int]) -> Tensor:
    """The estimator's pixel values for pictures (F, 3, H, W) in [0, 1]: resized (bicubic) to size, normalised."""
    if tuple(picture.shape[-2:]) != size:
        picture = F.interpolate(picture, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    # Channel by channel with plain numbers: a tensor of the constants made here would be a host-to-device copy,
    # which a CUDA graph capture refuses.
    channels = [(picture[:, c : c + 1] - mean) / std for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD))]
    return torch.cat(channels, dim=1)


def depth_picture(estimator: torch.nn.Module, picture: Tensor) -> Tensor:
    """The depth picture (F, 3, H, W) in [0, 1] of pictures (F, 3, H, W) in [0, 1]: near bright, each frame
    stretched to the full range by itself (a flat estimate gives black)."""
    height, width = picture.shape[-2:]
    pixels = depth_input(picture, estimator_size(height, width))
    estimate = estimator(pixel_values=pixels).predicted_depth[:, None].float()  # (F, 1, h, w)
    estimate = F.interpolate(estimate, size=(height, width), mode="bilinear", align_corners=False)
    low = estimate.amin(dim=(2, 3), keepdim=True)
    high = estimate.amax(dim=(2, 3), keepdim=True)
    stretched = (estimate - low) / (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    return stretched.expand(-1, 3, -1, -1).to(picture.dtype)
