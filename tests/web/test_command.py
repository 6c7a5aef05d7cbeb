"""`streamdiff web` as a user runs it: the real server process, a WebSocket page, and a real browser page."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from streamdiff.cli import main
from streamdiff.stream import StreamPipeline
from streamdiff.web import protocol

pytestmark = pytest.mark.timeout(180)
TINY = ["--model", "tiny", "--render-size", "64"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("streamdiff: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)


def test_a_busy_port_is_a_one_line_error_before_the_model_loads(capsys, no_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["web", *TINY, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use; pick another with --port" in one_line_error(capsys)


@pytest.mark.parametrize("options, message", [
    (["--ssl-certfile", "cert.pem"], "https needs both --ssl-certfile and --ssl-keyfile"),
    (["--quality", "0"], "--quality must be in 1..100; got 0"),
    (["--port", "70000"], "--port must be in 0..65535; got 70000"),
    (["--host", "no-such-host.invalid"], "cannot listen on 'no-such-host.invalid'"),
])
def test_bad_server_options_are_one_line_errors(capsys, no_model, options, message):
    assert main(["web", *TINY, "--port", "0", *options]) == 2
    assert message in one_line_error(capsys)


class Server:
    """`streamdiff web` in a process of its own, on a free port."""

    def __init__(self, *options: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": "*", "no_proxy": "*"}
        self.process = subprocess.Popen([sys.executable, "-m", "streamdiff.cli", "web", *TINY, "--port", "0", *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = self._wait_for_address()

    def _wait_for_address(self) -> str:
        lines = []
        for line in self.process.stderr:  # the model loads first: tens of seconds on a busy machine
            lines.append(line)
            if "serving " in line:
                return line.split("serving ", 1)[1].split()[0]
        self.process.wait(10)
        raise AssertionError("the server ended before it served: " + "".join(lines))

    def state(self) -> dict:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + "api/state", timeout=10) as response:
            return json.load(response)

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a user stops it: the exit code and what it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=30)
        return self.process.returncode, out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def server():
    started = Server()
    yield started
    started.kill()


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_server_answers_a_page_and_stops_cleanly_on_ctrl_c(server):
    import asyncio

    import websockets

    async def page() -> list[tuple[int, tuple[int, ...]]]:
        address = server.url.replace("http://", "ws://") + "ws"
        answers = []
        async with websockets.connect(address, proxy=None) as ws:
            assert json.loads(await ws.recv())["type"] == "state"
            for sequence in range(1, 5):
                await ws.send(protocol.HEADER_IN.pack(sequence) + jpeg(sequence))
                while isinstance(message := await ws.recv(), str):
                    assert json.loads(message)["type"] == "status", message
                taken, _ = protocol.HEADER_OUT.unpack_from(message)
                answers.append((taken, np.asarray(Image.open(io.BytesIO(message[8:]))).shape))
        return answers

    assert asyncio.run(page()) == [(s, (64, 64, 3)) for s in range(1, 5)]
    assert server.state()["stylized"] == 4
    code, out = server.stop()
    assert code == 0 and out.startswith("web: 4 pictures received, 4 stylized"), out


def _browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def test_a_browser_page_streams_its_camera_and_applies_settings_from_its_address(server, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("the browser test needs Chromium (apt-get install chromium); CI installs it")
    query = urllib.parse.urlencode({"prompt": "ink wash", "strength": 0.5, "ema": 0.2, "mirror": 1})
    # Chromium's fake camera (a moving test picture) stands in for a real one, allowed without asking.
    page = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-proxy-server", "--no-first-run", "--use-fake-device-for-media-stream",
                             "--use-fake-ui-for-media-stream",
                             f"--user-data-dir={tmp_path / 'profile'}", f"{server.url}?{query}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        state = server.state()
        while state["page"]["shown"] < 10 and time.monotonic() < deadline:
            time.sleep(0.5)  # polling another process's state: there is no event to wait on
            state = server.state()
    finally:
        page.terminate()
        page.wait(timeout=30)
    assert state["page"]["shown"] >= 10, state  # the page put stylized pictures on its screen
    assert state["stylized"] >= state["page"]["shown"] and state["dropped"] <= state["received"]
    assert state["prompt"] == "ink wash"
    assert state["controls"]["strength"] == 0.5 and state["controls"]["ema"] == 0.2 and state["controls"]["mirror"]
