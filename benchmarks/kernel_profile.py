"""Kernel-level profile of the accelerated step, and compiler variants timed side by side, in one call.

    python benchmarks/kernel_profile.py all --out DIR --budget 560 [--variants a,b,...]

Phase 1 compiles every variant at once in separate processes (compilation is CPU work; the kernels land
in one on-disk cache). Phase 2 runs the variants one after another, each alone on the GPU: the cached
kernels load, the step is captured, timed host-uint8-in to host-uint8-out, and profiled with CUPTI:
kernels grouped by kind (convolution, matrix product, attention, Triton norm/pointwise, copies), the
kernel count per frame, and the idle time between kernels inside the replayed graph.
Models use random weights of their real architectures (SDXS-512: a reconstruction).

    python benchmarks/kernel_profile.py all --out DIR --variants a,b --probe overlap

runs the overlap probe instead of the profile in phase 2: the step's GPU time against its host-to-host
time, where the host time goes, and whether two steps or a frame's stages run faster side by side.
`kernel_profile.py fp8 --json FILE` times the UNet's per-frame linear layers in fp16 and in float8.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("STREAMDIFF_PROFILE_CACHE", "/tmp/streamdiff-profile-inductor"))
RES = 512

AUTOTUNE_CONV = {"max_autotune": True, "max_autotune_conv_backends": "ATEN,TRITON",
                 "max_autotune_gemm_backends": "ATEN,TRITON"}
AUTOTUNE_GEMM = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"}
# Programmatic dependent launch (Hopper): a Triton kernel starts while the one before it finishes and waits
# on the device for the data it reads, instead of the graph's ~0.8 us gap between them.
PDL = {"triton.enable_pdl": True}
# Convolutions autotuned between cuDNN and Triton templates, matrix products left to cuBLAS (one choice: no
# benchmarking, which is what made the products' autotuning too slow to start).
AUTOTUNE_CONV_ONLY = {"max_autotune": True, "max_autotune_conv_backends": "ATEN,TRITON",
                      "max_autotune_gemm_backends": "ATEN"}


@dataclass(frozen=True)
class Variant:
    """One way of building the step: model and batch, and the Inductor options of the UNet and the codec
    (None: that part is not compiled, its eager kernels are captured as they are)."""

    model: str = "sd-turbo"
    fbs: int = 1
    steps: int = 1
    unet: dict[str, Any] | None = field(default_factory=dict)
    codec: dict[str, Any] | None = field(default_factory=dict)
    fuse_codec: bool = True  # TAESD's convolutions as fused cuDNN kernels (then the codec is not compiled)
    cache_conditioning: bool = True  # time projections and cross-attention keys/values stored per prompt
    cudnn_benchmark_limit: int | None = None  # cuDNN algorithms tried per convolution (0: all; None: torch's 10)


VARIANTS: dict[str, Variant] = {
    "turbo-b1": Variant(),
    "turbo-b1-unfused": Variant(fuse_codec=False),
    "turbo-b1-uncached": Variant(cache_conditioning=False),
    "turbo-b1-cudnn-all": Variant(cudnn_benchmark_limit=0),
    "turbo-b16-cudnn-all": Variant(fbs=16, cudnn_benchmark_limit=0),
    "sdxs-b1-cudnn-all": Variant(model="sdxs-512", cudnn_benchmark_limit=0),
    "turbo-b1-combo": Variant(unet={"combo_kernels": True}),
    "turbo-b1-aggressive": Variant(unet={"aggressive_fusion": True}),
    "turbo-b16-uncached": Variant(fbs=16, cache_conditioning=False),
    "sdxs-b1-uncached": Variant(model="sdxs-512", cache_conditioning=False),
    "turbo-2step": Variant(steps=2),
    "turbo-b16": Variant(fbs=16),
    "turbo-b8": Variant(fbs=8),
    "sdxs-b1": Variant(model="sdxs-512"),
    "turbo-b1-codec-autotune": Variant(codec=AUTOTUNE_CONV, fuse_codec=False),
    "turbo-b1-freeze": Variant(unet={"freezing": True}, codec={"freezing": True}, fuse_codec=False),
    "turbo-b32": Variant(fbs=32),
    "turbo-b1-unet-autotune-mm": Variant(unet=AUTOTUNE_GEMM),
    "turbo-b1-mm-codec-autotune": Variant(unet=AUTOTUNE_GEMM, codec=AUTOTUNE_CONV, fuse_codec=False),
    "turbo-b16-codec-autotune": Variant(fbs=16, codec=AUTOTUNE_CONV, fuse_codec=False),
    "turbo-b16-mm-codec-autotune": Variant(fbs=16, unet=AUTOTUNE_GEMM, codec=AUTOTUNE_CONV, fuse_codec=False),
    "sdxs-b1-codec-autotune": Variant(model="sdxs-512", codec=AUTOTUNE_CONV, fuse_codec=False),
    "turbo-b32-codec-autotune": Variant(fbs=32, codec=AUTOTUNE_CONV, fuse_codec=False),
    "turbo-b1-pdl": Variant(unet=PDL),
    "turbo-2step-pdl": Variant(steps=2, unet=PDL),
    "turbo-b16-pdl": Variant(fbs=16, unet=PDL),
    "sdxs-b1-pdl": Variant(model="sdxs-512", unet=PDL),
    "turbo-b1-unet-conv-autotune": Variant(unet=AUTOTUNE_CONV_ONLY),
}


def _log(out: Path, text: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {text}"
    print(line, flush=True)
    with open(out / "profile.log", "a") as f:
        f.write(line + "\n")


# ----- kernel names to kinds ------------------------------------------------------------------------

KINDS = ("conv", "layout", "matmul", "attention", "triton-norm", "triton-pointwise", "triton-template",
         "aten-elementwise", "copy", "other")


def kernel_kind(name: str) -> str:
    """The kind of work a CUDA kernel does, from its name (cuDNN, cuBLAS, flash attention, Inductor's Triton)."""
    n = name.lower()
    if n.startswith(("triton_tem", "triton_mm", "triton_conv")):
        return "triton-template"
    if n.startswith(("triton_red", "triton_per")):
        return "triton-norm"
    if n.startswith("triton"):
        return "triton-pointwise"
    if n.startswith(("memcpy", "memset")) or ("copy" in n and "kernel" not in n):
        return "copy"
    if "nchwtonhwc" in n or "nhwctonchw" in n or "transpose" in n:
        return "layout"
    if "flash" in n or "fmha" in n or "attention" in n or "sdpa" in n:
        return "attention"
    if "fprop" in n or "conv" in n or "implicit" in n or "dgrad" in n or "cudnn" in n:
        return "conv"
    if "gemm" in n or "nvjet" in n or "cutlass" in n or "gemv" in n or "xmma" in n:
        return "matmul"
    if "elementwise" in n or "reduce" in n or "at::native" in n:
        return "aten-elementwise"
    return "other"


def summarise(events: list[tuple[str, float, float]], calls: int) -> dict[str, Any]:
    """Kernel (name, start_us, duration_us) records of `calls` calls -> per-call totals by kind, top kernels,
    and the idle time between consecutive kernels."""
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, _, dur in events:
        kind = by_kind[kernel_kind(name)]
        kind[0] += dur
        kind[1] += 1
        entry = by_name[name]
        entry[0] += dur
        entry[1] += 1
    ordered = sorted(events, key=lambda e: e[1])
    gaps = [b[1] - (a[1] + a[2]) for a, b in itertools.pairwise(ordered)]
    small_gaps = [g for g in gaps if 0 <= g < 50.0]  # longer ones are between calls, not inside one
    busy = sum(e[2] for e in events)
    return {
        "calls": calls,
        "kernels_per_call": len(events) / calls,
        "kernel_us_per_call": busy / calls,
        "gap_us_per_call": sum(small_gaps) / calls,
        "by_kind_us_per_call": {k: round(v[0] / calls, 1) for k, v in sorted(by_kind.items(), key=lambda i: -i[1][0])},
        "by_kind_count_per_call": {k: v[1] / calls for k, v in by_kind.items()},
        "top": [{"name": n[:160], "us_per_call": round(v[0] / calls, 1), "count_per_call": v[1] / calls,
                 "kind": kernel_kind(n)} for n, v in sorted(by_name.items(), key=lambda i: -i[1][0])[:120]],
    }


def profile_kernels(fn, calls: int) -> dict[str, Any]:
    """Run fn `calls` times under the CUDA profiler; the kernels it launched (graph replays included)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = []
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        start = e.time_range.start
        events.append((e.name, float(start), float(e.time_range.end - start)))
    return summarise(events, calls)


def graph_ms(fn) -> float:
    """fn's time in ms, captured in a CUDA graph and replayed (Triton's `do_bench_cudagraph`)."""
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=100))


def rel_err(y, ref) -> float:
    """The largest difference of y from the float32 reference, relative to the reference's largest magnitude."""
    return float((y.float() - ref).abs().max() / ref.abs().max())


