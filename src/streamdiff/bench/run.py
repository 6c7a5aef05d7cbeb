"""Run benchmark scenarios: load each model once, build each stream, time it, meter it, compare baselines."""

from __future__ import annotations

import gc
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..backends.accelerate import AccelMode, accelerate, resolve_mode
from ..backends.compile import parts_of, uncompile
from ..config import ControlPreprocess
from ..devices import resolve_device, resolve_dtype, synchronize
from ..stream import Components, StreamPipeline
from . import baselines
from .clips import batched, make_clip, style_picture
from .measure import EnergyMeter, Latency, peak_memory_mb, reset_peak_memory, time_calls
from .scenario import Scenario
from .stages import stage_times

logger = logging.getLogger("streamdiff.bench")

_MODE_ORDER = {"none": 0, "eager": 1, "graphs": 2, "compile": 3, "max": 4}


@dataclass(frozen=True)
class BenchOptions:
    calls: int = 100  # timed calls per scenario (at least)
    warmup: int = 10
    min_seconds: float = 0.0  # keep timing until this much time has passed (energy needs a long window)
    device: str = "auto"
    dtype: str | None = None
    random_weights: bool = False
    prompt: str = "a watercolor painting of a lighthouse at dusk"
    compare: tuple[str, ...] = ()
    stages: bool = True
    fallback: bool = False
    cache_dir: str | None = None
    compile_preset: str = "default"
    clip_frames: int = 24


@dataclass
class _Loaded:
    components: Components
    spec: Any
    touched: bool = False  # layout, fused projections or compilation applied in place
    control_preprocess: PreprocessSetting = None  # how frames become the ControlNets' control pictures, if any steer
    control_names: tuple[str, ...] = ()


# A loaded model: its name, TAESD or not, the ControlNets steering it (None: none), the control_preprocess
# setting they were loaded for (None: each ControlNet's own; "depth" loads the depth estimator), that estimator,
# and the IP-Adapter loaded into it (None: none).
ControlRefs = str | tuple[str, ...] | None
PreprocessSetting = ControlPreprocess | tuple[ControlPreprocess, ...] | None
ModelKey = tuple[str, bool, ControlRefs, PreprocessSetting, str | None, str | None]


def model_key(scenario: Scenario) -> ModelKey:
    return (scenario.model, scenario.taesd, scenario.controlnet, scenario.control_preprocess, scenario.depth_estimator,
            scenario.ip_adapter)


