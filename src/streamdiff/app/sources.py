"""Picture sources: OpenCV cameras, video files and streams (PyAV), screen regions (mss), image folders
and an animated test pattern, behind one small interface shared by the camera app, `streamdiff video`
and the web server.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamdiff.app.ndi import is_ndi
from streamdiff.app.optional import import_av, require
from streamdiff.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PATTERN_NAMES = ("pattern", "test", "testpattern")


class Source(Protocol):
    """`read()` gives the next (H, W, 3) uint8 picture in `order`, or None when there is none:
    a file has ended, or a live device or stream was lost (the runtime then retries)."""

    name: str
    order: str
    fps: float | None
    live: bool

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class CameraNotFoundError(UserError):
    """An explicitly chosen camera does not open; the message lists the cameras that do."""


class AnimatedPattern:
    """An animated test card: scrolling colour bars and a moving square, paced at `fps`."""

    order = "rgb"
    live = True

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0, clock=time.perf_counter) -> None:
        self.name, self.fps, self.width, self.height = "test pattern", fps, width, height
        self._pacer, self._count = Pacer(fps, clock), 0
        # Wider than a frame by one colour cycle, so that a scrolled frame is a slice, not a recomputation.
        shape = (height, width + 256)
        x = np.arange(shape[1])[None, :]
        y = np.arange(height)[:, None]
        red = np.broadcast_to((x * 2) % 256, shape)
        green = np.broadcast_to(y * 255 // max(1, height - 1), shape)
        blue = np.broadcast_to(255 - x % 256, shape)
        self._base = np.stack([red, green, blue], axis=-1).astype(np.uint8)

    def read(self) -> np.ndarray:
        self._pacer.wait()
        t = self._count
        self._count += 1
        frame = self._base[:, (t * 4) % 256 : (t * 4) % 256 + self.width].copy()
        side = max(8, self.height // 6)
        cx = int((self.width - side) * (0.5 + 0.5 * np.sin(t / 20.0)))
        cy = int((self.height - side) * (0.5 + 0.5 * np.cos(t / 27.0)))
        frame[cy : cy + side, cx : cx + side] = 255
        return frame

    def close(self) -> None:
        pass


class Pacer:
    """A paced source waits on its own clock, never longer than one frame (so shutdown stays quick);
    after a stall (e.g. while a model loads) it resumes the rhythm instead of bursting to catch up."""

    def __init__(self, fps: float, clock=time.perf_counter) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive; got {fps}")
        self.period, self.clock = 1.0 / fps, clock
        self._next: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self._next is None or now - self._next > self.period:
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period


class Paced:
    """Plays a file source at its own frame rate, as a camera would deliver it."""

    def __init__(self, source: Source, fps: float | None = None, clock=time.perf_counter) -> None:
        self.source = source
        self.fps = fps or source.fps or 30.0
        self.name, self.order, self.live = source.name, source.order, source.live
        self._pacer = Pacer(self.fps, clock)

    def read(self) -> np.ndarray | None:
        self._pacer.wait()
        return self.source.read()

    def close(self) -> None:
        self.source.close()


class OpenCVCamera:
    """A local camera through OpenCV (index or device path); gives BGR, as OpenCV does."""

    order = "bgr"
    live = True

    def __init__(self, device: int | str, width: int | None = None, height: int | None = None) -> None:
        cv2 = require("cv2", "a camera")

        self.name = f"camera {device}"
        self._capture = _quiet_open(device)
        if not self._capture.isOpened():
            raise CameraNotFoundError(f"camera {device} not found; cameras found: {_describe(list_cameras())}")
        # One buffered frame: the newest picture, not one from a queue filled while we were busy.
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if width and height:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or None

    def read(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        return image if ok else None

    def close(self) -> None:
        self._capture.release()


def _quiet_open(device: int | str):
    """Open a capture without OpenCV's own warnings: a missing camera is reported by us, once."""
    import cv2

    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(device)
    finally:
        logging.setLogLevel(level)


def list_cameras(max_index: int = 8) -> list[str]:
    """Cameras that open: device paths on Linux, indices elsewhere."""
    if sys.platform.startswith("linux"):
        candidates: list[int | str] = sorted(glob.glob("/dev/video*"), key=_device_number)
    else:
        candidates = list(range(max_index))
    found = []
    for device in candidates:
        capture = _quiet_open(device)
        if capture.isOpened():
            found.append(str(device))
        capture.release()
    return found


def _device_number(path: str) -> int:
    digits = path.removeprefix("/dev/video")
    return int(digits) if digits.isdigit() else 1 << 30


def _describe(cameras: list[str]) -> str:
    return ", ".join(cameras) if cameras else "none"


class ImageFolder:
    """Image files (a folder's, sorted by name, or a single file) played as frames; RGB."""

    order = "rgb"
    live = False

    def __init__(self, path: str | Path, fps: float = 30.0) -> None:
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        self.name, self.fps, self._files, self._next = str(path), fps, files, 0

    def read(self) -> np.ndarray | None:
        from PIL import Image, UnidentifiedImageError

        if self._next >= len(self._files):
            return None
        file = self._files[self._next]
        self._next += 1
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {file}: {exc}") from None

    def close(self) -> None:
        pass


