"""Streams over the tiny components, in pairs: one run the ordinary way, one through an accelerated runner."""

from __future__ import annotations

import copy
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from streamdiff import StreamPipeline
from streamdiff.backends import compile as compiling
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.config import StreamConfig
from streamdiff.models.controlnets import random_controlnet
from streamdiff.stream import Components

SIZE = 64


def prepared_stream(tiny_cache, prompt: str = "a red fox", **settings) -> StreamPipeline:
    """A prepared CPU stream over a private copy of the tiny components in `tiny_cache`; settings as StreamConfig
    fields."""
    settings.setdefault("width", SIZE)
    settings.setdefault("height", SIZE)
    pipe = StreamPipeline.from_diffusers(copy.deepcopy(tiny_cache["taesd"]), device="cpu", seed=3, **settings)
    pipe.prepare(prompt, negative_prompt="blurry")
    return pipe


def compile_with(backend: str, monkeypatch, cache) -> None:
    """Compiles on the CPU with Dynamo's `backend`, its cache in `cache`, from no compiled code, as a new process
    would: code an earlier test compiled for the same classes and shapes would make this test's compile instant."""
    torch._dynamo.reset()
    monkeypatch.setattr(compiling, "BACKEND", backend)
    monkeypatch.setattr(compiling, "compile_unsupported", lambda device: None)
    monkeypatch.setenv(compiling.CACHE_ENV, str(cache))


def gate_compilation(monkeypatch) -> threading.Event:
    """The worker's compiled calls wait until the returned event is set (it holds the stream's lock meanwhile)."""
    gate = threading.Event()
    real = compiling.compiled_forward

    def gated(module, preset="default"):
        forward = real(module, preset)

        def held(*args, **kwargs):
            assert gate.wait(120), "the test never opened the gate"
            return forward(*args, **kwargs)
        return held

    monkeypatch.setattr(compiling, "compiled_forward", gated)
    return gate


@pytest.fixture
def eager_dynamo(monkeypatch, tmp_path):
    """Dynamo's "eager" backend: the same tracing, guards and switch-over as with Inductor, without minutes of C++
    compilation on the test machine."""
    compile_with("eager", monkeypatch, tmp_path)


@pytest.fixture
def make_stream(_tiny_cache, _tiny_sdxl_cache):
    """prepared_stream over the session's tiny components (the tiny SDXL ones with sdxl=True)."""
    return lambda prompt="a red fox", sdxl=False, **settings: prepared_stream(
        _tiny_sdxl_cache if sdxl else _tiny_cache, prompt, **settings)


def controlled_stream(tiny_cache, cache_conditioning: bool = True, count: int = 1, **settings) -> StreamPipeline:
    """A prepared CPU stream steered by seeded ControlNets (`count` of them, each on the frame's Canny edges; the
    first has the weights `--controlnet canny` gives it with `--model tiny`), over a private copy of the tiny components;
    cache_conditioning as TorchDenoiser takes it, settings as StreamConfig fields."""
    pipe = copy.deepcopy(tiny_cache["taesd"])
    config = StreamConfig(device="cpu", seed=3, width=SIZE, height=SIZE, canny_thresholds=(40, 120), **settings)
    nets = [random_controlnet(pipe.unet, seed) for seed in range(1, count + 1)]
    stream = StreamPipeline(Components.from_diffusers(pipe, nets), config)
    stream.denoiser = TorchDenoiser(pipe.unet, cache_conditioning=cache_conditioning, control=stream.control)
    stream.prepare("a red fox", negative_prompt="blurry")
    return stream


@pytest.fixture
def make_controlled_stream(_tiny_cache):
    """controlled_stream over the session's tiny components."""
    return lambda cache_conditioning=True, count=1, **settings: controlled_stream(
        _tiny_cache, cache_conditioning, count, **settings)


def random_frames(count: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="session")
def converted(_tiny_cache, tmp_path_factory):
    """The Core ML parts of a prepared two-step 64x64 stream at strength 0.6 over the tiny components (img2img
    and txt2img), converted once (a conversion takes seconds), as `streamdiff convert --model tiny --steps 2
    --strength 0.6 --render-size 64` converts them: their folder, which tests copy before adding parts, and the
    store."""
    root = tmp_path_factory.mktemp("coreml")
    return root, convert_stream(prepared_stream(_tiny_cache, strength=0.6, steps=2), root)


CONTROLLED = {"strength": 0.6, "steps": 2, "control_scale": 0.9}  # one canny ControlNet


@pytest.fixture(scope="session")
def converted_controlled(_tiny_cache, converted, tmp_path_factory):
    """`converted` with the part of a stream steered by a ControlNet (CONTROLLED) added, as `streamdiff convert
    --model tiny --render-size 64 --steps 2 --strength 0.6 --controlnet canny` adds it: its folder and the store
    that added it."""
    root = copy_of_converted(converted, tmp_path_factory.mktemp("coreml-controlled"))
    return root, convert_stream(controlled_stream(_tiny_cache, **CONTROLLED), root)


def convert_stream(pipe: StreamPipeline, root: Path, *, txt2img: bool = True):
    """Convert (or find in `root`) the Core ML parts of two frames of `pipe`, as `streamdiff convert` does: the
    store that did."""
    from streamdiff.backends.coreml import use_coreml
    from streamdiff.backends.runner import AcceleratedStream

    store = use_coreml(pipe, root, load=None)
    AcceleratedStream(pipe, None).warm(txt2img=txt2img)
    return store


def copy_of_converted(converted, folder: Path) -> Path:
    return Path(shutil.copytree(converted[0], folder / "coreml"))
