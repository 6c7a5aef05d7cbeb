"""The display loop: blend the newest camera picture with the newest AI picture at display rate, draw
the overlay, feed the sinks and turn the viewer's keys into controls. It never waits for inference.

Layout: a VJ watches the input and the result on the laptop while the projector (or the virtual
camera) shows the result alone, so the window shows camera | output side by side by default and the
other sinks get the output picture only; `l` (or --fullscreen) puts the output alone in the window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamdiff.app.frames import convert_order, fit_pane, resize
from streamdiff.app.keys import Controls, handle_key
from streamdiff.app.overlay import OverlayInfo, draw_overlay
from streamdiff.app.remote import ControlError, PromptBook, apply_changes, describe
from streamdiff.temporal import blend

if TYPE_CHECKING:
    from streamdiff.app.runtime import RuntimeOptions, Shared
    from streamdiff.app.style import StyleInbox

logger = logging.getLogger(__name__)

NOTICE_SECONDS = 3.0


def pane_size(pane_height: int, render_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a pane: the render aspect at `pane_height`, even sides (video encoders)."""
    width = round(pane_height * render_size[0] / render_size[1])
    return width + width % 2, pane_height + pane_height % 2


class Display:
    """The display loop's state; used from the thread that calls `loop` (the main thread) only."""

    def __init__(self, shared: Shared, sinks: Sequence[Any], options: RuntimeOptions,
                 render_size: tuple[int, int], prompts: list[str] | None = None,
                 control_names: tuple[str, ...] = (), styles: StyleInbox | None = None) -> None:
        self.shared, self.sinks, self.options = shared, list(sinks), options
        self.control_names = control_names  # the overlay's labels of the ControlNets' scales
        self.styles = styles  # the overlay names the style picture in use (the inference thread sets it)
        # The inference thread's list: a remote can add prompts to it (the keys then cycle through those too).
        self.prompt_book = PromptBook(prompts if prompts is not None else list(options.prompts))
        self.pane_width, self.pane_height = pane_size(options.pane_height, render_size)
        _, controls = shared.controls.peek()
        self.controls: Controls = controls or Controls()
        self.frames = 0
        self.saved: list[Path] = []
        self._camera_key: tuple[int, bool] | None = None
        self._camera_pane: np.ndarray | None = None
        self._order = "rgb"
        self._ai_version = 0
        self._ai_pane: np.ndarray | None = None
        self._notice, self._notice_until = "", 0.0

    def loop(self, deadline: float | None = None) -> None:
        """Show frames at `display_fps` until stopped, past `deadline`, or at the end of a file source
        once inference has taken its last frame."""
        fps = self.options.display_fps
        period = 1.0 / fps if fps > 0 else 0.0
        next_tick = time.perf_counter()
        stop = self.shared.stop
        while not stop.is_set():
            self.tick()
            now = time.perf_counter()
            if (deadline is not None and now >= deadline) or self._source_done():
                return
            if period:
                next_tick += period
                if next_tick < now - period:  # fell behind: pick up the rhythm instead of rushing
                    next_tick = now
                wake = next_tick if deadline is None else min(next_tick, deadline)
                stop.wait(max(0.0, wake - now))

    def _source_done(self) -> bool:
        shared = self.shared
        return shared.source_ended.is_set() and shared.consumed == shared.camera.peek()[0]

    def tick(self) -> None:
        """One display frame: apply remote changes, compose, write to every sink, read keys."""
        self._apply_remote()
        output, camera = self._compose()
        monitor: np.ndarray | None = None
        for sink in self.sinks:
            if sink.monitor:
                if monitor is None:
                    monitor = self._monitor_view(camera, output)
                sink.write(convert_order(monitor, self._order, sink.order))
            else:
                sink.write(convert_order(output, self._order, sink.order))
        self.frames += 1
        self.shared.display_rate.tick()
        for sink in self.sinks:
            key = sink.read_key()
            if key:
                self.on_key(key, output)

    def _compose(self) -> tuple[np.ndarray, np.ndarray]:
        """(output, camera pane): the output is the camera pane blended over the AI pane."""
        controls = self.controls
        if not (controls.paused and self._camera_pane is not None):
            self._update_panes(controls)
        camera = self._camera_pane
        assert camera is not None  # the loop starts after the first captured frame
        ai = self._ai_pane if self._ai_pane is not None else camera
        return blend(camera, ai, controls.blend), camera

    def _update_panes(self, controls: Controls) -> None:
        version, frame = self.shared.camera.peek()
        # Redo the camera pane only for a new picture (the display may run faster than the camera).
        if frame is not None and (version, controls.mirror) != self._camera_key:
            self._camera_key = (version, controls.mirror)
            self._order = frame.order
            self._camera_pane = fit_pane(frame.image, self.pane_width, self.pane_height, self.options.fit,
                                         controls.mirror)
        version, ai = self.shared.ai.peek()
        if ai is not None and version != self._ai_version:
            self._ai_version = version
            self._ai_pane = resize(convert_order(ai.image, ai.order, self._order), self.pane_width,
                                   self.pane_height)

    def _monitor_view(self, camera: np.ndarray, output: np.ndarray) -> np.ndarray:
        controls = self.controls
        view = np.hstack([camera, output]) if controls.layout == "side" else output.copy()
        return draw_overlay(view, self._overlay_info(), controls)

    def _overlay_info(self) -> OverlayInfo:
        shared, prompts = self.shared, self.prompt_book.prompts
        _, ai = shared.ai.peek()
        latency = None if ai is None else 1000.0 * (time.perf_counter() - ai.source_time)
        index = self.controls.prompt_index % len(prompts)
        return OverlayInfo(prompts[index], index + 1, len(prompts), shared.ai_rate.rate(),
                           shared.camera_rate.rate(), shared.display_rate.rate(), latency,
                           self._current_notice(ai is None), self.control_names,
                           None if self.styles is None else self.styles.current)

    def _current_notice(self, warming_up: bool) -> str:
        _, sticky = self.shared.notice.peek()
        if sticky:
            return sticky
        if time.perf_counter() < self._notice_until:
            return self._notice
        return "warming up the model..." if warming_up else ""

    def say(self, text: str) -> None:
        self._notice, self._notice_until = text, time.perf_counter() + NOTICE_SECONDS

    def _apply_remote(self) -> None:
        """Changes from a remote (OSC, MIDI), in the order they came; checked when they were sent."""
        remote = self.shared.remote
        while not remote.empty():
            change = remote.get_nowait()
            try:
                self._set_controls(apply_changes(self.controls, change, self.prompt_book))
            except ControlError as exc:  # valid when sent, not after a change in between
                logger.warning("remote control: %s", exc)
                continue
            self.say(describe(change))

    def _set_controls(self, controls: Controls) -> None:
        if controls != self.controls:
            self.controls = controls
            self.shared.controls.put(controls)

    def on_key(self, key: str, output: np.ndarray) -> None:
        controls, command = handle_key(key, self.controls, len(self.prompt_book.prompts))
        self._set_controls(controls)
        if command == "quit":
            self.shared.halt()
        elif command == "save":
            path = save_png(output, self._order, self.options.save_dir)
            self.saved.append(path)
            self.say(f"saved {path}")


def save_png(image: np.ndarray, order: str, folder: Path) -> Path:
    """Write a timestamped PNG (streamdiff_YYYYmmdd_HHMMSS_mmm.png) that never overwrites another."""
    import cv2

    from streamdiff.errors import UserError

    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(now)) + f"_{int(now * 1000) % 1000:03d}"
    path, n = folder / f"streamdiff_{stamp}.png", 1
    while path.exists():
        path, n = folder / f"streamdiff_{stamp}_{n}.png", n + 1
    if not cv2.imwrite(str(path), convert_order(image, order, "bgr")):
        raise UserError(f"cannot write {path}")
    return path
