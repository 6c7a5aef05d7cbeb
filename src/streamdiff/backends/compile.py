"""torch.compile of the denoiser and the codec, in place, with the compiled code cached on disk.

Compiling a module's forward in place keeps every holder of it (denoiser, codec, a diffusers
pipeline) on the compiled code. Shapes are static: one stream has one batch and resolution, and static
kernels are the fastest; another shape compiles again (and lands in the cache too).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
RECOMPILE_LIMIT = 64
BACKEND = "inductor"  # torch.compile's backend; the CPU tests of the compile machinery trace with "eager"

# Inductor settings beyond its defaults, by name. "tuned" (the settings diffusers suggests for SDXL) was
# slower on an H100 for the SD-Turbo step (6.79 vs 6.52 ms) after a 4x longer compile: default stays.
COMPILE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tuned": {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False},
}


def streamdiff_cache_dir(name: str) -> Path:
    """A folder of files kept between runs: $XDG_CACHE_HOME/streamdiff/<name> (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamdiff" / name


def default_cache_dir() -> Path:
    """Where compiled kernels persist between runs: $XDG_CACHE_HOME/streamdiff/inductor (~/.cache/...)."""
    return streamdiff_cache_dir("inductor")


def use_cache_dir(path: str | Path | None = None) -> Path:
    """Point Inductor's on-disk cache at `path`, or keep the user's TORCHINDUCTOR_CACHE_DIR, or use ours.

    Inductor reads the variable when it first compiles, so this must run before the first compile. Importing
    torch._dynamo (diffusers does) writes torch's own default, a temporary folder emptied at every reboot, into
    the variable: that value is taken for unset.
    """
    chosen = os.environ.get(CACHE_ENV)
    if path is None and chosen and Path(chosen) != _torch_default_cache_dir():
        return Path(chosen)
    folder = Path(path) if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the compile cache folder {folder}: {exc.strerror}") from None
    os.environ[CACHE_ENV] = str(folder)
    return folder


def _torch_default_cache_dir() -> Path | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default
    except ImportError:  # another torch layout: every value of the variable is then the user's
        return None
    return Path(torch_default())


def compile_unsupported(device: torch.device) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs Triton, which is not installed"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"torch.compile's Triton kernels need a GPU of compute capability 7.0 or newer; this is {major}.x"
        return None
    if device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on the PATH"
        return None
    return f"torch.compile is not supported on {device.type} devices by this engine"


def compiled_parts(unet: torch.nn.Module, vae: torch.nn.Module, controlnets: Sequence[torch.nn.Module] = (),
                   depth_estimator: torch.nn.Module | None = None) -> dict[str, torch.nn.Module]:
    """The modules worth compiling: the UNet (with its ControlNets, named controlnet, controlnet.2, ..., and
    depth estimator), and the VAE's encoder and decoder (TAESD or KL) unless their convolutions are fused
    (cuDNN's fused kernels cannot be traced; the graph capture covers them)."""
    from .codec_fusion import is_fused

    parts = {"unet": unet} | {"controlnet" + (f".{i + 1}" if i else ""): net for i, net in enumerate(controlnets)}
    if depth_estimator is not None:
        parts["depth_estimator"] = depth_estimator
    for name in ("encoder", "decoder"):
        part = getattr(vae, name, None)
        if isinstance(part, torch.nn.Module) and not is_fused(part):
            parts[f"vae.{name}"] = part
    return parts


def describe_parts(parts: Mapping[str, torch.nn.Module]) -> str:
    """The compiled parts in words, for a progress line: 'the UNet, 2 ControlNets and the codec'."""
    nets = sum(name.startswith("controlnet") for name in parts)
    words = ["the UNet"] if "unet" in parts else []
    words += ["the ControlNet"] if nets == 1 else [f"{nets} ControlNets"] if nets else []
    words += ["the depth estimator"] if "depth_estimator" in parts else []
    words += ["the codec"] if any(name.startswith("vae.") for name in parts) else []
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def parts_of(components: Any) -> dict[str, torch.nn.Module]:
    """compiled_parts of a stream's Components (its UNet, ControlNets, depth estimator and VAE)."""
    return compiled_parts(components.unet, components.vae, components.controlnets, components.depth_estimator)


def compiled_forward(module: torch.nn.Module, preset: str = "default") -> Callable[..., Any]:
    """The module's compiled forward (full graph, static shapes), made at the first request and kept on the
    module; compiling happens at its first call. It is not installed: see compile_in_place."""
    earlier = module.__dict__.get("_streamdiff_compiled")
    if earlier is not None and earlier[0] == preset:
        return earlier[1]
    eager = type(module).forward.__get__(module)
    compiled = torch.compile(eager, fullgraph=True, dynamic=False, backend=BACKEND,
                             options=COMPILE_PRESETS[preset] or None)
    module.__dict__["_streamdiff_compiled"] = (preset, compiled)
    return compiled


def check_preset(preset: str) -> None:
    """Raise unless `preset` names one of COMPILE_PRESETS; let forwards hold enough compiled shapes."""
    if preset not in COMPILE_PRESETS:
        raise ValueError(f"compile preset must be one of {', '.join(COMPILE_PRESETS)}; got {preset!r}")
    _allow_recompiles(RECOMPILE_LIMIT)


def compile_in_place(parts: dict[str, torch.nn.Module], preset: str = "default") -> None:
    """Compile each module's forward in place (full graph, static shapes); the work happens at the first call.

    The compiled forward is an instance attribute, so dynamo keys its cache on each class's own forward
    (not on the `_call_impl` that all modules share and whose recompile limit they would exhaust together).
    A module compiled before with the same preset gets its earlier compiled forward back.
    """
    check_preset(preset)
    for module in parts.values():
        module.__dict__["forward"] = compiled_forward(module, preset)


def _allow_recompiles(limit: int) -> None:
    """Let one forward hold `limit` compiled shapes: diffusers wraps every UNet's forward in one shared
    decorator function, so all UNets and shapes of a process count against that one function's limit
    (8 by default), and with fullgraph=True a ninth shape is an error."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


def uncompile(parts: dict[str, torch.nn.Module]) -> None:
    """Undo compile_in_place: the modules run eagerly again (their compiled code stays at hand)."""
    for module in parts.values():
        if is_compiled(module):
            del module.__dict__["forward"]


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether the module's forward is its compiled one (other per-instance forwards, e.g. the fused codec's,
    are not)."""
    forward = module.__dict__.get("forward")
    return forward is not None and forward is module.__dict__.get("_streamdiff_compiled", (None, None))[1]
