"""Sinks: video file, PNG sequence, virtual camera (against a fake backend), null, and the display check."""

from __future__ import annotations

import glob
from typing import ClassVar

import numpy as np
import pytest
from app_fakes import marked

from streamdiff.app.sinks import (
    NullSink,
    PngSequenceSink,
    VideoFileSink,
    VirtualCameraSink,
    check_display,
)
from streamdiff.errors import UserError


def test_video_file_sink_writes_h264_at_the_given_rate(tmp_path):
    import av

    path = tmp_path / "out" / "video.mp4"
    sink = VideoFileSink(path, 65, 49, fps=12)  # odd sides are trimmed to even for yuv420p
    for k in range(10):
        sink.write(marked(25 * k, 65, 49))
    sink.close()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264" and stream.average_rate == 12
    assert len(pictures) == 10 and pictures[0].shape == (48, 64, 3)
    assert [round(int(p[10, 10, 0]) / 25) for p in pictures] == list(range(10))


def test_video_file_sink_refuses_unknown_containers(tmp_path):
    with pytest.raises(UserError, match="video output must end in .mp4"):
        VideoFileSink(tmp_path / "video.gif", 64, 64, fps=30)


def test_png_sequence_sink_numbers_frames(tmp_path):
    import cv2

    sink = PngSequenceSink(tmp_path / "frames")
    for k in range(3):
        sink.write(marked(40 * k, 16, 8))  # a BGR sink: the first channel is blue
    files = sorted(glob.glob(str(tmp_path / "frames" / "*.png")))
    assert [f.rsplit("/", 1)[1] for f in files] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert cv2.imread(files[2])[0, 0].tolist() == [80, 0, 0]


def test_null_sink_counts_and_has_no_keys():
    sink = NullSink()
    sink.write(marked(1))
    sink.write(marked(2))
    assert sink.frames == 2 and sink.read_key() is None


class FakeCameraBackend:
    """A pyvirtualcam backend that keeps the frames: the device a video-call app would read from."""

    instances: ClassVar[list[FakeCameraBackend]] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames: list[np.ndarray] = []
        self.closed = False
        FakeCameraBackend.instances.append(self)

    def send(self, frame):
        self.frames.append(frame.copy())

    def close(self):
        self.closed = True

    def device(self):
        return "fake-cam"

    def native_fourcc(self):
        return None


def test_virtual_camera_sink_sends_bgr_frames_to_the_backend(monkeypatch):
    pyvirtualcam = pytest.importorskip("pyvirtualcam", reason="pyvirtualcam comes with the camera extra")
    from pyvirtualcam.util import encode_fourcc

    # Registered for this test only: with backend=None pyvirtualcam would try it too.
    monkeypatch.setitem(pyvirtualcam.camera.BACKENDS, "streamdiff-test", FakeCameraBackend)
    sink = VirtualCameraSink(32, 24, fps=30, backend="streamdiff-test")
    picture = marked(77, 32, 24)
    sink.write(picture)
    sink.write(picture[:, ::-1])  # a view with negative strides must be accepted too
    sink.close()
    backend = FakeCameraBackend.instances[-1]
    assert sink.device == "fake-cam" and backend.closed
    assert (backend.width, backend.height, backend.fps) == (32, 24, 30)
    assert backend.fourcc == encode_fourcc(pyvirtualcam.PixelFormat.BGR.value)
    assert len(backend.frames) == 2 and backend.frames[0].reshape(24, 32, 3)[0, 0, 0] == 77


def _has_loopback_device() -> bool:
    for name in glob.glob("/sys/devices/virtual/video4linux/*/name"):
        with open(name) as handle:
            label = handle.read().lower()
        if "loopback" in label or "dummy" in label:
            return True
    return False


@pytest.mark.skipif(_has_loopback_device(), reason="a v4l2loopback device exists here")
def test_virtual_camera_without_a_device_says_what_to_install():
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the missing-device message is checked on Linux")
    pytest.importorskip("pyvirtualcam", reason="pyvirtualcam comes with the camera extra")
    with pytest.raises(UserError, match="no virtual camera available .*v4l2loopback") as error:
        VirtualCameraSink(32, 24, fps=30)
    assert "\n" not in str(error.value)


def test_check_display_explains_what_to_use_instead(monkeypatch):
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the DISPLAY check applies on Linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(UserError, match="DISPLAY is not set.*--output none"):
        check_display()
    monkeypatch.setenv("DISPLAY", ":987")
    with pytest.raises(UserError, match="no X server answers on DISPLAY=:987"):
        check_display()


def test_a_missing_optional_library_names_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"a virtual camera needs pyvirtualcam: pip install 'streamdiff\[camera\]'"):
        VirtualCameraSink(32, 24, fps=30)
