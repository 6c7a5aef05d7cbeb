"""Synthetic input clips, deterministic and offline: a static camera and a moving scene.

The static clip is one picture with a little sensor noise per frame (what a camera on a tripod sends);
the moving clip slides and turns its shapes every frame. The similarity filter should skip most of the
first and almost none of the second. IP-Adapter cases take their style picture from the same scene.
"""

from __future__ import annotations

import numpy as np

CLIPS: tuple[str, ...] = ("moving", "static")


def _scene(height: int, width: int, phase: float) -> np.ndarray:
    """A smooth colour field with two discs; phase in [0, 1) moves everything."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / max(1, height - 1), x / max(1, width - 1)
    angle = 2.0 * np.pi * phase
    red = 0.5 + 0.5 * np.sin(2.0 * np.pi * (x + phase))
    green = 0.5 + 0.5 * np.cos(2.0 * np.pi * (y - phase))
    blue = 0.5 + 0.5 * np.sin(2.0 * np.pi * (x + y) + angle)
    picture = np.stack([red, green, blue], axis=-1)
    for cx, cy, radius, colour in ((0.5 + 0.3 * np.cos(angle), 0.5 + 0.3 * np.sin(angle), 0.18, (1.0, 0.9, 0.2)),
                                   (0.5 - 0.25 * np.sin(angle), 0.5 + 0.2 * np.cos(angle), 0.12, (0.1, 0.2, 0.9))):
        disc = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        picture[disc] = colour
    return picture


def make_clip(kind: str, frames: int, height: int, width: int, *, seed: int = 0) -> list[np.ndarray]:
    """`frames` uint8 (height, width, 3) RGB pictures of a static or moving clip."""
    if kind not in CLIPS:
        raise ValueError(f"clip must be one of {', '.join(CLIPS)}; got {kind!r}")
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"a clip needs at least one frame of at least 1x1 pixels; got {frames} of {width}x{height}")
    rng = np.random.default_rng(seed)
    still = _scene(height, width, 0.1) * 255.0
    out = []
    for i in range(frames):
        base = still if kind == "static" else _scene(height, width, i / 24.0) * 255.0
        noisy = base + rng.normal(0.0, 1.0, base.shape)  # sensor noise of about one level
        out.append(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    return out


def batched(clip: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Consecutive frames stacked in groups of `size` ((size, H, W, 3) each), for frame_buffer_size > 1."""
    if size == 1:
        return list(clip)
    return [np.stack([clip[(i + j) % len(clip)] for j in range(size)]) for i in range(0, len(clip), size)]


def style_picture(size: int = 256) -> np.ndarray:
    """A uint8 (size, size, 3) RGB picture for an IP-Adapter to take its style from: the moving clip's scene half a
    turn on, without sensor noise."""
    return np.clip(_scene(size, size, 0.5) * 255.0 + 0.5, 0, 255).astype(np.uint8)