def probe_arguments(doc: str) -> argparse.Namespace:
    """The block and layer probes' command line: --out DIR and --batches, a comma-separated list."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def run_probes(probe, items, batches: str) -> list[dict[str, Any]]:
    """probe(item, batch) for each batch of the comma-separated list and each item, every result printed as
    one JSON line as it comes."""
    rows = []
    for batch in [int(b) for b in batches.split(",")]:
        for item in items:
            rows.append(probe(item, batch))
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ----- phases ---------------------------------------------------------------------------------------

def _build(name: str):
    """The variant's stream, compiled (at its first frames) and captured."""
    import torch

    from streamdiff.backends import compile as compiling
    from streamdiff.backends.accelerate import accelerate
    from streamdiff.backends.torch import TorchDenoiser
    from streamdiff.bench.run import BenchOptions, ModelPool, prepared_stream
    from streamdiff.bench.scenario import Scenario

    v = VARIANTS[name]
    device = torch.device("cuda")
    options = BenchOptions(random_weights=True, cache_dir=str(CACHE), device="cuda")
    pool = ModelPool(options, device, torch.float16)
    entry = pool.get(v.model, True, pristine=False)
    scenario = Scenario(model=v.model, steps=v.steps, frame_buffer_size=v.fbs, resolution=RES)
    prompt = "a watercolor painting of a lighthouse at dusk"
    pipe = prepared_stream(scenario, entry, device, options, prompt)
    if not v.cache_conditioning:
        pipe.denoiser = TorchDenoiser(pipe.components.unet, cache_conditioning=False)
        pipe.prepare(prompt)
    compiling.use_cache_dir(CACHE)
    parts = compiling.compiled_parts(pipe.components.unet, pipe.components.vae)
    for part, module in parts.items():
        opts = v.unet if part == "unet" else v.codec
        if opts is None or (part != "unet" and v.fuse_codec):
            continue
        preset = f"profile-{name}-{'unet' if part == 'unet' else 'codec'}"
        compiling.COMPILE_PRESETS[preset] = opts
        compiling.compile_in_place({part: module}, preset)
    if v.cudnn_benchmark_limit is not None:
        torch.backends.cudnn.benchmark_limit = v.cudnn_benchmark_limit
    start = time.time()
    stream, _ = accelerate(pipe, "graphs", cache_dir=str(CACHE), fuse_codec=v.fuse_codec, progress=print)
    return pipe, stream, time.time() - start, scenario, options


