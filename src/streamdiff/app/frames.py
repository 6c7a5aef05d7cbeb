"""Pictures on their way in and out of the engine, and the camera pane the display shows.

Sources hand over uint8 (H, W, 3) arrays in their own channel order (OpenCV gives BGR, PyAV and PIL
give RGB). The colour swap, the mirror and the crop or resize happen once per frame, in the inference
thread: on a GPU after a single upload of the uint8 picture, so the device does them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from streamdiff.images import fit_size, to_uint8_hwc

ChannelOrder = Literal["rgb", "bgr"]
ORDERS: tuple[str, ...] = ("rgb", "bgr")


@dataclass(frozen=True)
class Frame:
    """One captured picture: (H, W, 3) uint8 in `order`, its capture number and perf_counter time."""

    image: np.ndarray
    order: ChannelOrder
    index: int
    time: float


def to_engine(
    image: np.ndarray, order: str, width: int, height: int, fit: str, device: torch.device, mirror: bool = False
) -> Tensor:
    """A captured picture as the engine's input: (1, 3, height, width) float in [0, 1] on `device`.

    On a GPU: one upload of the uint8 picture, then everything on the device. On the CPU: crop and
    resize the uint8 picture first (OpenCV), so only the small picture is converted to float.
    """
    h, w = image.shape[:2]
    if fit == "exact" and (w, h) != (width, height):
        raise ValueError(f"expected a {width}x{height} picture (fit='exact'); got {w}x{h}")
    if device.type == "cpu" and _has_opencv():
        small = convert_order(fit_pane(image, width, height, fit, mirror), order, "rgb")
        return torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)  # (h, w, 3) uint8
    pixels = pixels.permute(2, 0, 1)
    if order == "bgr":
        pixels = pixels.flip(0)
    if mirror:
        pixels = pixels.flip(-1)
    # Antialiased resizing can overshoot [0, 1] by a rounding error, which the engine would refuse.
    return fit_size(pixels.unsqueeze(0).float().div_(255.0), width, height, fit).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _has_opencv() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def from_engine(pictures: Tensor, order: str) -> np.ndarray:
    """The engine's (1, 3, H, W) output in [0, 1] as a (H, W, 3) uint8 array in `order`, on the host."""
    pixels = to_uint8_hwc(pictures[:1])[0]  # (H, W, 3)
    if order == "bgr":
        pixels = pixels.flip(-1)
    return pixels.cpu().numpy()


def crop_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the centred region of a width x height picture with the out aspect."""
    scale = max(out_width / width, out_height / height)
    crop_w = min(width, max(1, round(out_width / scale)))
    crop_h = min(height, max(1, round(out_height / scale)))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return top, top + crop_h, left, left + crop_w


def fit_pane(image: np.ndarray, width: int, height: int, fit: str, mirror: bool = False) -> np.ndarray:
    """The camera picture framed as the engine frames it (crop, pad or stretch), at width x height."""
    import cv2

    h, w = image.shape[:2]
    if fit == "crop":
        top, bottom, left, right = crop_box(w, h, width, height)
        pane = resize(image[top:bottom, left:right], width, height)
    elif fit == "pad":
        scale = min(width / w, height / h)
        inner = resize(image, max(1, round(w * scale)), max(1, round(h * scale)))
        pane = np.zeros((height, width, 3), np.uint8)
        top, left = (height - inner.shape[0]) // 2, (width - inner.shape[1]) // 2
        pane[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
    else:
        pane = resize(image, width, height)
    return cv2.flip(pane, 1) if mirror else pane


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Anti-aliased when shrinking: halve with a Gaussian (pyrDown) while at least twice too big, then
    finish bilinearly (under 2x little aliases). OpenCV's area averaging would be 3 to 5 times slower
    for factors that are not whole numbers, and this runs once per frame on every camera frame."""
    import cv2

    # OpenCV takes cropped views as they are (rows with a stride): no copy of the camera frame.
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.pyrDown(image)
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def convert_order(image: np.ndarray, order: str, wanted: str) -> np.ndarray:
    """The same picture with its channels in the `wanted` order (a copy only when they differ)."""
    if order == wanted:
        return image
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # the same swap either way; faster than numpy's copy
