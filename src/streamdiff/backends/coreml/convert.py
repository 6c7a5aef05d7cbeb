"""PyTorch modules to Core ML ML Programs (coremltools), one file per part and input shape, kept on disk.

Core ML runs fixed shapes best, so each (part, shapes) pair is converted once and stored; a stream that needs
another shape (a new render size, text to image after img2img) converts it at its first call. Conversion runs
wherever coremltools installs (Linux included); running the files needs macOS.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ... import added_conditions
from ...errors import UserError
from ...models.digest import weights_digest

if TYPE_CHECKING:
    from ...control import Control

FORMAT = 1  # bump when the wrappers below change what a stored file computes (it names the store's folders)
MINIMUM_MACOS = 13  # half-precision inputs and outputs need macOS 13


@dataclass(frozen=True)
class PartSpec:
    """The tensor names of one converted part: what the runtime feeds and reads."""

    part: str  # unet | encoder | decoder
    inputs: tuple[str, ...]
    output: str


UNET = PartSpec("unet", ("sample", "timestep", "encoder_hidden_states"), "noise_pred")
CONTROLLED_UNET = PartSpec("controlled-unet", ("sample", "timestep", "encoder_hidden_states", "control_pictures",
                                               "control_scales"), "noise_pred")
ENCODER = PartSpec("encoder", ("pixels",), "latents")
DECODER = PartSpec("decoder", ("latents",), "pixels")


class UnetCall(torch.nn.Module):
    """The denoiser's call as one forward: noise prediction (B, 4, h, w) from latents, timesteps (B,), text (an
    SDXL UNet's with the pooled embedding as its last token, taken apart inside, so the converted part takes the
    engine's embeddings as they are; its size numbers are constants of the converted shape)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.pooled_width = added_conditions.pooled_width(unet)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        hidden, added = added_conditions.model_inputs(sample, encoder_hidden_states, self.pooled_width)
        return self.unet(sample, timestep, encoder_hidden_states=hidden, return_dict=False, **added)[0]


class ControlledUnetCall(torch.nn.Module):
    """UnetCall steered by a stream's ControlNets, as one forward: their residuals (Control.residuals: each times its
    scale, summed in order) join the UNet's call. The control pictures (K, F, 3, H, W: one per kind of picture, in
    the order of Control.images) and the scales (one per ControlNet) are inputs, so a converted part follows the
    stream's live pictures and scales."""

    def __init__(self, unet: torch.nn.Module, control: Control):
        super().__init__()
        self.unet = unet
        self.controlnets = torch.nn.ModuleList(control.controlnets)  # their weights are the part's too
        self.pooled_width = added_conditions.pooled_width(unet)
        self._control = control

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, control_pictures: Tensor,
                control_scales: Tensor) -> Tensor:
        hidden, added = added_conditions.model_inputs(sample, encoder_hidden_states, self.pooled_width)
        extra = self._control.residuals(sample, timestep, hidden, added, pictures=control_pictures.unbind(0),
                                        scales=control_scales)
        return self.unet(sample, timestep, encoder_hidden_states=hidden, return_dict=False, **added, **extra)[0]


class CodecCall(torch.nn.Module):
    """One direction of a latent codec (TorchCodec's encode or decode, scaling included) as a forward."""

    def __init__(self, vae: torch.nn.Module, direction: str):
        super().__init__()
        from ..torch import TorchCodec

        self.vae = vae
        self._codec = TorchCodec(vae)
        self._direction = direction

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self._codec, self._direction)(x)


def shape_tag(shapes: Sequence[Sequence[int]]) -> str:
    """A file-name part for the input shapes, e.g. 2x4x64x64_2_2x77x1024."""
    return "_".join("x".join(str(d) for d in shape) for shape in shapes)


def fingerprint(module: torch.nn.Module) -> str:
    """Which weights a stored part was made from, so that parts of other weights (another checkpoint, a LoRA
    fused in) are never run by mistake; the machine that converts and the Mac that runs agree on it."""
    return weights_digest([module])


@dataclass(frozen=True)
class StoredPart:
    """A part a stream asked the store for: where it is, and the seconds its conversion took (None: found)."""

    path: Path
    seconds: float | None


