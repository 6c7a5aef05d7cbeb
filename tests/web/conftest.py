"""The page's stream on the tiny engine, shared by the server's tests."""

from __future__ import annotations

import pytest

from streamdiff.app.engine_io import EngineRunner
from streamdiff.app.keys import Controls, engine_controls
from streamdiff.web.bridge import WebStream
from streamdiff.web.protocol import PromptBook


@pytest.fixture
def start_web_stream():
    """A function: a started WebStream on an engine; every one is closed after the test."""
    started: list[WebStream] = []

    def start(engine) -> WebStream:
        runner = EngineRunner(engine, ["a watercolor", "ink wash"], transition_frames=0)
        controls = Controls(seed=1, **engine_controls(engine))  # as the command
        web = WebStream(runner, controls, PromptBook(runner.prompts), model="tiny")
        web.start()
        started.append(web)
        return web

    yield start
    for web in started:
        assert web.close(timeout=5.0)


@pytest.fixture
def stream(tiny_engine, start_web_stream):
    return start_web_stream(tiny_engine)


@pytest.fixture
def controlnet_engine(tiny_pipe):
    """The tiny stream steered by a random-weight ControlNet of its UNet, at scale 0.8."""
    from streamdiff.config import StreamConfig
    from streamdiff.models.controlnets import random_controlnet
    from streamdiff.stream import Components, StreamPipeline

    engine = StreamPipeline(Components.from_diffusers(tiny_pipe, random_controlnet(tiny_pipe.unet)),
                            StreamConfig(width=64, height=64, strength=0.6, steps=2, seed=1, control_scale=0.8,
                                         device="cpu"))
    engine.prepare("a watercolor")
    return engine


def pytest_configure(config):
    config.addinivalue_line("markers", "server(*options): the options of the test's `streamdiff web` server")
