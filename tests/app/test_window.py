"""The real OpenCV window under Xvfb: screenshots show the camera and AI panes, and keys sent with
xdotool change the prompt and the blend, and save a frame."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from app_fakes import CountingSource
from polling import wait_until

from streamdiff.app.frames import fit_pane
from streamdiff.app.gallery import gallery_prompts
from streamdiff.app.runtime import Runtime, RuntimeOptions

TITLE = "streamdiff-window-test"
PANE = 128


def still_scene() -> np.ndarray:
    """A colourful (240, 320, 3) BGR scene whose panes are easy to tell apart."""
    scene = np.zeros((240, 320, 3), np.uint8)
    scene[:, :160, 2] = 230  # red on the left (BGR)
    scene[:, 160:, 1] = 200  # green on the right
    scene[80:160, 100:220] = (255, 255, 255)
    return scene


class StillCamera(CountingSource):
    """A live camera that always sees the same scene, so panes can be compared over time."""

    order = "bgr"

    def __init__(self) -> None:
        super().__init__(period=1 / 30)
        self.scene = still_scene()

    def read(self):
        super().read()
        return self.scene


class PromptLog:
    """The tiny engine, with the prompt changes it receives written down."""

    def __init__(self, engine) -> None:
        self.engine, self.prompts = engine, []

    def update_prompt(self, prompt, negative_prompt=None, *, transition_frames=0):
        self.prompts.append((prompt, transition_frames))
        self.engine.update_prompt(prompt, negative_prompt, transition_frames=transition_frames)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def xdotool(*args: str) -> str:
    return subprocess.run(["xdotool", *args], check=True, capture_output=True, text=True, timeout=20).stdout


def screenshot(window: str) -> np.ndarray:
    """The window's pixels (BGR), as `xwd` dumps them from the X server."""
    dump = subprocess.run(["xwd", "-silent", "-id", window], check=True, capture_output=True, timeout=20).stdout
    return parse_xwd(dump)