class ModelStore:
    """A folder of converted parts: <root>/<part>-<weights digest>/<shapes>.mlpackage with a manifest each."""

    def __init__(self, root: str | Path, progress: Callable[[str], None] | None = None):
        self.root = Path(root).expanduser()
        self._say = progress or (lambda message: None)
        self.asked: dict[Path, StoredPart] = {}

    def path(self, spec: PartSpec, digest: str, shapes: Sequence[Sequence[int]]) -> Path:
        return self.root / f"{spec.part}-{digest}-v{FORMAT}" / f"{shape_tag(shapes)}.mlpackage"

    def ensure(self, spec: PartSpec, module: torch.nn.Module, digest: str, example: Sequence[Tensor]) -> Path:
        """The stored file for these weights and input shapes, converted now if there is none."""
        shapes = [tuple(t.shape) for t in example]
        target = self.path(spec, digest, shapes)
        if target.exists():
            self.asked.setdefault(target, StoredPart(target, None))
            return target
        start = time.perf_counter()
        self._say(f"coreml: converting the {spec.part} for inputs {shape_tag(shapes)} (once; kept in {self.root})")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{os.getpid()}-{target.name}")  # coremltools wants the .mlpackage suffix
        shutil.rmtree(partial, ignore_errors=True)
        try:
            convert(module, spec, example).save(str(partial))
            _write_manifest(partial, spec, shapes)
            os.replace(partial, target)
        except OSError as exc:
            raise UserError(f"cannot write the converted {spec.part} to {target.parent}: {exc}") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self.asked[target] = StoredPart(target, time.perf_counter() - start)
        return target


def _write_manifest(folder: Path, spec: PartSpec, shapes: Sequence[Sequence[int]]) -> None:
    import coremltools

    manifest = {"part": spec.part, "inputs": dict(zip(spec.inputs, map(list, shapes))), "output": spec.output,
                "format": FORMAT, "coremltools": coremltools.__version__, "torch": torch.__version__}
    (folder / "streamdiff.json").write_text(json.dumps(manifest, indent=1))


def convert(module: torch.nn.Module, spec: PartSpec, example: Sequence[Tensor]):
    """One part as a Core ML ML Program: traced on the CPU in float32, computed in float16 (inputs and outputs
    too, so a call casts nothing on the device)."""
    ct = require_coremltools()
    import numpy as np

    plain = _cpu_float32(module)
    inputs = tuple(t.detach().to("cpu", torch.float32) for t in example)
    traced = trace(plain, inputs)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=n, shape=t.shape, dtype=np.float16) for n, t in zip(spec.inputs, inputs)],
            outputs=[ct.TensorType(name=spec.output, dtype=np.float16)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, f"macOS{MINIMUM_MACOS}"),
        )


def trace(module: torch.nn.Module, inputs: Sequence[Tensor]) -> torch.jit.ScriptModule:
    """The TorchScript graph coremltools converts: the module's computation for these input shapes."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' shape checks become constants: the shapes are fixed
        return torch.jit.trace(module.eval(), tuple(inputs), check_trace=False)


def _cpu_float32(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself when it already lives on the CPU in float32, else a copy that does."""
    first = next(module.parameters(), None)
    if first is None or (first.device.type == "cpu" and first.dtype == torch.float32):
        return module
    return copy.deepcopy(module).to("cpu", torch.float32)


@contextlib.contextmanager
def _quiet():
    """coremltools draws progress bars on stderr for every pass; the store prints one line instead."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def require_coremltools():
    """coremltools, or a one-line hint on installing it (and on the numpy it needs)."""
    import numpy

    major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    # Off macOS its import logs a warning per missing native proxy; conversion does not need them.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError:
        raise UserError("Core ML needs coremltools: pip install 'streamdiff[coreml]'") from None
    if (major, minor) >= (2, 4):
        raise UserError(f"coremltools {coremltools.__version__} cannot convert with numpy {numpy.__version__}: "
                        "pip install 'numpy<2.4' (the coreml extra pins it)")
    return coremltools
