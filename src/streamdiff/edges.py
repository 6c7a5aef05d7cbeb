"""Canny edges (Canny 1986) in plain tensor ops, for the control picture of canny ControlNets.

Mirrors cv2.Canny(gray, low, high) with apertureSize=3 and the L1 gradient: the picture is quantised
to the 8-bit grayscale levels cv2 would see, so every gradient is an exact integer in float32 and the
direction and threshold tests are exact. Nothing syncs with the host, no shape depends on the data and
hysteresis runs a fixed number of rounds, so the whole function can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# cv2.cvtColor RGB2GRAY on uint8 in fixed point: (0.299, 0.587, 0.114) * 2**15, rounded.
GRAY_WEIGHTS = (9798.0, 19235.0, 3735.0)
GRAY_SHIFT = 2.0**15
# cv2's direction test: |gy| * 2**15 against |gx| * round(tan(22.5 deg) * 2**15).
TAN22_SHIFT = 2.0**15
TAN22_FIXED = 13573.0


def _validate(pixels: Tensor, low: float, high: float, hysteresis_steps: int) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W) RGB, got shape {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a float tensor in [0, 1], got dtype {pixels.dtype}")
    if not 0.0 <= low <= high:
        raise ValueError(f"thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    if hysteresis_steps < 0:
        raise ValueError(f"hysteresis_steps must be >= 0, got {hysteresis_steps}")


def _gray_levels(pixels: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) integer gray levels 0..255, exactly as cv2 rounds them."""
    levels = torch.round(pixels.float().clamp(0.0, 1.0) * 255.0)
    red, green, blue = levels.split(1, dim=1)
    # python scalars, not a weight tensor: a host-to-device copy would break CUDA graph capture;
    # every partial sum is an integer below 2**24, so float32 holds it exactly
    weighted = red * GRAY_WEIGHTS[0] + green * GRAY_WEIGHTS[1] + blue * GRAY_WEIGHTS[2]
    return torch.floor((weighted + GRAY_SHIFT / 2) / GRAY_SHIFT)


def _sobel(gray: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 Sobel (gx, gy) of (B, 1, H, W) with replicated borders, as separable shifted sums."""
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    smooth_rows = padded[:, :, :-2] + 2 * padded[:, :, 1:-1] + padded[:, :, 2:]  # (B, 1, H, W+2)
    smooth_cols = padded[..., :-2] + 2 * padded[..., 1:-1] + padded[..., 2:]  # (B, 1, H+2, W)
    return smooth_rows[..., 2:] - smooth_rows[..., :-2], smooth_cols[:, :, 2:] - smooth_cols[:, :, :-2]


def _neighbour(padded: Tensor, dy: int, dx: int) -> Tensor:
    """The (B, 1, H, W) view of a 1-pixel-padded map shifted so each pixel sees its (dy, dx) neighbour."""
    height, width = padded.shape[-2] - 2, padded.shape[-1] - 2
    return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


def _local_maxima(magnitude: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Non-maximum suppression along the gradient quantised to 0/45/90/135 degrees, with cv2's tie rules."""
    ax, ay = gx.abs(), gy.abs()
    horizontal = ay * TAN22_SHIFT < ax * TAN22_FIXED
    # cv2 tests |gy| * 2**15 > |gx| * (TG22 + 2**16); regrouped so float32 stays exact
    vertical = (ay - 2 * ax) * TAN22_SHIFT > ax * TAN22_FIXED
    around = F.pad(magnitude, (1, 1, 1, 1))  # outside the picture the magnitude is 0, as in cv2

    def beats(dy: int, dx: int, strictly: bool = True) -> Tensor:
        other = _neighbour(around, dy, dx)
        return magnitude > other if strictly else magnitude >= other

    along_x = beats(0, -1) & beats(0, 1, strictly=False)
    along_y = beats(-1, 0) & beats(1, 0, strictly=False)
    same_sign = (gx < 0) == (gy < 0)  # the gradient points down-right or up-left (y grows downwards)
    diagonal = torch.where(same_sign, beats(-1, -1) & beats(1, 1), beats(-1, 1) & beats(1, -1))
    return torch.where(horizontal, along_x, torch.where(vertical, along_y, diagonal))


def canny_edges(pixels: Tensor, low: float = 100.0, high: float = 200.0, *, hysteresis_steps: int = 8) -> Tensor:
    """pixels (B, 3, H, W) RGB in [0, 1], any float dtype and device -> edges (B, 3, H, W) in {0, 1}, same dtype and device."""
    _validate(pixels, low, high, hysteresis_steps)
    gx, gy = _sobel(_gray_levels(pixels))  # (B, 1, H, W) each, integers
    magnitude = gx.abs() + gy.abs()
    peaks = _local_maxima(magnitude, gx, gy)
    # cv2 floors the thresholds and keeps magnitudes strictly above them
    weak = (peaks & (magnitude > math.floor(low))).float()
    strong = (peaks & (magnitude > math.floor(high))).float()
    # bounded hysteresis: each round grows strong edges by one pixel (8-connected) through weak ones
    for _ in range(hysteresis_steps):
        strong = torch.maximum(strong, weak * F.max_pool2d(strong, 3, stride=1, padding=1))
    return strong.expand(-1, 3, -1, -1).to(pixels.dtype, copy=True)
