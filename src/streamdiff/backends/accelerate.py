"""Accelerated execution of a stream: choose a mode once, prepare the modules, build at start-up.

Modes, from plain to fastest:
  none     the eager engine as it is (the reference numbers)
  eager    the module rewrites below, with no compiler and no graphs: the same numbers with less work
  compile  torch.compile of the UNet and the codec (static shapes), eager glue between them
  graphs   one CUDA graph per step shape over eager kernels: uint8 frame in .. uint8 frame out
  max      compile + graphs
  coreml   the UNet and the codec converted to Core ML (coremltools), the rest in PyTorch on the CPU: Apple
           machines (macOS); parts are converted once per weights and shape and kept on disk (coreml/)
  auto     the fastest mode this machine supports: max on CUDA with Triton, else graphs on CUDA; eager on
           the CPU; none on other devices (Apple's MPS: eager is not measured there)
Every mode but none runs the UNet's upsampling layers (nearest 2x, then a 3x3 convolution) as one transposed
convolution on the small map (upsample_fold.py) and, unless the codec is compiled, TAESD's convolutions with
their bias, ReLU and residual add fused (codec_fusion.py: one cuDNN kernel each on CUDA in half precision,
else PyTorch's kernels with the rest done in place). On CUDA they also put the modules in channels_last
layout, fuse the attention projections and let cuDNN pick its fastest convolutions.
"""

from __future__ import annotations

import argparse
import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError, first_line
from ..ip_adapter import ImagePromptAttention
from ..stream import StreamPipeline
from . import call_graph, codec_fusion, upsample_fold
from . import compile as compiling
from .background import BackgroundCompile, CallRecorder, NewCountPlan
from .conditioning import ConditioningCache
from .graphs import CudaGraphCapture, DirectCall
from .runner import AcceleratedStream

logger = logging.getLogger("streamdiff.backends")


class AccelMode(str, enum.Enum):
    NONE = "none"
    EAGER = "eager"
    COMPILE = "compile"
    GRAPHS = "graphs"
    MAX = "max"
    COREML = "coreml"
    AUTO = "auto"

    @property
    def compiles(self) -> bool:
        return self in (AccelMode.COMPILE, AccelMode.MAX)

    @property
    def graphs(self) -> bool:
        return self in (AccelMode.GRAPHS, AccelMode.MAX)

    @classmethod
    def parse(cls, value: str | AccelMode) -> AccelMode:
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ValueError(f"accel must be one of {', '.join(m.value for m in cls)}; got {value!r}") from None


# What to try instead of a mode that cannot run here, best first (only when fallback is asked for).
_FALLBACKS = {AccelMode.MAX: (AccelMode.GRAPHS, AccelMode.COMPILE, AccelMode.EAGER),
              AccelMode.GRAPHS: (AccelMode.EAGER,), AccelMode.COMPILE: (AccelMode.EAGER,),
              AccelMode.COREML: (AccelMode.EAGER, AccelMode.NONE)}


class AccelerationUnavailable(UserError):
    """The requested acceleration cannot run on this machine; the message says why."""


def unsupported(mode: AccelMode, device: torch.device) -> str | None:
    """Why `mode` cannot run on `device` here, or None when it can."""
    if mode.graphs and device.type != "cuda":
        return f"CUDA graphs need a CUDA GPU; this stream runs on {device.type}"
    if mode.compiles:
        return compiling.compile_unsupported(device)
    if mode is AccelMode.COREML:
        if device.type == "cuda":
            return "Core ML runs on Apple machines; this stream runs on CUDA"
        from .coreml.runtime import coreml_unsupported

        return coreml_unsupported()
    return None


def resolve_mode(requested: str | AccelMode, device: torch.device, *, fallback: bool = False) -> AccelMode:
    """The mode to use: auto picks the fastest supported one; another unsupported mode raises, or with
    fallback=True steps down (logged) to the best one that runs."""
    mode = AccelMode.parse(requested)
    if mode is AccelMode.AUTO:
        candidates = {"cuda": (AccelMode.MAX, AccelMode.GRAPHS), "cpu": (AccelMode.EAGER,)}.get(device.type, ())
        return next((m for m in candidates if unsupported(m, device) is None), AccelMode.NONE)
    reason = unsupported(mode, device)
    if reason is None:
        return mode
    if not fallback:
        raise AccelerationUnavailable(f"--accel {mode.value} cannot run here: {reason} "
                                      "(use --accel auto or none, or allow a fallback)")
    chosen = next(m for m in _FALLBACKS[mode] if unsupported(m, device) is None)
    logger.warning("--accel %s cannot run here (%s); falling back to %s", mode.value, reason, chosen.value)
    return chosen


