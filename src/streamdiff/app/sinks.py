"""Picture sinks: an OpenCV window, a video file (PyAV, H.264), a PNG sequence, a virtual camera
(pyvirtualcam) and a null sink, behind one small interface shared by the camera app, `streamdiff video`
and the web server.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamdiff.app.optional import import_av, require
from streamdiff.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi")
# Audio codecs the MP4/MOV muxers take as they are; anything else is re-encoded to AAC.
MP4_AUDIO = ("aac", "mp3", "alac", "ac3", "eac3", "opus")
OTHER_OUTPUTS = "--output none, --output out.mp4, --output frames/, --output virtual or --output ndi"


class Sink(Protocol):
    """`write()` takes a (H, W, 3) uint8 picture in `order`. A `monitor` sink (a window) is shown the
    camera and output panes with the overlay; the others get the output picture alone. `read_key()`
    gives a key the viewer pressed ("close" when the window was closed), or None."""

    order: str
    monitor: bool

    def write(self, image: np.ndarray) -> None: ...

    def read_key(self) -> str | None: ...

    def close(self) -> None: ...


class BaseSink:
    order = "rgb"
    monitor = False

    def read_key(self) -> str | None:
        return None

    def close(self) -> None:
        pass


class NullSink(BaseSink):
    """Discards pictures (headless runs and benchmarks); counts them."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        self.frames += 1


def check_display() -> None:
    """Refuse early, with a hint, where no window can open (Qt would abort the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    display = os.environ.get("DISPLAY", "")
    if not display and not os.environ.get("WAYLAND_DISPLAY"):
        raise UserError(f"no display to open a window on (DISPLAY is not set); use {OTHER_OUTPUTS}")
    local = display.startswith(":") and display[1:].split(".")[0].isdigit()
    if local and not os.path.exists(f"/tmp/.X11-unix/X{display[1:].split('.')[0]}"):
        raise UserError(f"no X server answers on DISPLAY={display}; use {OTHER_OUTPUTS}")


class WindowSink(BaseSink):
    """One OpenCV window; keys are read with waitKey, so it must live on the thread that shows it."""

    order = "bgr"
    monitor = True

    def __init__(self, title: str = "streamdiff", fullscreen: bool = False) -> None:
        cv2 = require("cv2", "a window")

        check_display()
        self.title = title
        flags = cv2.WINDOW_GUI_NORMAL | (cv2.WINDOW_NORMAL if fullscreen else cv2.WINDOW_AUTOSIZE)
        try:
            cv2.namedWindow(title, flags)
        except cv2.error as exc:
            raise UserError(f"cannot open a window ({_first_line(exc)}); use {OTHER_OUTPUTS}") from None
        if fullscreen:
            cv2.setWindowProperty(title, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        self._shown = False

    def write(self, image: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.title, image)
        self._shown = True

    def read_key(self) -> str | None:
        import cv2

        code = cv2.waitKeyEx(1)
        if code == -1:
            if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                return "close"
            return None
        code &= 0xFFFF
        return chr(code) if 0 < code < 128 else None

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)
        cv2.waitKey(1)  # lets the GUI backend process the destroy event


class VideoFileSink(BaseSink):
    """H.264 video through PyAV. Frames carry their own pts in `time_base` (so a source's timing,
    variable rates included, is kept) or are numbered at `fps`."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float,
                 time_base: Fraction | None = None, crf: int = 18) -> None:
        self._av = av = import_av()
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"video output must end in {', '.join(VIDEO_SUFFIXES)}; got {self.path.name}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = width - width % 2, height - height % 2  # yuv420p needs even sides
        self.container = av.open(str(self.path), "w")
        rate = Fraction(fps).limit_denominator(100000)
        self.stream = self.container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "veryfast"})
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        # The encoder counts in the same time base as the frames, so no timestamp is rounded onto another.
        # Kept apart: the muxer may change the stream's time base when it writes the header.
        self.time_base = time_base or 1 / rate
        self.stream.time_base = self.stream.codec_context.time_base = self.time_base
        self._audio: Any = None
        self._transcode = False
        self._audio_samples: int | None = None
        self.frames = 0

    def add_audio(self, template: Any) -> str:
        """Add an audio stream like `template` (copied if the container takes its codec, else AAC).
        Call before the first write; says what was done, e.g. "aac copied"."""
        context = template.codec_context
        if self.path.suffix.lower() == ".mkv" or context.name in MP4_AUDIO:
            self._audio = self.container.add_stream_from_template(template)
            return f"{context.name} copied"
        layout = "mono" if context.layout.nb_channels == 1 else "stereo"
        self._audio = self.container.add_stream("aac", rate=context.sample_rate, layout=layout)
        self._transcode = True
        return f"{context.name} re-encoded to AAC"

    def write_audio(self, packet: Any) -> None:
        """Mux one packet of the template's stream (decoding and re-encoding it if needed)."""
        if self._audio is None:
            return
        if not self._transcode:
            packet.stream = self._audio
            self.container.mux(packet)
            return
        for frame in packet.decode():
            self._encode_audio(frame)

    def _encode_audio(self, frame: Any) -> None:
        rate = frame.sample_rate
        if self._audio_samples is None:
            # Start where the source's audio starts, so it stays in step with the video's timestamps.
            start = frame.pts * frame.time_base * rate if frame.pts is not None and frame.time_base else 0
            self._audio_samples = max(0, round(start))
        # Timestamps counted in samples: the encoder refuses the source's own time base.
        frame.pts, frame.time_base = self._audio_samples, Fraction(1, rate)
        self._audio_samples += frame.samples
        self.container.mux(self._audio.encode(frame))

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        pixels = np.ascontiguousarray(image[: self.height, : self.width])
        frame = self._av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = self.frames if pts is None else pts
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        if self._transcode:
            self.container.mux(self._audio.encode(None))
        self.container.close()


class PngSequenceSink(BaseSink):
    """Numbered PNG files (frame_000000.png, ...) in a folder."""

    order = "bgr"

    def __init__(self, folder: str | Path, prefix: str = "frame_") -> None:
        self.folder, self.prefix, self.frames = Path(folder), prefix, 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        import cv2

        path = self.folder / f"{self.prefix}{self.frames:06d}.png"
        if not cv2.imwrite(str(path), image):
            raise UserError(f"cannot write {path}")
        self.frames += 1


class VirtualCameraSink(BaseSink):
    """A virtual camera that OBS and video-call apps can pick (pyvirtualcam: v4l2loopback on Linux,
    OBS's virtual camera on macOS and Windows)."""

    order = "bgr"

    def __init__(self, width: int, height: int, fps: float, backend: str | None = None,
                 device: str | None = None) -> None:
        pyvirtualcam = require("pyvirtualcam", "a virtual camera")
        try:
            self.camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.BGR,
                                              backend=backend, device=device)
        except RuntimeError as exc:
            raise UserError(
                f"no virtual camera available ({_first_line(exc)}); on Linux load v4l2loopback "
                "(modprobe v4l2loopback exclusive_caps=1), on macOS or Windows install OBS and start its "
                "virtual camera once"
            ) from None
        self.device = self.camera.device

    def write(self, image: np.ndarray) -> None:
        self.camera.send(np.ascontiguousarray(image))

    def close(self) -> None:
        self.camera.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