def parse_xwd(dump: bytes) -> np.ndarray:
    """BGR pixels of a TrueColor XWD dump with 32 bits a pixel (what xwd writes for an Xvfb window)."""
    fields = struct.unpack(">25I", dump[:100])  # XWDFileHeader: 25 big-endian CARD32 fields
    header_size, width, height, byte_order = fields[0], fields[4], fields[5], fields[7]
    bits_per_pixel, bytes_per_line, masks, colours = fields[11], fields[12], fields[14:17], fields[19]
    assert bits_per_pixel == 32, f"expected 32 bits a pixel, got {bits_per_pixel}"
    start = header_size + 12 * colours  # the colour map (12 bytes an entry) comes before the pixels
    words = np.frombuffer(dump, ">u4" if byte_order else "<u4", count=height * bytes_per_line // 4, offset=start)
    pixels = words.reshape(height, bytes_per_line // 4)[:, :width]
    channels = [(pixels & mask) >> (mask & -mask).bit_length() - 1 for mask in reversed(masks)]  # B, G, R
    return np.dstack(channels).astype(np.uint8)


def settled_screenshot(window: str, shows, timeout: float = 15.0, expose_after: float = 3.0) -> np.ndarray:
    """A screenshot once it `shows` what the test expects, or the last one taken after `timeout`.

    The window is painted after OpenCV hands it a picture, in HighGUI's event loop, so a screenshot right
    after the display wrote a frame can precede the paint. And Qt, with no window manager (bare Xvfb), can
    miss the window's first Expose event when the machine is busy and then never paint it (seen in 5 of 30
    runs with three of these tests at once on two cores, the window black 10 s later; in the two runs checked,
    mapping the window again brought the picture): so after `expose_after` seconds it is mapped again once."""
    start = time.monotonic()
    shot = screenshot(window)
    exposed = False
    while not shows(shot) and time.monotonic() < start + timeout:
        if not exposed and time.monotonic() > start + expose_after:
            xdotool("windowunmap", "--sync", window)
            xdotool("windowmap", "--sync", window)
            exposed = True
        time.sleep(0.05)  # the X server's painting: nothing in this process to wait on
        shot = screenshot(window)
    return shot


def press(window: str, *keys: str) -> None:
    xdotool("windowfocus", "--sync", window)
    xdotool("key", "--delay", "150", *keys)  # one key per display tick: OpenCV keeps only the last key of a tick


def drive(runtime: Runtime, shots: dict, errors: list) -> None:
    try:
        wait_until(lambda: runtime.shared.ai.peek()[0] > 3 and runtime.display.frames > 10, "frames shown")
        window = xdotool("search", "--name", TITLE).split()[0]
        shots["before"] = settled_screenshot(window, lambda shot: shows_camera(shot, left=True))
        press(window, "n")
        wait_until(lambda: runtime.controls.prompt_index == 1, "next prompt after 'n'")
        press(window, *["plus"] * 10)
        wait_until(lambda: runtime.controls.blend == 1.0, "blend 1.0 after ten '+'")
        shots["blended"] = settled_screenshot(window, lambda shot: shows_camera(shot, left=False))
        press(window, "bracketleft")
        wait_until(lambda: runtime.runner.engine.strength < 0.6, "lower strength after '['")  # reached the engine
        press(window, "3")
        wait_until(lambda: runtime.runner.engine.config.denoising_steps == 3, "three steps after '3'")
        press(window, "s")
        wait_until(lambda: len(runtime.display.saved) == 1, "one frame saved after 's'")
        press(window, "q")
    except BaseException as exc:  # noqa: BLE001  reported by the test on the main thread
        errors.append(exc)
        runtime.shared.halt()


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


LOWER = slice(3 * PANE // 4, PANE)  # rows below the overlay text
EXPECTED_CAMERA = fit_pane(still_scene(), PANE, PANE, "crop")


def shows_camera(shot: np.ndarray, left: bool) -> bool:
    """Whether the left (camera) or right (AI) pane of a screenshot shows the camera's picture."""
    if shot.shape != (PANE, 2 * PANE, 3):
        return False
    pane = shot[LOWER, :PANE] if left else shot[LOWER, PANE:]
    return difference(pane, EXPECTED_CAMERA[LOWER]) < 3


@pytest.mark.timeout(180, method="thread")  # a hung X client cannot be interrupted by a signal
def test_window_panes_and_keys(xvfb, tiny_engine, tmp_path):
    from streamdiff.app.sinks import WindowSink

    loaded = list(sys.modules)
    assert "av" not in loaded or loaded.index("cv2") < loaded.index("av"), (
        "PyAV was loaded before OpenCV in this process, so an OpenCV window would hang (see conftest.py)")
    camera = StillCamera()
    engine = PromptLog(tiny_engine)
    options = RuntimeOptions(prompts=tuple(gallery_prompts()), pane_height=PANE, display_fps=30,
                             save_dir=tmp_path / "shots", transition_frames=4)
    runtime = Runtime(engine, camera, [WindowSink(title=TITLE)], options)
    shots: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []
    driver = threading.Thread(target=drive, args=(runtime, shots, errors), name="test-driver")
    driver.start()
    summary = runtime.run(duration=90)
    driver.join(timeout=30)
    assert not errors, errors
    assert summary.unjoined == ()

    before, blended = shots["before"], shots["blended"]
    assert before.shape == (PANE, 2 * PANE, 3)
    assert shows_camera(before, left=True), "the left pane shows the camera"
    assert difference(before[LOWER, PANE:], EXPECTED_CAMERA[LOWER]) > 20, "the right pane shows the AI output"
    assert shows_camera(blended, left=False), "blend 1 shows the camera alone"

    assert runtime.controls.prompt_index == 1 and runtime.controls.blend == 1.0
    assert runtime.controls.strength == pytest.approx(0.55) and runtime.controls.steps == 3
    assert tiny_engine.config.t_index_list == (22, 31, 40)  # the strength kept over the new count
    assert engine.prompts == [(gallery_prompts()[1], 4)]
    import cv2

    saved = cv2.imread(str(runtime.display.saved[0]))
    assert saved.shape == (PANE, PANE, 3) and difference(saved, EXPECTED_CAMERA) < 3
