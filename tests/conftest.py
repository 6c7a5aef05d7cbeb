"""Shared fixtures: tiny random-weight components of the real architectures, built once per session."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test processes running side by side (pytest -n) get one thread each, and so do the processes they start:
    # two of torch's thread pools on two cores spin against each other (the suite then took three times as long).
    os.environ["OMP_NUM_THREADS"] = "1"

# Test files that share an expensive session fixture run in one test process (pytest -n with --dist loadgroup);
# every other file is a group of its own, so its module fixtures (a web server pool, a hub run) are built once.
# The longest groups (about 150 and 100 s on a 2-core machine) go first, so neither is left running alone at the end.
SHARED_GROUPS = {"test_coreml.py": "coreml", "test_coreml_command.py": "coreml"}
LONGEST_GROUPS = ("test_command", "coreml")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    groups = {item: SHARED_GROUPS.get(item.path.name, item.path.stem) for item in items}
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: LONGEST_GROUPS.index(groups[item]) if groups[item] in LONGEST_GROUPS
               else len(LONGEST_GROUPS))


@pytest.fixture(scope="session")
def _tiny_cache():
    from streamdiff.models.tiny import build_tiny_pipeline

    return {"taesd": build_tiny_pipeline(seed=0), "vae": build_tiny_pipeline(seed=0, full_vae=True)}


@pytest.fixture
def tiny_pipe(_tiny_cache):
    """A fresh copy of the tiny diffusers pipeline (TAESD); each test may move or mutate it."""
    return copy.deepcopy(_tiny_cache["taesd"])


@pytest.fixture
def tiny_pipe_factory(_tiny_cache):
    def make(full_vae: bool = False):
        return copy.deepcopy(_tiny_cache["vae" if full_vae else "taesd"])

    return make


@pytest.fixture(scope="session")
def _tiny_sdxl_cache():
    from streamdiff.models.tiny import build_tiny_sdxl_pipeline

    return {"taesd": build_tiny_sdxl_pipeline(seed=0), "vae": build_tiny_sdxl_pipeline(seed=0, full_vae=True)}


@pytest.fixture
def tiny_sdxl_factory(_tiny_sdxl_cache):
    """Fresh copies of the tiny diffusers SDXL pipeline (TAESD, or the full autoencoder)."""
    def make(full_vae: bool = False):
        return copy.deepcopy(_tiny_sdxl_cache["vae" if full_vae else "taesd"])

    return make


@pytest.fixture
def tiny_engine(tiny_pipe):
    """The tiny model as a prepared 64x64 stream of two steps on the CPU, as the apps drive it."""
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_diffusers(tiny_pipe, width=64, height=64, strength=0.6, steps=2, seed=1,
                                         fit="crop", device="cpu")
    pipe.prepare("a watercolor")
    return pipe


def _from_model_engine(**settings):
    """The tiny model built by from_model as a prepared 64x64 stream of two steps on the CPU, as the apps drive it."""
    import torch

    from streamdiff.stream import StreamPipeline

    engine = StreamPipeline.from_model("tiny", device="cpu", dtype=torch.float32, width=64, height=64, strength=0.6,
                                       steps=2, seed=1, **settings)
    engine.prepare("a watercolor")
    return engine


@pytest.fixture
def steered_engine():
    """That stream steered by two random-weight ControlNets: canny at 0.8 and depth at 0.4 (with a tiny random depth
    estimator)."""
    return _from_model_engine(controlnet=["canny", "depth"], control_scale=(0.8, 0.4))


@pytest.fixture
def styled_engine():
    """That stream with a random-weight IP-Adapter (the base kind) at scale 0.6, and no style picture yet."""
    return _from_model_engine(ip_adapter="base", ip_adapter_scale=0.6)
