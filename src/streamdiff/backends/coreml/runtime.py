"""The engine's Denoiser and LatentCodec over converted Core ML parts, run on a Mac's GPU and CPU.

Each call looks up the part for its input shapes (converting it on first use, see convert.py), hands Core ML
half-precision numpy arrays and returns the result as a tensor on the caller's device and dtype.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from ...errors import UserError, first_line
from .convert import (
    CONTROLLED_UNET,
    DECODER,
    ENCODER,
    UNET,
    CodecCall,
    ControlledUnetCall,
    ModelStore,
    PartSpec,
    UnetCall,
    fingerprint,
    require_coremltools,
)

if TYPE_CHECKING:
    from ...control import Control

# Apple's measurements on the M3 Ultra: the Neural Engine slows SD-sized UNets down (by 19-520 %), the GPU
# gains; CPU_AND_GPU keeps Core ML off the Neural Engine.
COMPUTE_UNITS = "CPU_AND_GPU"

logger = logging.getLogger("streamdiff.backends")


class Predictor(Protocol):
    """What runs a converted part: coremltools' MLModel on macOS."""

    def predict(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


Loader = Callable[[Path], Predictor]


def coreml_unsupported() -> str | None:
    """Why converted parts cannot run here, or None when they can."""
    try:
        require_coremltools()
    except UserError as exc:
        return str(exc)
    if sys.platform != "darwin":
        return ("Core ML runs models only on macOS; `streamdiff convert` prepares them on this machine, to copy "
                "to a Mac")
    return None


def load_mlmodel(path: Path) -> Predictor:
    """A stored part, opened by Core ML (macOS only). Core ML compiles a package for this Mac when it opens it
    (minutes for a UNet); the compiled copy is kept beside the package, so that later starts skip that."""
    ct = require_coremltools()
    units = getattr(ct.ComputeUnit, COMPUTE_UNITS)
    compiled = path.with_suffix(".mlmodelc")
    if compiled.is_dir():
        try:
            return ct.models.CompiledMLModel(str(compiled), units)
        except Exception as exc:  # e.g. compiled by an older macOS: compile again from the package
            logger.warning("coreml: cannot open %s (%s); compiling the package again", compiled, first_line(exc))
            shutil.rmtree(compiled, ignore_errors=True)
    model = ct.models.MLModel(str(path), compute_units=units)
    partial = compiled.with_name(f".{os.getpid()}-{compiled.name}")
    try:
        shutil.copytree(model.get_compiled_model_path(), partial)
        os.replace(partial, compiled)
    except OSError as exc:  # only the next start's speed depends on it
        logger.warning("coreml: cannot keep the compiled %s (%s)", compiled.name, exc)
        shutil.rmtree(partial, ignore_errors=True)
    return model


class _Part:
    """One converted part: its stored files by input shapes, opened on first use."""

    def __init__(self, spec: PartSpec, module: torch.nn.Module, store: ModelStore, load: Loader | None,
                 digest: str | None = None):
        self.spec, self.module, self.store, self.load = spec, module, store, load
        self.digest = digest or fingerprint(module)
        self._open: dict[tuple[tuple[int, ...], ...], Predictor] = {}

    def __call__(self, *inputs: Tensor) -> Tensor:
        shapes = tuple(tuple(t.shape) for t in inputs)
        predictor = self._open.get(shapes)
        if predictor is None:
            path = self.store.ensure(self.spec, self.module, self.digest, inputs)
            if self.load is None:  # conversion only: the frame itself runs in PyTorch
                with torch.no_grad():
                    return self.module(*inputs)
            predictor = self._open[shapes] = self.load(path)
        feed = {name: t.detach().to("cpu", torch.float16).numpy() for name, t in zip(self.spec.inputs, inputs)}
        result = predictor.predict(feed)[self.spec.output]
        first = inputs[0]
        return torch.from_numpy(np.asarray(result)).to(first.device, first.dtype)


class CoreMLDenoiser:
    """Noise prediction by the converted UNet (no conditioning cache: Core ML sees one fixed graph). With `control`,
    the UNet and the stream's ControlNets are one converted part, which takes the stream's control pictures and
    scales at every call; the pictures themselves (Canny edges, estimated depth) are made in PyTorch."""

    def __init__(self, unet: torch.nn.Module, store: ModelStore, load: Loader | None = load_mlmodel,
                 control: Control | None = None):
        self.control = control
        if control is None:
            self.part = _Part(UNET, UnetCall(unet), store, load)
            return
        call = ControlledUnetCall(unet, control)
        # Which ControlNet reads which kind of picture is part of the converted graph: it names the part too.
        digest = hashlib.sha256(" ".join((fingerprint(call), *control.preprocesses)).encode()).hexdigest()[:16]
        self.part = _Part(CONTROLLED_UNET, call, store, load, digest)

    def __call__(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        if self.control is None:
            return self.part(latents, timesteps, embeddings)
        pictures = torch.stack(list(self.control.images.values()))
        return self.part(latents, timesteps, embeddings, pictures, self.control.scales)


class CoreMLCodec:
    """The latent codec's two directions as converted parts (TAESD's scaling included)."""

    def __init__(self, vae: torch.nn.Module, store: ModelStore, load: Loader | None = load_mlmodel):
        self.encoder = _Part(ENCODER, CodecCall(vae, "encode"), store, load)
        # Both directions hold the same VAE: one digest of its weights names both parts' folders.
        self.decoder = _Part(DECODER, CodecCall(vae, "decode"), store, load, self.encoder.digest)

    def encode(self, pixels: Tensor) -> Tensor:
        return self.encoder(pixels)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)
