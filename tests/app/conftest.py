"""Fixtures for the app's tests: fakes, the tiny model as an engine, a generated clip and an Xvfb display."""

from __future__ import annotations

import os
import select
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


@pytest.fixture(scope="session")
def xvfb():
    """A private X server (DISPLAY set for the session's window tests); skipped where Xvfb or xdotool
    are missing (CI installs both). Xvfb picks a free display number itself (-displayfd) and writes it once it
    listens, so parallel test processes never race for one."""
    missing = [tool for tool in ("Xvfb", "xdotool", "xwd") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"window tests need {', '.join(missing)} (apt-get install xvfb xdotool x11-apps)")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        ready, _, _ = select.select([pipe], [], [], 10)
        number = pipe.readline().strip() if ready else ""
    if not number.isdigit():
        server.kill()
        pytest.fail(f"Xvfb did not start (exit code {server.poll()})")
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield f":{number}"
    if previous is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = previous
    server.terminate()
    server.wait(timeout=5)


@pytest.fixture(scope="session")
def jack_server():
    """A private JACK server with no sound card (its dummy driver), and mido on rtmidi's JACK API: real MIDI
    ports on a machine without a MIDI system. Skipped where jackd is missing (CI installs it)."""
    if shutil.which("jackd") is None:
        pytest.skip("the MIDI tests need a JACK server (apt-get install jackd2); CI installs it")
    import mido

    name = f"streamdiff-tests-{os.getpid()}"
    saved = {key: os.environ.get(key) for key in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    os.environ.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
    # Synchronous, with a long client timeout: on a busy 2-core machine the server waits for a slow client
    # instead of dropping its cycle (and the MIDI events in it).
    server = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "--sync", "--timeout", "5000",
                               "-d", "dummy", "-r", "48000", "-p", "1024"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mido.set_backend("mido.backends.rtmidi/UNIX_JACK")
    try:
        _wait_for_jack(mido, server)
        yield name
    finally:
        mido.set_backend()
        server.terminate()
        server.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_for_jack(mido, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            mido.get_output_names()
            return
        except Exception:  # noqa: BLE001  rtmidi's SystemError until the server answers
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jackd did not start (exit code {server.poll()})") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def controller(jack_server):
    """A MIDI controller: a virtual output port on the JACK server, one for the session (JACK ports are made
    and torn down on the server's own thread; fewer of them, fewer chances for rtmidi's teardown races)."""
    import mido

    port = mido.open_output("streamdiff-test-controller", virtual=True)
    yield port
    port.close()
