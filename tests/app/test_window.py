"""The real OpenCV window under Xvfb: screenshots show the camera and AI panes, and keys sent with
xdotool change the prompt and the blend, and save a frame."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
import pytest

from app_fakes import CountingSource
from streamdiff.app.frames import fit_pane
from streamdiff.app.gallery import gallery_prompts
from streamdiff.app.runtime import Runtime, RuntimeOptions

TITLE = "streamdiff-window-test"
PANE = 128


class StillCamera(CountingSource):
    """A live camera that always sees the same colourful scene, so panes can be compared over time."""

    order = "bgr"

    def __init__(self) -> None:
        super().__init__(period=1 / 30)
        scene = np.zeros((240, 320, 3), np.uint8)
        scene[:, :160, 2] = 230  # red on the left (BGR)
        scene[:, 160:, 1] = 200  # green on the right
        scene[80:160, 100:220] = (255, 255, 255)
        self.scene = scene

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


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not reach the expected state")
        time.sleep(0.05)  # another process (the X server) changes this state: nothing to wait on


def xdotool(*args: str) -> str:
    return subprocess.run(["xdotool", *args], check=True, capture_output=True, text=True, timeout=20).stdout


def screenshot(window: str) -> np.ndarray:
    """The window's pixels (BGR), as ImageMagick's `import` grabs them from the X server."""
    import cv2

    png = subprocess.run(["import", "-window", window, "png:-"], check=True, capture_output=True, timeout=20).stdout
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def press(window: str, *keys: str) -> None:
    xdotool("windowfocus", "--sync", window)
    xdotool("key", "--delay", "150", *keys)  # one key per display tick: OpenCV keeps only the last key of a tick


def drive(runtime: Runtime, shots: dict, errors: list) -> None:
    try:
        wait_for(lambda: runtime.shared.ai.peek()[0] > 3 and runtime.display.frames > 10)
        window = xdotool("search", "--name", TITLE).split()[0]
        shots["before"] = screenshot(window)
        press(window, "n")
        wait_for(lambda: runtime.controls.prompt_index == 1)
        press(window, *["plus"] * 10)
        wait_for(lambda: runtime.controls.blend == 1.0)
        time.sleep(0.3)  # let a few frames with the new blend reach the screen
        shots["blended"] = screenshot(window)
        press(window, "s")
        wait_for(lambda: len(runtime.display.saved) == 1)
        press(window, "q")
    except BaseException as exc:
        errors.append(exc)
        runtime.shared.halt()


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_window_panes_and_keys(xvfb, tiny_engine, tmp_path):
    from streamdiff.app.sinks import WindowSink

    pytest.importorskip("cv2")
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

    expected_camera = fit_pane(camera.scene, PANE, PANE, "crop")
    before, blended = shots["before"], shots["blended"]
    assert before.shape == (PANE, 2 * PANE, 3)
    lower = slice(3 * PANE // 4, PANE)  # below the overlay text
    left, right = before[lower, :PANE], before[lower, PANE:]
    assert difference(left, expected_camera[lower]) < 3, "the left pane shows the camera"
    assert difference(right, expected_camera[lower]) > 20, "the right pane shows the AI output"
    assert difference(blended[lower, PANE:], expected_camera[lower]) < 3, "blend 1 shows the camera alone"

    assert runtime.controls.prompt_index == 1 and runtime.controls.blend == 1.0
    assert engine.prompts == [(gallery_prompts()[1], 4)]
    import cv2

    saved = cv2.imread(str(runtime.display.saved[0]))
    assert saved.shape == (PANE, PANE, 3) and difference(saved, expected_camera) < 3