class ModelPool:
    """Models by (name, taesd, controlnet, control_preprocess, depth_estimator, ip_adapter), loaded once; reloaded
    when a case needs the modules as they were loaded."""

    def __init__(self, options: BenchOptions, device: torch.device, dtype: torch.dtype):
        self.options, self.device, self.dtype = options, device, dtype
        self._loaded: dict[ModelKey, _Loaded] = {}

    def get(self, name: str, taesd: bool, *, pristine: bool, controlnet: ControlRefs = None,
            control_preprocess: PreprocessSetting = None, depth_estimator: str | None = None,
            ip_adapter: str | None = None) -> _Loaded:
        key = (name, taesd, controlnet, control_preprocess, depth_estimator, ip_adapter)
        entry = self._loaded.get(key)
        if entry is not None and pristine and entry.touched:
            self.release(key)
            entry = None
        if entry is None:
            entry = self._load(*key)
            self._loaded[key] = entry
        return entry

    def _load(self, name: str, taesd: bool, controlnet: ControlRefs, control_preprocess: PreprocessSetting,
              depth_estimator: str | None, ip_adapter: str | None) -> _Loaded:
        from ..models.controlnets import load_controlnets
        from ..models.depth_estimators import DEFAULT_DEPTH_ESTIMATOR
        from ..models.ip_adapters import load_ip_adapter
        from ..models.loading import load_model

        random_weights = self.options.random_weights
        loaded = load_model(name, dtype=self.dtype, device=self.device, taesd=taesd, random_weights=random_weights)
        nets = None
        if controlnet is not None:
            # With random weights, a kind is a random-weight ControlNet of the model's architecture.
            refs = (controlnet,) if isinstance(controlnet, str) else controlnet
            nets = load_controlnets(refs, loaded.spec, loaded.pipe.unet, control_preprocess, dtype=self.dtype,
                                    device=self.device, random_weights=random_weights,
                                    depth_estimator=depth_estimator or DEFAULT_DEPTH_ESTIMATOR)
        if ip_adapter is not None:  # after the ControlNets, which diffusers makes from the UNet as it was loaded
            load_ip_adapter(loaded.pipe, ip_adapter, loaded.spec, random_weights=random_weights)
        if nets is None:
            return _Loaded(Components.from_diffusers(loaded.pipe), loaded.spec)
        components = Components.from_diffusers(loaded.pipe, nets.modules, nets.estimator)
        chosen = nets.preprocesses[0] if len(nets.modules) == 1 else nets.preprocesses
        return _Loaded(components, loaded.spec, control_preprocess=chosen, control_names=nets.names)

    def release(self, key: ModelKey | None = None) -> None:
        for k in [key] if key else list(self._loaded):
            self._loaded.pop(k, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def order(scenarios: list[Scenario]) -> list[Scenario]:
    """Cases grouped by model, plain modes first: modules are changed in place as acceleration rises."""
    first_seen: dict[ModelKey, int] = {}
    for s in scenarios:
        first_seen.setdefault(model_key(s), len(first_seen))
    return sorted(scenarios, key=lambda s: (first_seen[model_key(s)], _MODE_ORDER.get(s.accel, 4)))


def run_all(scenarios: list[Scenario], options: BenchOptions, progress: Callable[[str], None] = print,
            sink: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Results of every scenario (a failed one records its error and the rest go on).

    Per model, the baselines run first, on the modules as loaded; then the streams, plain modes first.
    sink, if given, receives the results so far after each case (to save partial results).
    """
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    pool = ModelPool(options, device, dtype)
    results: list[dict[str, Any]] = []
    ordered = order(scenarios)
    for group in dict.fromkeys(model_key(s) for s in ordered):
        members = [s for s in ordered if model_key(s) == group]
        done: set[tuple[Any, ...]] = set()
        for scenario in members:
            for name in options.compare if scenario.compare else ():
                if _baseline_key(name, scenario) not in done:
                    done.add(_baseline_key(name, scenario))
                    progress(f"bench: {name} baseline of {scenario.name()}")
                    results.append(_labelled(_guarded(name, scenario, pool, progress,
                                                      run_baseline, name, scenario, options, pool, device), options))
                    if sink:
                        sink(results)
        for scenario in members:
            progress(f"bench: {scenario.name()}")
            results.append(_labelled(_guarded("streamdiff", scenario, pool, progress,
                                              run_scenario, scenario, options, pool, device, progress), options))
            if sink:
                sink(results)
    return results


def _labelled(result: dict[str, Any], options: BenchOptions) -> dict[str, Any]:
    """Random weights of a model whose architecture is reconstructed (not published) say so in the name."""
    from ..models.architectures import RECONSTRUCTED

    if options.random_weights and result["scenario"]["model"] in RECONSTRUCTED:
        result["name"] += " [reconstructed architecture]"
        result["reconstructed_architecture"] = True
    return result


def _guarded(kind: str, scenario: Scenario, pool: ModelPool, progress: Callable[[str], None],
             run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """run(*args), or a result holding the error: one broken case must not lose the others' numbers."""
    try:
        return run(*args)
    except torch.cuda.OutOfMemoryError:
        pool.release()
        return _failed(scenario, kind, "out of GPU memory")
    except Exception as exc:
        logger.debug("case failed", exc_info=True)
        failed = _failed(scenario, kind, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        progress(f"bench: failed: {failed['error']}")
        return failed


def _baseline_key(name: str, s: Scenario) -> tuple[Any, ...]:
    """Baselines run once per distinct workload (not per acceleration mode)."""
    return (name, s.task, s.steps, s.frame_buffer_size, s.resolution, s.batched)


def _failed(scenario: Scenario, kind: str, error: str) -> dict[str, Any]:
    name = scenario.name() if kind == "streamdiff" else f"{kind}: {scenario.with_changes(accel='none').name()}"
    return {"scenario": scenario.as_dict(), "name": name, "kind": kind, "error": error}


def run_scenario(scenario: Scenario, options: BenchOptions, pool: ModelPool, device: torch.device,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    mode = resolve_mode(scenario.accel, device, fallback=options.fallback)
    entry = pool.get(scenario.model, scenario.taesd, pristine=mode is AccelMode.NONE,
                     controlnet=scenario.controlnet, control_preprocess=scenario.control_preprocess,
                     depth_estimator=scenario.depth_estimator, ip_adapter=scenario.ip_adapter)
    if not mode.compiles:
        uncompile(parts_of(entry.components))
    pipe = prepared_stream(scenario, entry, device, options)
    reset_peak_memory(device)
    stream, report = accelerate(pipe, scenario.accel, fallback=options.fallback, cache_dir=options.cache_dir,
                                compile_preset=options.compile_preset, fuse_codec=scenario.codec_fusion,
                                fold_upsampling=scenario.upsample_fold, progress=progress)
    entry.touched = entry.touched or report.mode != "none"
    result = _time_stream(stream, scenario, options, device)
    result.update(accel=report.__dict__, peak_gpu_memory_mb=peak_memory_mb(device))
    if scenario.ip_adapter is not None:
        result["style_image_ms"] = _style_change_ms(stream, device, repeats=10 if device.type == "cuda" else 2)
    if options.stages and scenario.task == "img2img" and scenario.similarity is None and not scenario.pipelined:
        repeats = 20 if device.type == "cuda" else 3
        result["stages_ms"] = stage_times(pipe, _inputs(scenario, options)[0],
                                          graphs=AccelMode.parse(report.mode).graphs, repeats=repeats)
    return result


def prepared_stream(scenario: Scenario, entry: _Loaded, device: torch.device, options: BenchOptions,
                    prompt: str | None = None) -> StreamPipeline:
    """A stream with the scenario's settings over a loaded model, prepared with the prompt (default the
    options' prompt)."""
    pipe = StreamPipeline(entry.components, _config(scenario, entry, device, options),
                          lcm_boundary=entry.spec.lcm_boundary, control_names=entry.control_names)
    if scenario.ip_adapter is not None:
        pipe.set_style_image(style_picture())
    pipe.prepare(prompt=options.prompt if prompt is None else prompt)
    return pipe


def _style_change_ms(stream: Any, device: torch.device, repeats: int) -> float:
    """Median milliseconds of a live style picture change, waited for: the image encoder and the adapter's
    projection on the picture, and the conditioning stored again (once per picture, not per frame)."""
    picture, samples = style_picture(), []
    for _ in range(repeats):
        start = time.perf_counter()
        stream.set_style_image(picture)
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(samples))


def _config(scenario: Scenario, entry: _Loaded, device: torch.device, options: BenchOptions):
    from ..config import StreamConfig

    settings = scenario.settings()
    if scenario.steps == len(entry.spec.t_index_list):
        settings.pop("steps"), settings.pop("strength")
        settings["t_index_list"] = entry.spec.t_index_list
    if entry.control_preprocess is not None:
        settings["control_preprocess"] = entry.control_preprocess
    return StreamConfig(device=str(device), dtype=options.dtype, seed=2, **settings)


def _inputs(scenario: Scenario, options: BenchOptions) -> list[np.ndarray]:
    size = scenario.resolution
    clip = make_clip(scenario.clip, max(options.clip_frames, scenario.frame_buffer_size), size, size)
    return batched(clip, scenario.frame_buffer_size)


def _time_stream(stream: Any, scenario: Scenario, options: BenchOptions, device: torch.device) -> dict[str, Any]:
    inputs = _inputs(scenario, options)
    returned = stream.img2img_pipelined(itertools.cycle(inputs)) if scenario.pipelined else None
    if returned is not None:
        call = lambda frame: next(returned)  # noqa: E731 - the frame leaving; the next one is already launched
    elif scenario.task == "img2img":
        call = lambda frame: stream.img2img(frame, output_type="np")  # noqa: E731
    else:
        call = lambda frame: stream.txt2img(output_type="np")  # noqa: E731
    meter = EnergyMeter(device)
    try:
        measured = time_calls(call, inputs, warmup=options.warmup, calls=options.calls, device=device, meter=meter,
                              min_seconds=options.min_seconds, wait_each=returned is None)
    finally:
        if returned is not None:
            returned.close()
    stats = stream.stats
    skipped = stats.skipped / max(1, stats.frames)
    return _result(scenario, "streamdiff", measured.latency, measured.joules_per_frame(scenario.frame_buffer_size),
                   skip_rate=skipped if scenario.similarity is not None else None)


def _result(scenario: Scenario, kind: str, latency: Latency, joules: float | None, **extra: Any) -> dict[str, Any]:
    f = scenario.frame_buffer_size
    name = scenario.name() if kind == "streamdiff" else f"{kind}: {scenario.name()}"
    return {"scenario": scenario.as_dict(), "name": name,
            "kind": kind, "latency": latency.as_dict(), "ms_per_frame": latency.median_ms / f, "fps": latency.fps(f),
            "joules_per_frame": joules, **extra}


def run_baseline(name: str, scenario: Scenario, options: BenchOptions, pool: ModelPool,
                 device: torch.device) -> dict[str, Any]:
    """Time a baseline on pristine modules of the scenario's model."""
    # Loaded first: whether the model is SDXL is known from its modules (the streams load it next anyway).
    entry = pool.get(scenario.model, scenario.taesd, pristine=True, controlnet=scenario.controlnet,
                     control_preprocess=scenario.control_preprocess,
                     depth_estimator=scenario.depth_estimator, ip_adapter=scenario.ip_adapter)
    reason = baselines.unavailable(name, device.type, controlnet=scenario.controlnet is not None,
                                   sdxl=entry.components.sdxl, ip_adapter=scenario.ip_adapter is not None)
    base = scenario.with_changes(accel="none", label="")
    if reason:
        return {"scenario": base.as_dict(), "name": f"{name}: {base.name()}", "kind": name, "error": reason}
    config = _config(scenario, entry, device, options)
    if name == "diffusers":
        style = style_picture() if scenario.ip_adapter is not None else None
        call = baselines.diffusers_call(entry.components, config, options.prompt, scenario.task, style)
    else:
        call = baselines.streamdiffusion_call(entry.components, config, options.prompt, scenario.task, pool.dtype)
    reset_peak_memory(device)
    calls = max(3, options.calls // 4)  # baselines are many times slower; fewer calls keep runs short
    start = time.perf_counter()
    measured = time_calls(call, _inputs(scenario, options), warmup=min(3, options.warmup), calls=calls,
                          device=device, meter=EnergyMeter(device))
    result = _result(base, name, measured.latency, measured.joules_per_frame(scenario.frame_buffer_size))
    result.update(peak_gpu_memory_mb=peak_memory_mb(device), seconds=time.perf_counter() - start)
    return result