def _built_and_timed(name: str):
    """The variant's stream as _build gives it, its input frames, and its host-to-host latency (at least 200
    calls and 2 s, after 20 warm-up calls)."""
    import torch

    from streamdiff.bench.measure import time_calls
    from streamdiff.bench.run import _inputs

    pipe, stream, built, scenario, options = _build(name)
    inputs = _inputs(scenario, options)
    measured = time_calls(lambda f: stream.img2img(f, output_type="np"), inputs, warmup=20, calls=200,
                          device=torch.device("cuda"), min_seconds=2.0)
    return pipe, stream, built, inputs, measured.latency


def _stage_inputs(pipe, frame) -> tuple[dict[str, Any], dict[str, list[tuple[tuple, dict]]]]:
    """The stages' modules (encoder, UNet, decoder) and the inputs one frame gives each."""
    from streamdiff.bench.stages import record_inputs

    vae = pipe.components.vae
    modules = {"encode": vae.encoder, "unet": pipe.components.unet, "decode": vae.decoder}
    return modules, record_inputs(pipe, frame, modules)


def phase_prewarm(args: argparse.Namespace) -> None:
    _, _, seconds, _, _ = _build(args.variant)
    print(f"prewarm {args.variant}: built in {seconds:.1f} s")


def phase_measure(args: argparse.Namespace) -> None:
    import torch

    from streamdiff.bench.stages import stage_call, stage_times

    v = VARIANTS[args.variant]
    pipe, stream, built, inputs, lat = _built_and_timed(args.variant)
    frames = iter(inputs * 100)
    step = profile_kernels(lambda: stream.img2img(next(frames), output_type="np"), calls=20)
    stages = stage_times(pipe, inputs[0], graphs=True, repeats=30)
    mods, calls = _stage_inputs(pipe, inputs[0])
    modules = {}
    for stage, module in mods.items():
        with torch.no_grad():
            modules[stage] = profile_kernels(stage_call(pipe, stage, module, *calls[stage][0]), calls=10)
    codec_error = _fused_codec_error(pipe, calls) if v.fuse_codec else None
    result = {"variant": args.variant, "spec": v.__dict__, "build_seconds": built,
              "median_ms": lat.median_ms, "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms, "calls": lat.calls,
              "ms_per_frame": lat.median_ms / v.fbs, "fps": 1000.0 * v.fbs / lat.median_ms,
              "stages_ms": stages, "step_kernels": step, "module_kernels": modules,
              "fused_codec_error": codec_error}
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("variant", "median_ms", "ms_per_frame", "fps", "stages_ms")}))


