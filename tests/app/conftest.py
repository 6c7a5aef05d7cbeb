"""Fixtures for the app's tests: fakes, the tiny model as an engine, a generated clip and an Xvfb display."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# OpenCV before anything loads PyAV: PyAV's wheels bundle their own libxcb, and an OpenCV (Qt) window
# created after that copy was loaded hangs. The app orders these imports the same way (sources.import_av).
try:
    import cv2  # noqa: F401  isort: skip
except ImportError:  # tests that need OpenCV fail on their own, with a clearer message
    pass

from app_fakes import FakeEngine, make_clip


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """`streamdiff camera` sets torch's thread count for the CPU; the tests after it keep theirs."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


def _free_display() -> int:
    for number in range(90, 200):
        if not os.path.exists(f"/tmp/.X11-unix/X{number}") and not os.path.exists(f"/tmp/.X{number}-lock"):
            return number
    raise RuntimeError("no free X display number in 90..199")


@pytest.fixture(scope="session")
def xvfb():
    """A private X server (DISPLAY set for the session's window tests); skipped where Xvfb or xdotool
    are missing (CI installs both)."""
    missing = [tool for tool in ("Xvfb", "xdotool", "xwd") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"window tests need {', '.join(missing)} (apt-get install xvfb xdotool x11-apps)")
    number = _free_display()
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + 10
    while not socket.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"Xvfb :{number} did not start")
        time.sleep(0.05)  # waiting for another process's socket: there is no event to wait on
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield f":{number}"
    if previous is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = previous
    server.terminate()
    server.wait(timeout=5)
