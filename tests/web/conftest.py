"""The page's stream on the tiny engine, shared by the server's tests."""

from __future__ import annotations

import pytest

from streamdiff.app.engine_io import EngineRunner
from streamdiff.app.keys import Controls
from streamdiff.web.bridge import WebStream
from streamdiff.web.protocol import PromptBook


@pytest.fixture
def start_web_stream():
    """A function: a started WebStream on an engine; every one is closed after the test."""
    started: list[WebStream] = []

    def start(engine) -> WebStream:
        runner = EngineRunner(engine, ["a watercolor", "ink wash"], transition_frames=0)
        web = WebStream(runner, Controls(seed=1, strength=engine.strength), PromptBook(runner.prompts), model="tiny")
        web.start()
        started.append(web)
        return web

    yield start
    for web in started:
        assert web.close(timeout=5.0)


@pytest.fixture
def stream(tiny_engine, start_web_stream):
    return start_web_stream(tiny_engine)
