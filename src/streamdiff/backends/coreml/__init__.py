"""Core ML backend (Apple machines): the UNet (with a stream's ControlNets) and the latent codec converted once,
run by Core ML.

convert.py turns the modules into ML Programs and keeps them on disk; runtime.py runs them behind the
engine's Denoiser and LatentCodec protocols. coremltools is imported only when a part is converted or opened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import UserError
from ...stream import StreamPipeline
from ..compile import streamdiff_cache_dir
from .convert import ModelStore
from .runtime import (
    CoreMLCodec,
    CoreMLDenoiser,
    Loader,
    coreml_unsupported,
    load_mlmodel,
)

__all__ = ["CoreMLCodec", "CoreMLDenoiser", "ModelStore", "coreml_unsupported", "default_dir", "use_coreml"]


NO_IP_ADAPTER = ("Core ML converts the UNet as diffusers made it, without an IP-Adapter's image attention: run "
                 "streams with a style picture with --accel auto (PyTorch on MPS or the CPU) instead")


def default_dir() -> Path:
    """Where converted parts persist between runs: $XDG_CACHE_HOME/streamdiff/coreml (~/.cache/...)."""
    return streamdiff_cache_dir("coreml")


def use_coreml(pipe: StreamPipeline, root: str | Path | None = None, *, load: Loader | None = load_mlmodel,
               progress: Callable[[str], None] | None = None) -> ModelStore:
    """Run `pipe`'s UNet (with its ControlNets, as one part) and codec through Core ML from its next frame on;
    each input shape is converted (or found in `root`) at its first call. load=None converts and stores only, and
    the frames run in PyTorch."""
    if pipe.has_ip_adapter:
        raise UserError(NO_IP_ADAPTER)
    store = ModelStore(root or default_dir(), progress)
    pipe.set_backend(denoiser=CoreMLDenoiser(pipe.components.unet, store, load, pipe.control),
                     codec=CoreMLCodec(pipe.components.vae, store, load))
    return store