@dataclass(frozen=True)
class AccelReport:
    """What accelerate() did and how long the start-up took."""

    requested: str
    mode: str
    compile_preset: str | None
    cache_dir: str | None
    fused_codec: bool  # TAESD's convolutions run fused (cuDNN's kernels, or PyTorch's: see codec_fusion)
    folded_upsamplers: int  # the UNet's upsampling layers run as transposed convolutions
    prepare_seconds: float  # layout changes and compile set-up
    build_seconds: float  # first frames: compilation (or a cache load) and graph capture


def accelerate(pipe: StreamPipeline, mode: str | AccelMode = "auto", *, fallback: bool = False,
               cache_dir: str | Path | None = None, compile_preset: str = "default",
               input_size: tuple[int, int] | None = None, build: bool = True, fuse_codec: bool = True,
               fold_upsampling: bool = True, background: bool = False, coreml_dir: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[AcceleratedStream, AccelReport]:
    """Wrap a prepared pipeline for faster frames; with build=True compile and capture now (restarts the stream).

    fuse_codec: run TAESD's convolutions fused where it pays: cuDNN's fused kernels on CUDA in half precision,
      else PyTorch's kernels with the bias, ReLU and skip in place, unless the codec is compiled.
    fold_upsampling: run the UNet's upsampling layers as transposed convolutions (the same numbers).
    coreml_dir: for coreml, the folder of converted parts (default coreml.default_dir()); with build=True the
      parts of this stream's shapes are converted (first time) or opened now.
    background: for a compiling mode, capture the uncompiled steps now (graphs on CUDA) and compile on a
      thread of its own; the stream switches to the compiled steps between two frames once they are ready
      (background.py). The report then says the mode the stream starts in; `stream.mode` says the current one.

    The modules are changed in place (layout, fused projections, folded upsampling, compiled forward):
    keep the eager pipeline's numbers from before this call if you compare the two.
    """
    say = progress or logger.info
    requested = AccelMode.parse(mode)
    chosen = resolve_mode(requested, pipe.device, fallback=fallback)
    start = time.perf_counter()
    buildable = build and (chosen.compiles or chosen.graphs) and _prepared(pipe)
    later = buildable and background and chosen.compiles
    folder = _prepare_modules(pipe, chosen, cache_dir, compile_preset, say, fuse_codec=fuse_codec,
                              fold_upsampling=fold_upsampling, compile_now=not later)
    capture = None  # none and eager: the engine's own calls, on the rewritten modules for eager
    if chosen.compiles or chosen.graphs:
        capture = CudaGraphCapture() if chosen.graphs else DirectCall.capture
    first = (AccelMode.GRAPHS if chosen.graphs else AccelMode.NONE) if later else chosen
    stream = AcceleratedStream(pipe, capture, mode=first.value, progress=say)
    prepared = time.perf_counter() - start
    built = 0.0
    if later:
        built = _build_then_compile(stream, chosen, compile_preset, input_size, say)
        chosen = first
    elif buildable:
        built = _build(stream, chosen, requested, fallback, input_size, say, fuse_codec=fuse_codec)
        chosen = AccelMode.parse(stream.mode)
    elif chosen is AccelMode.COREML:
        folder, built = _use_coreml(stream, coreml_dir, input_size, say, build=build and _prepared(pipe))
    report = AccelReport(requested.value, chosen.value, compile_preset if chosen.compiles else None,
                         str(folder) if folder else None, codec_fusion.is_fused(pipe.components.vae),
                         upsample_fold.folded_count(pipe.components.unet), prepared, built)
    return stream, report


def _prepared(pipe: StreamPipeline) -> bool:
    """Whether prepare() ran; without prompts nothing can be built yet (the first frames build instead)."""
    try:
        pipe.step_buffers()
    except RuntimeError:
        return False
    return True


def _prepare_modules(pipe: StreamPipeline, mode: AccelMode, cache_dir: str | Path | None, preset: str,
                     say: Callable[[str], None], *, fuse_codec: bool, fold_upsampling: bool,
                     compile_now: bool = True) -> Path | None:
    if mode in (AccelMode.NONE, AccelMode.COREML):  # Core ML converts the modules as diffusers made them
        _graph_change_work(pipe, on=False)
        return None
    unet, vae = pipe.components.unet, pipe.components.vae
    if fold_upsampling:
        upsample_fold.fold_upsamplers(unet)
    else:
        upsample_fold.unfold_upsamplers(unet)
    _set_codec(pipe, fuse_codec, compiled=mode.compiles)
    if pipe.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one stream keeps its shapes: the search pays off at once
        for module in (unet, vae, *pipe.components.controlnets):
            module.to(memory_format=torch.channels_last)
        for module in (unet, *pipe.components.controlnets):
            if hasattr(module, "fuse_qkv_projections") and not _projections_fused(module):
                _fuse_projections(module)
    _graph_change_work(pipe, on=mode.graphs and pipe.device.type == "cuda")
    if not mode.compiles:
        return None
    folder = compiling.use_cache_dir(cache_dir)
    if compile_now:
        parts = compiling.parts_of(pipe.components)
        compiling.compile_in_place(parts, preset)
        say(f"{mode.value}: compiling {compiling.describe_parts(parts)} at the first frames (cache: {folder})")
    return folder


def _graph_change_work(pipe: StreamPipeline, on: bool) -> None:
    """Replay the work of a prompt or style picture change as CUDA graphs (call_graph.py), or run it eagerly: the
    text encoders, the IP-Adapter's image encoder and each conditioning cache's refresh. With `on`, each runs once
    now, so that its capture happens at start-up rather than at the first change."""
    parts = pipe.components
    call_graph.graph_encoders((parts.text_encoder, parts.text_encoder_2, parts.image_encoder), on)
    for model in (parts.unet, *parts.controlnets):
        ConditioningCache.of(model).use_graph(on)
    if not on:
        return
    with torch.no_grad():
        pipe.prompts.warm()
        if pipe.ip_adapter is not None:
            pipe.ip_adapter.warm(parts.image_encoder)
        restore = getattr(pipe.denoiser, "restore", None)  # a Core ML denoiser stores no conditioning
        if restore is not None:
            restore()


def _set_codec(pipe: StreamPipeline, fuse_codec: bool, *, compiled: bool) -> None:
    """Fuse TAESD's convolutions with the kernels that pay here (then it is not compiled), or run it unfused."""
    vae = pipe.components.vae
    ops = codec_fusion.ops_for(vae, pipe.device, pipe.dtype, compiled=compiled) if fuse_codec else None
    if ops is not None:
        compiling.uncompile({"encoder": vae.encoder, "decoder": vae.decoder})
        codec_fusion.fuse(vae, ops)
    elif codec_fusion.is_fused(vae):
        codec_fusion.unfuse(vae)


def _attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [module for module in model.modules() if isinstance(module, Attention)]


def _projections_fused(model: torch.nn.Module) -> bool:
    return any(layer.fused_projections for layer in _attention_layers(model))


def _fuse_projections(model: torch.nn.Module) -> None:
    """One projection matrix product instead of three (two for cross-attention), in the UNet or the ControlNet.
    The stand-ins of the conditioning cache the denoiser uses go first, so that diffusers fuses the real
    projections; the denoiser's next call stores them again. An IP-Adapter's processors (ip_adapter.py), which
    diffusers would replace with its fused one, go back in: they read the fused projections."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    ConditioningCache.of(model).remove()
    own = {name: p for name, p in model.attn_processors.items() if isinstance(p, ImagePromptAttention)}
    model.fuse_qkv_projections()
    if not _projections_fused(model):
        # ControlNetModel's fuse_qkv_projections (diffusers' AttentionMixin) passes over its Attention layers,
        # which are of the older kind: they are fused here as the UNet's own method fuses its layers.
        for layer in _attention_layers(model):
            layer.fuse_projections(fuse=True)
        model.set_attn_processor(FusedAttnProcessor2_0())
    if own:
        model.set_attn_processor({**model.attn_processors, **own})


def _build(stream: AcceleratedStream, chosen: AccelMode, requested: AccelMode, fallback: bool,
           input_size: tuple[int, int] | None, say: Callable[[str], None], *, fuse_codec: bool = True) -> float:
    """Build at start-up; a failure raises, or with fallback (or auto) drops compilation and goes on with the
    mode resolve_mode would fall back to: graphs on CUDA, else eager."""
    pipe = stream.pipe
    try:
        seconds = stream.build(input_size)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # compilers fail in many ways; the message matters, not the type
        if not chosen.compiles or not (fallback or requested is AccelMode.AUTO):
            raise AccelerationUnavailable(f"--accel {chosen.value} failed to build: {first_line(exc)}") from exc
        logger.warning("compilation failed (%s); continuing without it", first_line(exc))
        compiling.uncompile(compiling.parts_of(pipe.components))
        if chosen.graphs:
            stream.set_capture(CudaGraphCapture(), AccelMode.GRAPHS.value)
        else:  # eager: the fold stays; the codec, left to the compiler until now, is fused instead
            _set_codec(pipe, fuse_codec, compiled=False)
            stream.set_capture(None, AccelMode.EAGER.value)
        pipe.reset()
        return stream.build(input_size)
    say(f"{chosen.value}: ready in {seconds:.1f} s ({', '.join(stream.captured) or 'no graphs'})")
    return seconds


def _use_coreml(stream: AcceleratedStream, root: str | Path | None, input_size: tuple[int, int] | None,
                say: Callable[[str], None], *, build: bool) -> tuple[Path, float]:
    """Switch the stream's UNet and codec to Core ML; with build, convert or open its parts now."""
    from . import coreml

    store = coreml.use_coreml(stream.pipe, root, progress=say)
    start = time.perf_counter()
    if build:
        stream.warm(input_size)
        say(f"coreml: ready in {time.perf_counter() - start:.1f} s (parts in {store.root})")
    return store.root, time.perf_counter() - start


def _build_then_compile(stream: AcceleratedStream, target: AccelMode, preset: str,
                        input_size: tuple[int, int] | None, say: Callable[[str], None]) -> float:
    """Capture the uncompiled steps now, recording the modules' first calls, and start compiling them on a
    thread of its own; the stream switches to `target` once that is done."""
    pipe = stream.pipe
    parts = compiling.parts_of(pipe.components)
    with CallRecorder(parts) as recorder:
        seconds = stream.build(input_size)
    upgrade = BackgroundCompile(parts, recorder.calls, preset, stream.eager_lock, stream.trace_lock)
    final = CudaGraphCapture() if target.graphs else DirectCall.capture
    stream.compile_new_counts_in_background(NewCountPlan(parts, preset, (final, target.value),
                                                         (stream.step_capture, stream.mode), set()))
    stream.upgrade_when_ready(upgrade, final, target.value)
    upgrade.start()
    say(f"{stream.mode}: ready in {seconds:.1f} s; compiling {compiling.describe_parts(parts)} in the background, "
        f"then switching to {target.value}")
    return seconds


# ----- command-line options, for every command that builds a stream ---------------------------------

def add_accel_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("acceleration")
    g.add_argument("--accel", choices=[m.value for m in AccelMode], default="auto",
                   help="none | eager | compile | graphs | max | coreml | auto (default: the fastest this "
                        "machine supports: max on NVIDIA GPUs, eager on the CPU; coreml: Apple machines, see "
                        "`streamdiff convert`)")
    g.add_argument("--accel-fallback", action="store_true",
                   help="if the --accel mode cannot run here, use the best one that can instead of stopping")
    g.add_argument("--compile-cache", default=None, metavar="DIR",
                   help=f"folder of compiled kernels kept between runs (default {compiling.default_cache_dir()})")
    g.add_argument("--compile-preset", choices=sorted(compiling.COMPILE_PRESETS), default="default",
                   help="compiler settings: default, or tuned (coordinate-descent tuning; a much slower first "
                        "start, faster kernels on some GPUs)")
    g.add_argument("--compile-in-background", action=argparse.BooleanOptionalAction, default=None,
                   help="start at once on uncompiled CUDA graphs and switch to the compiled step when a background "
                        "thread has compiled it (default: on for the camera app, off for the other commands)")
    g.add_argument("--coreml-dir", default=None, metavar="DIR",
                   help="with --accel coreml: folder of converted Core ML parts kept between runs (default "
                        "~/.cache/streamdiff/coreml)")
    add_rewrite_options(g)


def add_rewrite_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The switches that turn off accelerate()'s module rewrites (also `streamdiff bench`'s)."""
    parser.add_argument("--no-codec-fusion", action="store_true",
                        help="run TAESD's convolutions as separate kernels (compiled where the mode compiles) "
                             "instead of fused ones")
    parser.add_argument("--no-upsample-fold", action="store_true",
                        help="run the UNet's upsampling layers as upsampling then convolution, not as one "
                             "transposed convolution")


def accelerate_from_args(pipe: StreamPipeline, args: argparse.Namespace,
                         progress: Callable[[str], None] | None = None) -> AcceleratedStream:
    stream, _ = accelerate(pipe, args.accel, fallback=args.accel_fallback, cache_dir=args.compile_cache,
                           compile_preset=args.compile_preset, fuse_codec=not args.no_codec_fusion,
                           fold_upsampling=not args.no_upsample_fold,
                           background=bool(getattr(args, "compile_in_background", None)),
                           coreml_dir=getattr(args, "coreml_dir", None), progress=progress)
    return stream
