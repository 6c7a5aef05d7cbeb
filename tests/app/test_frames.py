"""Preprocessing into the engine and back: geometry, colour order and mirror, on both code paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdiff.app import frames
from streamdiff.app.frames import crop_box, fit_pane, from_engine, to_engine
from streamdiff.images import fit_size

CPU = torch.device("cpu")


def quadrants(width: int = 160, height: int = 120) -> np.ndarray:
    """RGB picture: left half red, right half green, with a blue stripe down the middle third of rows."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, : width // 2, 0] = 255
    picture[:, width // 2 :, 1] = 255
    picture[height // 3 : 2 * height // 3, :, 2] = 255
    return picture


@pytest.fixture(params=["host", "device"])
def path(request, monkeypatch):
    """The OpenCV path (CPU engines) and the torch path (what a GPU runs), both checked on the CPU."""
    if request.param == "device":
        monkeypatch.setattr(frames, "_has_opencv", lambda: False)
    return request.param


def test_crop_takes_the_centre_and_keeps_colours(path):
    pixels = to_engine(quadrants(), "rgb", 32, 32, "crop", CPU)
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    # Centre crop of 160x120 is 120x120: columns 20..139, so red stays left and green right.
    assert pixels[0, 0, 16, 2] > 0.9 and pixels[0, 1, 16, 29] > 0.9
    assert pixels[0, 2, 16, 16] > 0.9 and pixels[0, 2, 2, 16] < 0.1


def test_bgr_sources_are_swapped_and_mirror_flips(path):
    bgr = np.ascontiguousarray(quadrants()[..., ::-1])
    from_rgb = to_engine(quadrants(), "rgb", 32, 32, "crop", CPU)
    assert torch.allclose(to_engine(bgr, "bgr", 32, 32, "crop", CPU), from_rgb)
    mirrored = to_engine(quadrants(), "rgb", 32, 32, "crop", CPU, mirror=True)
    assert mirrored[0, 1, 16, 2] > 0.9 and mirrored[0, 0, 16, 29] > 0.9


def test_pad_letterboxes_a_wide_picture(path):
    pixels = to_engine(quadrants(160, 80), "rgb", 32, 32, "pad", CPU)
    assert float(pixels[0, :, :6].max()) == 0.0 and float(pixels[0, :, -6:].max()) == 0.0
    assert pixels[0, 0, 16, 2] > 0.9


def test_both_paths_match_the_engines_own_fit(path):
    across, down = np.meshgrid(np.linspace(0, 255, 200), np.linspace(0, 255, 150))
    picture = np.dstack([across, down, np.full_like(across, 99.0)]).astype(np.uint8)
    reference = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
    for fit in ("crop", "pad", "stretch"):
        ours = to_engine(picture, "rgb", 48, 48, fit, CPU)
        theirs = fit_size(reference, 48, 48, fit)
        assert (ours - theirs).abs().mean() < 0.02, fit


def test_exact_fit_refuses_another_size():
    with pytest.raises(ValueError, match="expected a 64x64 picture"):
        to_engine(quadrants(), "rgb", 64, 64, "exact", CPU)


def test_from_engine_gives_uint8_pictures_in_the_asked_order():
    pixels = torch.zeros(1, 3, 4, 6)
    pixels[0, 0] = 1.0  # red
    rgb, bgr = from_engine(pixels, "rgb"), from_engine(pixels, "bgr")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 0, 0] and bgr[0, 0].tolist() == [0, 0, 255]


def test_camera_pane_is_framed_like_the_engine_input():
    pane = fit_pane(quadrants(), 64, 64, "crop")
    engine_view = from_engine(to_engine(quadrants(), "rgb", 64, 64, "crop", CPU), "rgb")
    assert np.abs(pane.astype(int) - engine_view.astype(int)).mean() < 2
    assert crop_box(160, 120, 64, 64) == (0, 120, 20, 140)
