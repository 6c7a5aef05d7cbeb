"""Fakes for the app's tests: an engine with the real one's app-facing methods, scripted sources and
sinks that record what reaches them, generated video clips, and a performer that plays a script against a
running runtime."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from streamdiff.app.sinks import BaseSink


class FakeEngine:
    """The engine's app-facing methods. Output = 1 - input (so the AI pane is recognisable), delayed by
    `latency_frames` calls like the stream batch. Records each call and the thread that made it."""

    pipelines_frames = False  # like an engine without captured steps: one frame at a time
    control_names: tuple[str, ...] = ()  # no ControlNet
    control_scales: tuple[float, ...] = ()
    ip_adapter_scale: float | None = None  # no IP-Adapter

    def __init__(self, width: int = 64, height: int = 64, latency_frames: int = 0, delay: float = 0.0,
                 fail_after: int | None = None, seed: int = 2, fit: str = "crop", frame_buffer_size: int = 1) -> None:
        self.config = SimpleNamespace(width=width, height=height, latency_frames=latency_frames, seed=seed, fit=fit,
                                      frame_buffer_size=frame_buffer_size, denoising_steps=latency_frames + 1,
                                      t_index_list=tuple(range(latency_frames + 1)))
        self.device = torch.device("cpu")
        self.strength = 1.0
        self.delay, self.fail_after = delay, fail_after
        self.inputs: list[int] = []  # the marker (first pixel value) of every input
        self.calls: list[tuple[str, str, tuple]] = []  # (method, thread name, arguments)
        self._in_flight: deque[torch.Tensor] = deque()
        self.stats = SimpleNamespace(frames=0, processed=0, skipped=0, last_similarity=None)

    def _record(self, method: str, *args) -> None:
        self.calls.append((method, threading.current_thread().name, args))

    def img2img(self, image, output_type=None):
        self._record("img2img")
        if self.fail_after is not None and len(self.inputs) >= self.fail_after:
            raise ValueError("the fake engine broke on purpose")
        self.inputs.append(marker(image))
        if self.delay:
            time.sleep(self.delay)  # stands in for the model's compute
        if not self._in_flight:  # warm-up: the first input fills every in-flight slot, as in the stream batch
            self._in_flight.extend([1.0 - image] * self.config.latency_frames)
        self._in_flight.append(1.0 - image)
        self.stats.frames += 1
        return self._in_flight.popleft()

    def flush(self, output_type=None):
        """latency_frames outputs, by repeating the last input, like the engine's flush."""
        if not self._in_flight:
            return []
        last = self._in_flight[-1]
        outputs = []
        for _ in range(self.config.latency_frames):
            self._in_flight.append(last)
            outputs.append(self._in_flight.popleft())
        return outputs

    def update_prompt(self, prompt, negative_prompt=None, *, transition_frames=0):
        self._record("update_prompt", prompt, transition_frames)

    def set_temporal(self, *, feedback=None, ema=None):
        self._record("set_temporal", feedback, ema)

    def set_seed(self, seed):
        self._record("set_seed", seed)

    def set_strength(self, strength):
        self._record("set_strength", strength)

    def set_steps(self, steps):
        self._record("set_steps", steps)

    def set_similarity_filter(self, threshold, max_skip=10):
        self._record("set_similarity_filter", threshold, max_skip)

    def engine_threads(self) -> set[str]:
        return {thread for _, thread, _ in self.calls}


def run_while_performing(runtime, perform, duration: float = 20.0) -> None:
    """Run `runtime` on this thread (its display loop wants the main one) while `perform` plays on another;
    the runtime stops when the script ends, and a script's failure fails the caller."""
    failures: list[BaseException] = []

    def play() -> None:
        try:
            perform()
        except BaseException as exc:  # noqa: BLE001  raised again on the test's thread below
            failures.append(exc)
        finally:
            runtime.shared.halt()

    performer = threading.Thread(target=play, name="performer")
    performer.start()
    try:
        runtime.run(duration=duration)
    finally:
        performer.join()
    if failures:
        raise failures[0]


def marked(value: int, width: int = 64, height: int = 64) -> np.ndarray:
    """A flat picture that carries `value` (red = value % 256, green = value // 256 % 256, blue = 0):
    the marker survives crop and resize."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[..., 0], picture[..., 1] = value % 256, value // 256 % 256
    return picture


def marker(pixels) -> int:
    """The value `marked` put in an RGB float tensor (1, 3, H, W) in [0, 1]."""
    return round(float(pixels[0, 0, 0, 0]) * 255) + 256 * round(float(pixels[0, 1, 0, 0]) * 255)


class CountingSource:
    """A live source of flat pictures marked 0, 1, 2, ... delivered every `period` seconds."""

    order = "rgb"
    live = True

    def __init__(self, period: float = 0.002, width: int = 64, height: int = 64, stop_after: int | None = None,
                 fail_after: int | None = None) -> None:
        self.name, self.fps = "counting", 1.0 / period
        self.period, self.width, self.height = period, width, height
        self.stop_after, self.fail_after = stop_after, fail_after
        self.count = 0
        self.closed = False

    def read(self):
        if self.fail_after is not None and self.count >= self.fail_after:
            raise OSError("the fake camera broke on purpose")
        if self.stop_after is not None and self.count >= self.stop_after:
            return None
        time.sleep(self.period)  # a paced source waits on its own clock
        self.count += 1
        return marked(self.count - 1, self.width, self.height)

    def close(self) -> None:
        self.closed = True


class RecordingSink(BaseSink):
    """Keeps the written pictures' markers (and the last picture); presses scripted keys:
    keys[n] is read right after the n-th write (1-based)."""

    def __init__(self, keys: dict[int, str] | None = None, monitor: bool = False, order: str = "rgb",
                 fail_at: int | None = None) -> None:
        self.keys, self.monitor, self.order, self.fail_at = dict(keys or {}), monitor, order, fail_at
        self.writes = 0
        self.last: np.ndarray | None = None
        self.closed = False

    def write(self, image: np.ndarray) -> None:
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            raise RuntimeError("the fake sink broke on purpose")
        self.last = image

    def read_key(self) -> str | None:
        return self.keys.pop(self.writes, None)

    def close(self) -> None:
        self.closed = True


def make_clip(path: Path, frames: int = 12, fps: int = 25, width: int = 96, height: int = 80,
              audio: bool = True) -> Path:
    """An H.264 clip whose frame k is flat grey 20*k (and a 440 Hz tone in AAC)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=44100, layout="mono") if audio else None
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(marked(20 * k, width, height), format="rgb24")
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            _write_tone(container, sound, frames / fps)
    return path


def _write_tone(container, stream, seconds: float) -> None:
    import av

    count = int(44100 * seconds)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(count) / 44100)).astype(np.float32)[None, :]
    for start in range(0, count, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = 44100, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