def _fused_codec_error(pipe, calls) -> dict[str, float]:
    """The fused codec against the same codec unfused (eager), on the inputs one frame gave it: relative
    error of the latents, and of the pictures in uint8 levels."""
    import torch

    from streamdiff.backends import codec_fusion

    vae = pipe.components.vae
    (enc_in,), _ = calls["encode"][0]
    (dec_in,), _ = calls["decode"][0]
    with torch.no_grad():
        fused = (vae.encoder(enc_in).float(), vae.decoder(dec_in).float())
        codec_fusion.unfuse(vae)
        plain = (vae.encoder(enc_in).float(), vae.decoder(dec_in).float())
        codec_fusion.fuse(vae)
    levels = ((fused[1] - plain[1]).abs() * 127.5).max().item()
    rel = (torch.linalg.vector_norm(fused[0] - plain[0]) / torch.linalg.vector_norm(plain[0])).item()
    return {"latent_rel_err": rel, "picture_max_levels": levels}


def phase_fusedconv(args: argparse.Namespace) -> None:
    """TAESD's 64-channel 3x3 convolution with bias and ReLU: eager (conv, then a ReLU pass) vs cuDNN's fused
    conv-bias-ReLU, each captured as a graph and timed; and the fused result's error against float32."""
    import torch
    import torch.nn.functional as F

    from streamdiff.bench.stages import _timer

    torch.backends.cudnn.benchmark = True  # as the accelerated stream sets it
    timer = _timer(torch.device("cuda"), True, 50)
    rows = []
    for batch in (1, 16):
        for size in (512, 256, 128, 64):
            x = torch.randn(batch, 64, size, size, device="cuda", dtype=torch.float16).to(
                memory_format=torch.channels_last)
            w = (torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.float16) / 24).to(
                memory_format=torch.channels_last)
            b = torch.randn(64, device="cuda", dtype=torch.float16)
            z = torch.randn_like(x)
            one = (1, 1)
            fns = {
                "eager": functools.partial(lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), x, w, b),
                "fused": functools.partial(torch.cudnn_convolution_relu, x, w, b, one, one, one, 1),
                "eager_add": functools.partial(lambda x, w, b, z: F.relu(F.conv2d(x, w, b, padding=1) + z), x, w, b, z),
                "fused_add": functools.partial(torch.cudnn_convolution_add_relu, x, w, z, 1.0, b, one, one, one, 1),
            }
            row: dict[str, Any] = {"batch": batch, "size": size}
            for name, fn in fns.items():
                try:
                    row[f"{name}_us"] = round(timer(fn) * 1000, 1)
                except Exception as exc:  # noqa: BLE001 - an unsupported fusion is itself the result
                    row[f"{name}_us"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            try:
                ref = F.relu(F.conv2d(x.float(), w.float(), b.float(), padding=1))
                got = fns["fused"]().float()
                row["fused_rel_err"] = float((got - ref).norm() / ref.norm())
            except Exception as exc:  # noqa: BLE001
                row["fused_rel_err"] = repr(exc)[:120]
            rows.append(row)
            print(row, flush=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


def _replays_ms(lanes: list, rounds: int = 10, repeats: int = 15) -> float:
    """Median milliseconds of one round in which every lane (a list of replay functions run one after the
    other on the lane's own CUDA stream) runs once; `rounds` rounds are queued back to back per sample, so
    this is the steady state of lanes that overlap on the GPU (one lane: plain back-to-back replays)."""
    import torch

    main = torch.cuda.current_stream()
    streams = [torch.cuda.Stream() for _ in lanes]
    samples = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(main)
        for stream in streams:
            stream.wait_stream(main)
        for _ in range(rounds):
            for stream, fns in zip(streams, lanes):
                with torch.cuda.stream(stream):
                    for fn in fns:
                        fn()
        for stream in streams:
            main.wait_stream(stream)
        end.record(main)
        end.synchronize()
        samples.append(start.elapsed_time(end) / rounds)
    return float(sorted(samples[2:])[len(samples[2:]) // 2])


def _host_breakdown(stream, inputs: list, calls: int = 300) -> dict[str, float]:
    """Median host milliseconds per call of each part of an accelerated call, the wait for the GPU included
    (`Event.synchronize`); `call` is the whole img2img. The parts are timed by wrapping their classes' methods."""
    import numpy as np
    import torch

    from streamdiff.backends.graphs import FrameBuffers
    from streamdiff.backends.runner import AcceleratedStream
    from streamdiff.stream import StreamPipeline

    parts = {"load": (FrameBuffers, "load"), "fetch": (FrameBuffers, "fetch"),
             "begin": (StreamPipeline, "begin_device_frame"), "end": (StreamPipeline, "end_device_frame"),
             "launch": (torch.cuda.CUDAGraph, "replay"), "wait": (torch.cuda.Event, "synchronize"),
             "fast_input": (AcceleratedStream, "_fast_input"), "lookup": (AcceleratedStream, "_lookup")}
    spent: dict[str, list[float]] = {name: [] for name in [*parts, "call"]}
    originals = {name: getattr(cls, attr) for name, (cls, attr) in parts.items()}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name][-1] += time.perf_counter() - start
        return wrapper

    for name, (cls, attr) in parts.items():
        setattr(cls, attr, timed(name, originals[name]))
    try:
        for i in range(calls):
            for values in spent.values():
                values.append(0.0)
            start = time.perf_counter()
            stream.img2img(inputs[i % len(inputs)], output_type="np")
            spent["call"][-1] = time.perf_counter() - start
    finally:
        for name, (cls, attr) in parts.items():
            setattr(cls, attr, originals[name])
    return {name: round(float(np.median(v[20:])) * 1000, 4) for name, v in spent.items()}


def phase_overlap(args: argparse.Namespace) -> None:
    """How much of the GPU one step leaves idle: the captured step's device time against its host-to-host
    latency; two captures of the step replayed on two CUDA streams at once; and the codec and UNet stages
    (each its own graph) replayed on three streams at once, as a pipeline that overlaps frames would."""
    import torch

    from streamdiff.backends.graphs import CudaGraphCapture, FrameBuffers
    from streamdiff.backends.runner import _Step
    from streamdiff.bench.stages import stage_call

    v = VARIANTS[args.variant]
    pipe, stream, built, inputs, lat = _built_and_timed(args.variant)
    host = _host_breakdown(stream, inputs)
    step = next(s for s in stream._steps.values() if isinstance(s, _Step))
    one = _replays_ms([[step.record.replay]])
    carry = pipe.new_carry()
    frames = inputs[1 % len(inputs)].reshape(v.fbs, RES, RES, 3)
    buffers = FrameBuffers.allocate(torch.empty(frames.shape, dtype=torch.uint8), None, pipe.device)
    buffers.load(frames)
    own = stream._carry
    pipe.attach_carry(carry)
    fn = functools.partial(pipe.device_step, buffers.device_in, carry, True)
    second, _ = CudaGraphCapture()(fn, (*pipe.step_buffers(), carry.previous_x0, carry.previous_output))
    pipe.attach_carry(own)
    two = _replays_ms([[step.record.replay], [second.replay]])
    mods, calls = _stage_inputs(pipe, inputs[0])
    graphs = {}
    with torch.no_grad():
        for stage, module in mods.items():
            graphs[stage], _ = CudaGraphCapture()(stage_call(pipe, stage, module, *calls[stage][0]), ())
    stages_alone = {stage: _replays_ms([[g.replay]]) for stage, g in graphs.items()}
    sequential = _replays_ms([[g.replay for g in graphs.values()]])
    overlapped = _replays_ms([[g.replay] for g in graphs.values()])
    codec_beside_unet = _replays_ms([[graphs["encode"].replay, graphs["decode"].replay], [graphs["unet"].replay]])
    result = {"variant": args.variant, "fbs": v.fbs, "steps": v.steps, "build_seconds": built,
              "host_to_host_median_ms": lat.median_ms, "host_to_host_p10_ms": lat.p10_ms,
              "host_breakdown_ms": host, "step_replay_ms": one, "two_lanes_round_ms": two,
              "two_lanes_ms_per_call": two / 2,
              "stages_alone_ms": stages_alone, "stages_sequential_ms": sequential,
              "stages_three_streams_ms": overlapped, "codec_beside_unet_ms": codec_beside_unet}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def _note(seen: dict[str, tuple[int, ...]], name: str, shape: tuple[int, ...]) -> None:
    """A forward hook's record of a layer's input shape (it returns None, so the output stays as it is)."""
    seen.setdefault(name, tuple(shape))


def phase_fp8(args: argparse.Namespace) -> None:
    """Every per-frame linear layer of the SD-Turbo UNet (those the conditioning cache does not cover) as
    recorded at batch 1 and 16: fp16 F.linear against float8 e4m3 torch._scaled_mm, each captured and timed
    alone; the fp8 time with and without quantising the activation (eager, so an upper bound on its cost),
    and the fp8 result's error against fp16. An upper bound on what fp8 matrix products could save."""
    import torch
    import torch.nn.functional as F

    from streamdiff.bench.run import BenchOptions, ModelPool
    from streamdiff.bench.stages import _timer

    device = torch.device("cuda")
    pool = ModelPool(BenchOptions(random_weights=True, cache_dir=str(CACHE), device="cuda"), device, torch.float16)
    unet = pool.get("sd-turbo", True, pristine=True).components.unet
    skip = ("time_emb_proj", "time_embedding", "attn2.to_k", "attn2.to_v")
    linears = {n: m for n, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip)}
    timer = _timer(device, True, 30)
    fp8 = torch.float8_e4m3fn
    report: dict[str, Any] = {}
    for batch in (1, 16):
        seen: dict[str, tuple[int, ...]] = {}
        handles = [m.register_forward_hook(lambda mod, a, o, n=n, seen=seen: _note(seen, n, a[0].shape))
                   for n, m in linears.items()]
        with torch.no_grad():
            unet(torch.randn(batch, 4, 64, 64, device=device, dtype=torch.float16),
                 torch.full((batch,), 999, device=device),
                 encoder_hidden_states=torch.randn(batch, 77, 1024, device=device, dtype=torch.float16))
        for h in handles:
            h.remove()
        totals = {"fp16": 0.0, "fp8_mm": 0.0, "fp8_with_quant": 0.0}
        errors = []
        shapes: dict[tuple[int, int, int], int] = defaultdict(int)
        for n, shape in seen.items():
            m = linears[n]
            shapes[(int(torch.tensor(shape[:-1]).prod()), m.in_features, m.out_features)] += 1
        rows = []
        for (rows_m, k, n_out), count in sorted(shapes.items()):
            x = torch.randn(rows_m, k, device=device, dtype=torch.float16)
            w = torch.randn(n_out, k, device=device, dtype=torch.float16) / k ** 0.5
            b = torch.randn(n_out, device=device, dtype=torch.float16)
            b16 = b.to(torch.bfloat16)  # row-wise scaled products write bfloat16 and take its bias
            w_scale = (w.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
            w8 = (w.float() / w_scale).to(fp8)
            x_scale = (x.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
            x8 = (x.float() / x_scale).to(fp8)

            def quantised_mm(x8=x8, xs=x_scale, w8=w8, ws=w_scale, b=b16):
                return torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws.t(), bias=b, out_dtype=torch.bfloat16)

            def full(x=x, w8=w8, ws=w_scale, b=b16):
                xs = (x.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
                return torch._scaled_mm((x / xs).to(fp8), w8.t(), scale_a=xs, scale_b=ws.t(), bias=b,
                                        out_dtype=torch.bfloat16)

            row: dict[str, Any] = {"m": rows_m, "k": k, "n": n_out, "count": count}
            row["fp16_us"] = timer(functools.partial(F.linear, x, w, b)) * 1000
            try:
                row["fp8_mm_us"] = timer(quantised_mm) * 1000
                row["fp8_with_quant_us"] = timer(full) * 1000
                ref = F.linear(x.float(), w.float(), b.float())
                got = quantised_mm().float()
                row["fp8_rel_err"] = float((got - ref).norm() / ref.norm())
                row["fp16_rel_err"] = float((F.linear(x, w, b).float() - ref).norm() / ref.norm())
                errors.append(row["fp8_rel_err"])
            except Exception as exc:  # noqa: BLE001 - an unsupported shape is itself the answer
                row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
            for key, total in (("fp16", "fp16_us"), ("fp8_mm", "fp8_mm_us"), ("fp8_with_quant", "fp8_with_quant_us")):
                totals[key] += row.get(total, row["fp16_us"]) * count / 1000 / batch
            rows.append(row)
        report[f"batch{batch}"] = {"ms_per_frame": totals, "layers": sum(shapes.values()), "rows": rows,
                                   "max_fp8_rel_err": max(errors) if errors else None}
        print(batch, json.dumps(totals), flush=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


def phase_environment(args: argparse.Namespace) -> None:
    import importlib.util

    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "gpu": torch.cuda.get_device_name(0),
           "tensorrt": importlib.util.find_spec("tensorrt") is not None,
           "torch_tensorrt": importlib.util.find_spec("torch_tensorrt") is not None,
           "torchao": importlib.util.find_spec("torchao") is not None}
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception as exc:  # noqa: BLE001 - any failure to load it is the answer
        env["onnxruntime_providers"] = repr(exc)
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                        "--format=csv,noheader"], check=False, capture_output=True, text=True).stdout.strip()
    Path(args.json).write_text(json.dumps(env, indent=1))
    print(env)


# ----- driver ---------------------------------------------------------------------------------------

def _me(*args: str) -> list[str]:
    return [sys.executable, "-u", str(Path(__file__).resolve()), *args]


def _pack_cache(out: Path, limit_mb: int = 15, parts: int = 4) -> None:
    """The compile cache as up to `parts` tar.gz pieces of < limit_mb each, to start the next call warm."""
    if not CACHE.exists():
        return
    archive = Path("/tmp/inductor-cache.tar.gz")
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(CACHE, arcname="inductor")
    data = archive.read_bytes()
    size = limit_mb * 2**20
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    if len(pieces) > parts:
        _log(out, f"compile cache is {len(data) / 2**20:.0f} MiB packed: not returned")
        return
    for i, piece in enumerate(pieces):
        (out / f"cache.tgz.{i}").write_bytes(piece)
    _log(out, f"compile cache: {len(data) / 2**20:.1f} MiB in {len(pieces)} piece(s)")


def _unpack_cache(source: Path, out: Path) -> None:
    pieces = sorted(source.glob("cache.tgz.*"), key=lambda p: int(p.suffix[1:])) if source.exists() else []
    if not pieces:
        return
    archive = Path("/tmp/inductor-cache-in.tar.gz")
    archive.write_bytes(b"".join(p.read_bytes() for p in pieces))
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE.parent / "unpacked", filter="data")
    (CACHE.parent / "unpacked" / "inductor").rename(CACHE)
    _log(out, f"compile cache restored from {len(pieces)} piece(s)")


def run_all(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    names = [n for n in args.variants.split(",") if n]
    if not CACHE.exists() and args.cache_from:
        _unpack_cache(Path(args.cache_from), out)
    subprocess.run(_me("environment", "--json", str(out / "environment.json")), check=False, timeout=60)
    _log(out, f"prewarm {len(names)} variants at once")
    procs = {}
    for n in names:
        with open(out / f"pre-{n}.log", "w") as log:
            procs[n] = subprocess.Popen(_me("prewarm", "--variant", n), stdout=log, stderr=subprocess.STDOUT)
    prewarm_end = min(deadline - 100, time.time() + args.prewarm_limit)
    for n, p in procs.items():
        try:
            p.wait(timeout=max(1.0, prewarm_end - time.time()))
            _log(out, f"prewarm {n}: rc={p.returncode}")
        except subprocess.TimeoutExpired:
            p.kill()
            _log(out, f"prewarm {n}: stopped at its time limit")
    results = {}
    for n in names:
        left = deadline - time.time() - 40
        if left < 40:
            _log(out, f"measure {n}: skipped ({left:.0f} s left)")
            continue
        path = out / f"m-{n}.json"
        with open(out / "profile.log", "a") as log:
            try:
                rc = subprocess.run(_me(args.probe, "--variant", n, "--json", str(path)), check=False, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=min(left, 240)).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        _log(out, f"measure {n}: rc={rc}")
        if path.exists():
            results[n] = json.loads(path.read_text())
            path.unlink()
    (out / "profile.json").write_text(json.dumps(results, indent=1, default=str))
    for n in names:
        tail = (out / f"pre-{n}.log").read_text()[-1500:] if (out / f"pre-{n}.log").exists() else ""
        with open(out / "profile.log", "a") as f:
            f.write(f"\n--- prewarm {n} (tail)\n{tail}\n")
        (out / f"pre-{n}.log").unlink(missing_ok=True)
    if args.fp8 and deadline - time.time() > 45:
        subprocess.run(_me("fp8", "--json", str(out / "fp8.json")), check=False,
                       timeout=max(10.0, deadline - time.time() - 5))
    if args.fusedconv and deadline - time.time() > 45:
        subprocess.run(_me("fusedconv", "--json", str(out / "fusedconv.json")), check=False,
                       timeout=max(10.0, deadline - time.time() - 5))
    if args.pack_cache:
        _pack_cache(out)
    if args.probe == "measure":
        print_table(results)


def print_table(results: dict[str, Any]) -> None:
    print("\n| variant | ms/call | ms/frame | fps | kernels | kernel ms | gaps ms | " + " | ".join(KINDS[:7]) + " |")
    for n, r in results.items():
        k = r["step_kernels"]
        kinds = k["by_kind_us_per_call"]
        print(f"| {n} | {r['median_ms']:.2f} | {r['ms_per_frame']:.2f} | {r['fps']:.0f} | "
              f"{k['kernels_per_call']:.0f} | {k['kernel_us_per_call'] / 1000:.2f} | {k['gap_us_per_call'] / 1000:.2f} | "
              + " | ".join(f"{kinds.get(kind, 0) / 1000:.2f}" for kind in KINDS[:7]) + " |")
    for n, r in results.items():
        print(n, "stages", {s: round(t, 3) for s, t in r["stages_ms"].items()}, "fused codec vs unfused:",
              r.get("fused_codec_error"))
        for stage, k in r["module_kernels"].items():
            print(f"  {stage}: {k['kernels_per_call']:.0f} kernels, {k['kernel_us_per_call'] / 1000:.2f} ms, "
                  f"gaps {k['gap_us_per_call'] / 1000:.2f} ms, " +
                  ", ".join(f"{kk} {vv / 1000:.2f}" for kk, vv in k["by_kind_us_per_call"].items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["all", "prewarm", "measure", "overlap", "fp8", "environment", "fusedconv"])
    parser.add_argument("--out", default=os.environ.get("OUT", "profile-out"))
    parser.add_argument("--budget", type=float, default=560.0)
    parser.add_argument("--prewarm-limit", type=float, default=300.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--json")
    parser.add_argument("--cache-from", default=None, help="folder holding cache.tgz.N pieces of an earlier call")
    parser.add_argument("--pack-cache", action="store_true")
    parser.add_argument("--fusedconv", action="store_true", help="also time cuDNN's fused conv-bias-ReLU")
    parser.add_argument("--fp8", action="store_true", help="also time the UNet's linear layers in float8")
    parser.add_argument("--probe", choices=["measure", "overlap"], default="measure",
                        help="what runs for each variant after the prewarm")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    {"all": run_all, "prewarm": phase_prewarm, "measure": phase_measure, "environment": phase_environment,
     "fusedconv": phase_fusedconv, "overlap": phase_overlap, "fp8": phase_fp8}[args.what](args)


if __name__ == "__main__":
    main()
