"""Where a live style picture change (`set_style_image`) spends its time on an accelerated stream.

For each model: build the stream with a random-weight IP-Adapter (`--accel`, default graphs: the change runs
no compiled code), give it a picture, run warm frames, then time `--repeats` changes, each waited for, in
parts: the CLIP preprocessing on the host, the image encoder, the adapter's projection, and the rest of
set_style_image (the tokens written in place, the conditioning stored again, also timed alone); then
set_style_image given pixels prepared beforehand (style_pixels), and a prompt change (update_prompt, a new prompt
each time, so the prompt cache never answers). Each model runs twice: the work of a change eager (as before
backends/call_graph.py) and replayed as CUDA graphs, as the graph modes run it now. One change is also profiled:
the ops that took the most host time and the number of kernels launched. Last, the first frame after a change
and the median frame between changes, which should not move.

    python3 benchmarks/style_switch_probe.py --out DIR [--models sdxl-turbo,sd15-lcm] [--accel graphs]
                                             [--arms eager,graphed]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from probe_rows import collect, save


def probe(model: str, accel: str, device: str, repeats: int, graphed: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from streamdiff.backends.accelerate import _graph_change_work, accelerate
    from streamdiff.bench.clips import style_picture
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_model(model, random_weights=not model.startswith("tiny"), device=device, ip_adapter="base")
    pictures = [style_picture(), style_picture(384)]
    pipe.set_style_image(pictures[0])
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    stream, _ = accelerate(pipe, accel, progress=lambda _: None)
    if not graphed:  # the work of a change eager, as before call_graph.py
        _graph_change_work(pipe, on=False)
    cfg = stream.config
    frame = np.random.default_rng(0).integers(0, 256, (cfg.height, cfg.width, 3), np.uint8)
    components, adapter = pipe.components, pipe.ip_adapter

    def wait() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(call: Callable[[], Any]) -> float:
        wait()
        start = time.perf_counter()
        call()
        wait()
        return 1000 * (time.perf_counter() - start)

    for _ in range(10):
        stream.img2img(frame)
    steady = [timed(lambda: stream.img2img(frame)) for _ in range(30)]
    parts: dict[str, list[float]] = {"preprocess": [], "encoder": [], "projection": [], "recondition": [],
                                     "set_style_image": [], "set_style_pixels": [], "update_prompt": [],
                                     "first_frame_after": [], "later_frames": []}
    with torch.no_grad():
        for k in range(repeats):
            picture = pictures[k % 2]
            holder: dict[str, Any] = {}
            parts["preprocess"].append(timed(lambda: holder.update(pixels=components.feature_extractor(
                images=picture, return_tensors="pt").pixel_values.to(components.image_encoder.device,
                                                                     components.image_encoder.dtype))))
            parts["encoder"].append(timed(lambda: holder.update(
                embedding=components.image_encoder(holder["pixels"]).image_embeds)))
            parts["projection"].append(timed(lambda: adapter._tokens(holder["embedding"], pipe.dtype)))
            parts["recondition"].append(timed(pipe._recondition))
            parts["set_style_image"].append(timed(lambda: pipe.set_style_image(picture)))
            pixels = pipe.style_pixels(pictures[(k + 1) % 2])
            parts["set_style_pixels"].append(timed(lambda: pipe.set_style_image(pixels)))
            parts["update_prompt"].append(timed(lambda: stream.update_prompt(f"a watercolor painting, take {k}")))
            parts["first_frame_after"].append(timed(lambda: stream.img2img(frame)))
            parts["later_frames"] += [timed(lambda: stream.img2img(frame)) for _ in range(3)]

    wait()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        pipe.set_style_image(pictures[1])
        wait()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    row = {"model": model, "mode": stream.mode, "graphed": graphed, "frame_ms": statistics.median(steady),
           "image_tokens": adapter.tokens, "kernels_per_change": kernels,
           "top_host_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000}
                            for e in top]}
    row |= {f"{name}_ms": statistics.median(values) for name, values in parts.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="sdxl-turbo,sd15-lcm")
    parser.add_argument("--accel", default="graphs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--arms", default="eager,graphed", help="the work of a change eager, graphed, or both")
    args = parser.parse_args()
    rows = collect(probe(model, args.accel, args.device, args.repeats, graphed=arm == "graphed")
                   for model in args.models.split(",") for arm in args.arms.split(","))
    save(args.out, "style-switch.json", rows, args.device)


if __name__ == "__main__":
    main()
