"""The camera app's three threads: capture and inference are named worker threads; the display loop
runs on the calling (main) thread, which owns the window on every platform.

    capture thread --> camera slot --> inference thread --> AI slot
                           |                                  |
                           +--------> display loop <----------+   (blend + overlay, at display rate)

Slots keep only the newest value, so no one ever waits for a slower thread and nothing queues up.
Shutdown is one stop Event: set it, wake the slots, join each thread within a shared time budget.
An exception in any thread stops all of them and is raised again on the main thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamdiff.app.engine_io import AiFrame, EngineRunner, StepTimings
from streamdiff.app.frames import Frame
from streamdiff.app.keys import Controls, engine_controls
from streamdiff.app.remote import apply_changes
from streamdiff.app.slots import LatestSlot, RateMeter
from streamdiff.app.sources import Source
from streamdiff.app.style import split_style
from streamdiff.errors import UserError, first_line

logger = logging.getLogger(__name__)


MIN_PANE_HEIGHT = 16  # pixels


@dataclass(frozen=True)
class RuntimeOptions:
    prompts: tuple[str, ...] = ("",)
    fit: str = "crop"
    display_fps: float = 30.0  # 0: as fast as the display loop can go
    pane_height: int = 512
    transition_frames: int = 8
    save_dir: Path = Path("captures")
    loop: bool = False  # restart a file source at its end instead of ending
    retry_interval: float = 1.0  # seconds between attempts to reopen a lost live source
    join_timeout: float = 1.0
    start_timeout: float = 30.0  # for the first camera frame
    style_name: str | None = None  # the name of the style picture the engine started with (--style-image), if any

    def __post_init__(self) -> None:
        if self.display_fps < 0 or self.pane_height < MIN_PANE_HEIGHT or self.join_timeout <= 0:
            raise ValueError(
                f"display_fps must be >= 0, pane_height >= {MIN_PANE_HEIGHT} and join_timeout > 0; got "
                f"{self.display_fps}, {self.pane_height}, {self.join_timeout}"
            )


class WorkerError(RuntimeError):
    """A worker thread failed; the message names the thread and the cause."""


@dataclass
class Shared:
    """Everything the threads share: slots, events, meters and counters (each with one writer)."""

    stop: threading.Event = field(default_factory=threading.Event)
    camera_ready: threading.Event = field(default_factory=threading.Event)
    source_ended: threading.Event = field(default_factory=threading.Event)
    camera: LatestSlot[Frame] = field(default_factory=LatestSlot)
    ai: LatestSlot[AiFrame] = field(default_factory=LatestSlot)
    controls: LatestSlot[Controls] = field(default_factory=LatestSlot)
    remote: queue.SimpleQueue[dict[str, Any]] = field(default_factory=queue.SimpleQueue)  # checked changes (OSC, MIDI)
    notice: LatestSlot[str] = field(default_factory=LatestSlot)
    camera_rate: RateMeter = field(default_factory=RateMeter)
    ai_rate: RateMeter = field(default_factory=RateMeter)
    display_rate: RateMeter = field(default_factory=RateMeter)
    consumed: int = 0  # the camera slot version the inference thread took last
    dropped: int = 0  # captured frames the inference thread never took (a newer one replaced them)
    failure: tuple[str, BaseException] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, thread: str, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = (thread, exc)
        self.halt()

    def halt(self) -> None:
        self.stop.set()
        for slot in (self.camera, self.ai):
            slot.wake()


def capture_worker(source: Source, reopen: Callable[[], Source] | None, shared: Shared,
                   retry_interval: float = 1.0, loop: bool = False) -> None:
    """Read the source as fast as it delivers; every picture replaces the previous one in the slot."""
    index = 0
    current: Source | None = source
    try:
        while current is not None and not shared.stop.is_set():
            image = current.read()
            if image is None:
                current.close()
                lost, current = current, None
                current = _recover(lost, reopen, shared, retry_interval, loop)
                continue
            shared.camera.put(Frame(image, current.order, index, time.perf_counter()))
            index += 1
            shared.camera_rate.tick()
            shared.camera_ready.set()
    finally:
        if current is not None:
            current.close()


def _recover(lost: Source, reopen: Callable[[], Source] | None, shared: Shared,
             retry_interval: float, loop: bool) -> Source | None:
    """A lost live source is reopened every `retry_interval` s; a file restarts with `loop`, else ends."""
    if reopen is None or not (lost.live or loop):
        shared.source_ended.set()
        return None
    if not lost.live:
        return reopen()
    shared.notice.put(f"{lost.name} lost; retrying every {retry_interval:g} s")
    while not shared.stop.wait(retry_interval):
        try:
            source = reopen()
        except (UserError, OSError) as exc:
            shared.notice.put(f"{lost.name} lost ({exc}); retrying every {retry_interval:g} s")
            continue
        shared.notice.put("")
        return source
    return None


def inference_worker(runner: EngineRunner, shared: Shared) -> None:
    """Always take the newest captured frame; controls changed by keys are applied between frames."""
    for version, skipped, frame in shared.camera.newer(shared.stop):
        shared.dropped += skipped
        _, controls = shared.controls.peek()
        runner.apply(controls)
        if not controls.paused:
            shared.ai.put(runner.step(frame, controls.mirror))
            shared.ai_rate.tick()
        shared.consumed = version


def _guarded(name: str, work: Callable[..., None], shared: Shared, *args: Any) -> threading.Thread:
    def run() -> None:
        try:
            work(*args)
        except BaseException as exc:  # noqa: BLE001  every failure must reach the main thread, whatever its type
            shared.fail(name, exc)

    return threading.Thread(target=run, name=f"streamdiff-{name}", daemon=True)


@dataclass(frozen=True)
class RunSummary:
    seconds: float
    captured: int
    inferred: int
    displayed: int
    dropped: int
    shutdown_seconds: float
    unjoined: tuple[str, ...]
    timings: StepTimings

    def rate(self, count: int) -> float:
        return count / self.seconds if self.seconds > 0 else 0.0


class Runtime:
    """Run a source through the engine into sinks until quit, Ctrl-C, the window closing or the end."""

    def __init__(self, engine: Any, source: Source, sinks: Sequence[Any], options: RuntimeOptions,
                 controls: Controls | None = None, reopen: Callable[[], Source] | None = None) -> None:
        from streamdiff.app.display import Display

        self.options, self.sinks = options, list(sinks)
        self.shared = Shared()
        self.shared.controls.put(controls or Controls(seed=engine.config.seed, **engine_controls(engine)))
        self.runner = EngineRunner(engine, options.prompts, options.fit, options.transition_frames,
                                   style_name=options.style_name)
        self.display = Display(self.shared, self.sinks, options, (engine.config.width, engine.config.height),
                               self.runner.prompts, self.runner.control_names, self.runner.styles)
        shared = self.shared
        self.threads = [
            _guarded("capture", capture_worker, shared, source, reopen, shared, options.retry_interval, options.loop),
            _guarded("inference", inference_worker, shared, self.runner, shared),
        ]

    @property
    def controls(self) -> Controls:
        return self.display.controls

    def remote_change(self, change: dict[str, Any]) -> None:
        """A control change from another thread (OSC, MIDI): checked now (ControlError), applied by the display loop
        at its next frame, where the keys are applied. A style picture in it is read now; the style inbox's thread
        makes its pixels, and the inference thread hands them to the engine before its next frame after that."""
        picture, controls = split_style(change, self.display.controls)
        if controls:
            apply_changes(self.display.controls, controls, self.display.prompt_book)
            self.shared.remote.put(controls)
        if picture is not None:
            self.runner.styles.put(picture)

    def run(self, duration: float | None = None) -> RunSummary:
        """Block in the display loop (call it from the main thread); raise what any thread raised."""
        start = time.perf_counter()
        for thread in self.threads:
            thread.start()
        try:
            if self._wait_ready():
                deadline = None if duration is None else time.perf_counter() + duration
                self.display.loop(deadline)
        except KeyboardInterrupt:
            logger.info("interrupted; stopping")
        except BaseException as exc:  # noqa: BLE001  raised again below, after the workers stopped
            self.shared.fail("display", exc)
        seconds = time.perf_counter() - start
        shutdown = self.shutdown()
        self._raise_failure()
        return self._summary(seconds, shutdown)

    def _wait_ready(self) -> bool:
        deadline = time.perf_counter() + self.options.start_timeout
        while not self.shared.camera_ready.wait(0.05):
            if self.shared.stop.is_set() or self.shared.source_ended.is_set():
                return False
            if time.perf_counter() > deadline:
                raise UserError(f"no picture from the source within {self.options.start_timeout:g} s")
        return True

    def shutdown(self) -> float:
        """Stop every thread and join them within the join budget; close the sinks. Returns seconds."""
        start = time.perf_counter()
        self.shared.halt()
        deadline = start + self.options.join_timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.perf_counter()))
        styles_stopped = self.runner.close(max(0.0, deadline - time.perf_counter()))
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001  a sink that cannot finish its file fails the run too
                self.shared.fail("display", exc)
        self.unjoined = tuple(t.name for t in self.threads if t.is_alive()) + (() if styles_stopped else
                                                                               ("streamdiff-style",))
        if self.unjoined:
            logger.warning("threads still running after %.1f s: %s", self.options.join_timeout,
                           ", ".join(self.unjoined))
        return time.perf_counter() - start

    def _raise_failure(self) -> None:
        if self.shared.failure is None:
            return
        thread, exc = self.shared.failure
        if isinstance(exc, (UserError, FileNotFoundError)):
            raise exc
        raise WorkerError(f"the {thread} thread failed: {first_line(exc)}") from exc

    def _summary(self, seconds: float, shutdown: float) -> RunSummary:
        shared = self.shared
        return RunSummary(seconds, shared.camera_rate.count, shared.ai_rate.count, shared.display_rate.count,
                          shared.dropped, shutdown, self.unjoined, self.runner.timings)
