"""Headless Chromium driven through the DevTools protocol: the web tests' page, and the browser latency benchmark's."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def chromium() -> str | None:
    """The path of a Chromium (or Chrome) on this machine, if any."""
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


class Browser:
    """Headless Chromium on the page, its fake camera (a moving test picture, or the frames of `camera_file`, a
    Y4M video it loops) allowed without asking, driven through the DevTools protocol as a user's keyboard would
    drive it."""

    def __init__(self, url: str, profile: Path, camera_file: Path | None = None) -> None:
        path = chromium()
        if path is None:
            pytest.skip("the browser tests need Chromium (apt-get install chromium); CI installs it")
        self.profile = profile
        camera = [f"--use-file-for-fake-video-capture={camera_file}"] if camera_file else []
        self.process = subprocess.Popen(
            [path, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server",
             "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", *camera,
             "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._socket = None
        self._id = 0
        self._events: list[dict] = []

    def _page_socket(self):
        from websockets.sync.client import connect

        if self._socket is None:
            port_file = self.profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)  # Chromium writes the file once it listens: no event to wait on
            port = port_file.read_text().split()[0]
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                page = next(t for t in json.load(response) if t["type"] == "page")
            self._socket = connect(page["webSocketDebuggerUrl"], proxy=None, max_size=None)
        return self._socket

    def call(self, method: str, **params) -> dict:
        socket = self._page_socket()
        self._id += 1
        socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while (reply := json.loads(socket.recv(timeout=30))).get("id") != self._id:
            self._events.append(reply)  # events the page sends meanwhile
        assert "error" not in reply, reply
        return reply["result"]

    def event(self, method: str, timeout: float = 60.0) -> dict:
        """The parameters of the next event `method` (one that came in during a call counts)."""
        deadline = time.monotonic() + timeout
        while (found := next((e for e in self._events if e.get("method") == method), None)) is None:
            assert time.monotonic() < deadline, f"no {method} event within {timeout:g} s"
            self._events.append(json.loads(self._page_socket().recv(timeout=max(0.1, deadline - time.monotonic()))))
        self._events.remove(found)
        return found["params"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"]["value"]

    def run(self, statement: str) -> None:
        """Run a statement in the page; one that throws fails the test."""
        result = self.call("Runtime.evaluate", expression=statement)
        assert "exceptionDetails" not in result, result["exceptionDetails"]

    def press(self, key: str, code: int | None = None) -> None:
        text = "\r" if key == "Enter" else key
        extra = {"windowsVirtualKeyCode": code, "code": key} if code else {}
        self.call("Input.dispatchKeyEvent", type="keyDown", key=key, text=text, **extra)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, **extra)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)