class ScreenRegion:
    """A region of the screen through mss (left, top, width, height), or a whole monitor; BGR."""

    order = "bgr"
    live = True

    def __init__(self, region: tuple[int, int, int, int] | None = None, monitor: int = 1, fps: float = 30.0) -> None:
        mss = require("mss", "screen capture")

        self.name, self.fps = "screen", fps
        try:
            with mss.mss() as grabber:
                monitors = grabber.monitors
        except mss.exception.ScreenShotError as exc:
            raise UserError(f"cannot capture the screen: {exc}") from None
        if region is None:
            if not 0 < monitor < len(monitors):
                raise UserError(f"monitor {monitor} not found; monitors 1..{len(monitors) - 1} exist")
            box = monitors[monitor]
            region = (box["left"], box["top"], box["width"], box["height"])
        self.region = {"left": region[0], "top": region[1], "width": region[2], "height": region[3]}
        self._grabber = None

    def read(self) -> np.ndarray:
        import mss

        # mss keeps per-thread display handles: create it in the thread that grabs.
        if self._grabber is None:
            self._grabber = mss.mss()
        shot = np.asarray(self._grabber.grab(self.region))  # (H, W, 4) BGRA
        return np.ascontiguousarray(shot[:, :, :3])

    def close(self) -> None:
        if self._grabber is not None:
            self._grabber.close()


class VideoFile:
    """A video file or network stream decoded by PyAV; RGB. With `audio`, audio packets of the first
    audio stream go, undecoded and in file order, to `on_audio` (set it before reading)."""

    order = "rgb"

    def __init__(self, url: str | Path, live: bool = False, audio: bool = False) -> None:
        self.name, self.live = str(url), live
        self._container = _open_container(self.name, live)
        if not self._container.streams.video:
            self._container.close()
            raise UserError(f"{self.name} holds no video stream")
        self.stream = self._container.streams.video[0]
        self.stream.thread_type = "AUTO"
        audio_streams = self._container.streams.audio
        self.audio_stream = audio_streams[0] if audio and audio_streams else None
        self.fps = float(self.stream.average_rate) if self.stream.average_rate else None
        self.frame_count = self.stream.frames or None
        self.on_audio: Callable[[object], None] | None = None
        # One converter for every frame: a frame's own to_ndarray(format=...) builds a new swscale context
        # each time, which costs more than decoding the frame (~2 ms at 1280x720).
        self._to_rgb = import_av().video.reformatter.VideoReformatter()
        self._frames = self._decode()

    def _decode(self):
        streams = [self.stream] + ([self.audio_stream] if self.audio_stream is not None else [])
        for packet in self._container.demux(*streams):
            if packet.stream is self.audio_stream:
                if packet.dts is not None and self.on_audio is not None:
                    self.on_audio(packet)
                continue
            yield from packet.decode()

    def read_frame(self):
        """The next decoded av.VideoFrame (with its pts), or None at the end."""
        av = import_av()

        try:
            return next(self._frames, None)
        except av.error.FFmpegError as exc:
            if self.live:
                return None  # a dropped stream: the runtime reopens it
            raise UserError(f"{self.name} is corrupt or unsupported: {_reason(exc)}") from None

    def rgb(self, frame: Any) -> np.ndarray:
        """A frame read_frame gave, as an (H, W, 3) uint8 RGB picture."""
        return self._to_rgb.reformat(frame, format="rgb24").to_ndarray()

    def read(self) -> np.ndarray | None:
        frame = self.read_frame()
        return None if frame is None else self.rgb(frame)

    def close(self) -> None:
        self._container.close()


def _open_container(url: str, live: bool):
    av = import_av()

    options = {"rtsp_transport": "tcp"} if url.startswith("rtsp") else {}
    try:
        # A read timeout keeps a dead stream from blocking the capture thread for ever.
        return av.open(url, options=options, timeout=(10.0, 5.0) if live else None)
    except av.error.FileNotFoundError:
        raise FileNotFoundError(f"no such video file: {url}") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot open video {url}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    strerror = getattr(exc, "strerror", None)
    return strerror or str(exc).splitlines()[0]


def parse_region(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"screen region must be LEFT,TOP,WIDTH,HEIGHT in pixels; got {text!r}")
    left, top, width, height = (int(p) for p in parts)
    if width <= 0 or height <= 0:
        raise ValueError(f"screen region width and height must be positive; got {width}x{height}")
    return left, top, width, height


def open_source(spec: str, *, pace_files: bool = True) -> Source:
    """The source a --camera value names: an index, /dev/videoN, a video file, a stream URL,
    an image or a folder of images, `screen[:LEFT,TOP,WIDTH,HEIGHT]`, an NDI source (`ndi[:NAME]`,
    `ndi://HOST:PORT`), or `pattern`."""
    spec = spec.strip()
    if spec.lower() in PATTERN_NAMES:
        return AnimatedPattern()
    if spec.lower() == "screen" or spec.lower().startswith("screen:"):
        region = spec.partition(":")[2]
        return Paced(ScreenRegion(parse_region(region) if region else None))
    if is_ndi(spec):
        from streamdiff.app.ndi import NdiSource

        return NdiSource(spec)
    if spec.isdigit():
        return OpenCVCamera(int(spec))
    if spec.startswith("/dev/video"):
        return OpenCVCamera(spec)
    if "://" in spec:
        return VideoFile(spec, live=True)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no such file, folder or camera: {spec}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        source: Source = ImageFolder(path)
    else:
        source = VideoFile(path)
    return Paced(source) if pace_files else source


Opener = Callable[[], Source]


def default_camera_available() -> bool:
    """Whether camera 0 opens (the default when --camera is not given)."""
    if sys.platform.startswith("linux") and not os.path.exists("/dev/video0"):
        return False
    capture = _quiet_open(0)
    try:
        return capture.isOpened()
    finally:
        capture.release()
