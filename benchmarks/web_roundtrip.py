"""The web page's path: `streamdiff web`'s server, driven by a WebSocket client that behaves as the page does.

For each model (random weights of the real architecture, the accelerated mode built in the foreground, the
web command's defaults: latent feedback 0.3, fit crop), the server (uvicorn on a thread of this process,
serving the same app `streamdiff web` serves) gets 512x512 JPEG pictures (quality 85, as the page sends)
of a moving pattern from a source of a given frame rate: each new source frame is sent when fewer than two
pictures wait for an answer, else when an answer frees a place (static/app.js's rule, with the camera's
frames). A 60 fps source is a camera; 240 fps is faster than the engine, so the server sets the pace.
With --text the page has no picture source and asks for text-to-image frames (the sequence number alone).
Reported after a warm-up:
- outputs a second, and the round trip from sending a picture to receiving the output made from it;
- the inference thread's work per frame, split into decode + engine step + JPEG encode;
- the JPEG decode and encode alone on this host (the step without them is the camera app's).
Nothing here asserts.

    python3 benchmarks/web_roundtrip.py --out DIR --cache DIR --models sdxs-512,sd-turbo --source-fps 60,240 [--text]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "a watercolor painting of a lighthouse at dusk"
SIZE = 512
IN_FLIGHT = 2


def pass_through(pipe: Any) -> None:
    """Weights under which the output follows its input, for timing what a change takes to show (random weights
    draw nearly the same picture from any input): the UNet predicts no noise (its last convolution zeroed), and
    TAESD's convolutions between blocks copy the picture's three colours from layer to layer (one centre tap
    each) while its blocks' own convolutions are zeroed, so each block passes its input on. The output is then
    the input, its latent noised by the fixed noise, at one eighth of the resolution. Every kernel of the step
    still runs, on the same shapes."""
    import torch
    from diffusers.models.autoencoders.vae import AutoencoderTinyBlock

    components = pipe.components
    with torch.no_grad():
        components.unet.conv_out.weight.zero_()
        components.unet.conv_out.bias.zero_()
        for half in (components.vae.encoder, components.vae.decoder):
            inside = {id(conv) for block in half.modules() if isinstance(block, AutoencoderTinyBlock)
                      for conv in block.conv.modules()}
            for conv in (module for module in half.modules() if isinstance(module, torch.nn.Conv2d)):
                conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.zero_()
                if id(conv) not in inside:
                    for channel in range(min(3, conv.in_channels, conv.out_channels)):
                        conv.weight[channel, channel, 1, 1] = 1.0


def build_stream(model: str, device: str, mode: str, cache: Path, strength: float | None = None,
                 feedback: float = 0.3, follows_input: bool = False, size: int = SIZE) -> Any:
    """The web command's stream on random weights, `size` pixels square; follows_input: with pass_through's
    weights."""
    from streamdiff.app.engine_io import EngineRunner
    from streamdiff.app.keys import Controls
    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline
    from streamdiff.web.bridge import WebStream
    from streamdiff.web.protocol import PromptBook

    settings = {} if strength is None else {"strength": strength}
    pipe = StreamPipeline.from_model(model, random_weights=True, device=device, seed=2, fit="crop", feedback=feedback,
                                     width=size, height=size, **settings)
    if follows_input:
        pass_through(pipe)
    pipe.prepare(prompt=PROMPT)
    engine, _ = accelerate(pipe, mode, cache_dir=cache, build=True, progress=lambda _: None)
    runner = EngineRunner(engine, [PROMPT])
    return WebStream(runner, Controls(feedback=feedback, strength=engine.strength), PromptBook(runner.prompts),
                     model=model)


def pictures(count: int) -> list[bytes]:
    """JPEGs of a moving pattern: a gradient with a bright square crossing it."""
    from PIL import Image

    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    encoded = []
    for i in range(count):
        image = np.stack([np.add.outer(ramp, ramp) / 2, np.roll(np.tile(ramp, (SIZE, 1)), 8 * i, axis=1),
                          np.full((SIZE, SIZE), 96.0)], axis=-1).astype(np.uint8)
        x = (16 * i) % (SIZE - 128)
        image[192:320, x:x + 128] = 240
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=85)
        encoded.append(buffer.getvalue())
    return encoded


def serve(stream: Any) -> tuple[Any, str, threading.Thread]:
    from streamdiff.web.command import bind, make_server

    listener = bind("127.0.0.1", 0)
    server = make_server(stream)
    stream.start()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)  # uvicorn offers no event for its start
    return server, f"ws://127.0.0.1:{listener.getsockname()[1]}/ws", thread


async def drive(url: str, frames: list[bytes], source_fps: float, warmup: float, seconds: float) -> dict[str, Any]:
    """The page's rule: a new source frame is sent when fewer than IN_FLIGHT pictures wait for an answer,
    else as soon as an answer frees a place; returns outputs a second and round trips after `warmup` s."""
    import websockets

    from streamdiff.web.protocol import HEADER_IN, HEADER_OUT

    sent_at: dict[int, float] = {}
    trips: list[float] = []
    page = {"sequence": 0, "taken": 0, "fresh": False}
    async with websockets.connect(url, max_size=None, proxy=None) as ws:
        json.loads(await ws.recv())

        async def pump() -> None:
            if page["fresh"] and page["sequence"] - page["taken"] < IN_FLIGHT:
                page["fresh"] = False
                page["sequence"] += 1
                sent_at[page["sequence"]] = time.perf_counter()
                picture = frames[page["sequence"] % len(frames)] if frames else b""  # none: text to image
                await ws.send(HEADER_IN.pack(page["sequence"]) + picture)

        async def source() -> None:
            while True:
                page["fresh"] = True
                await pump()
                await asyncio.sleep(1.0 / source_fps)

        ticking = asyncio.create_task(source())
        measured_from = time.perf_counter() + warmup
        outputs = 0
        while time.perf_counter() < measured_from + seconds:
            message = await ws.recv()
            if isinstance(message, str):
                if json.loads(message)["type"] == "error":
                    raise RuntimeError(f"the server says: {json.loads(message)['message']}")
                continue
            now = time.perf_counter()
            taken, shown = HEADER_OUT.unpack_from(message)
            page["taken"] = max(page["taken"], taken)
            if now >= measured_from:
                outputs += 1
                if shown in sent_at:
                    trips.append(1000 * (now - sent_at[shown]))
            await pump()
        ticking.cancel()
    return {"source_fps": source_fps, "outputs_per_s": outputs / seconds, "outputs": outputs,
            "round_trip_ms_median": statistics.median(trips), "round_trip_ms_p90": float(np.percentile(trips, 90))}


def codec_ms(frames: list[bytes], repeats: int = 50) -> dict[str, float]:
    from streamdiff.web.protocol import decode_picture, encode_jpeg

    decode, encode = [], []
    for i in range(repeats):
        start = time.perf_counter()
        image = decode_picture(frames[i % len(frames)])
        middle = time.perf_counter()
        encode_jpeg(image, 85)
        decode.append(middle - start)
        encode.append(time.perf_counter() - middle)
    return {"decode_ms": 1000 * statistics.median(decode), "encode_ms": 1000 * statistics.median(encode)}


def measure(model: str, device: str, mode: str, cache: Path, source_fps: float, warmup: float,
            seconds: float, text: bool = False, size: int = SIZE) -> dict[str, Any]:
    stream = build_stream(model, device, mode, cache, size=size)
    frames = pictures(60)
    result, served = run_served(stream, lambda url: drive(url, [] if text else frames, source_fps, warmup, seconds))
    return {"model": model, "mode": served.pop("mode") or mode, "size": size, "in_flight": IN_FLIGHT,
            "source": "text" if text else "pictures", **result, **codec_ms(frames), **served}


def run_served(stream: Any, play: Callable[[str], Coroutine[Any, Any, dict[str, Any]]]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serve `stream`, run the page `play(WebSocket URL)`, stop; its result, and what the server saw."""
    server, url, thread = serve(stream)
    try:
        result = asyncio.run(play(url))
    finally:
        server.should_exit = True
        thread.join(10)
        stream.close()
    timings, counts = stream.runner.timings, stream.counts
    return result, {
        "mode": getattr(stream.runner.engine, "mode", None),
        "server_step_ms": {part: timings.mean_ms(part) for part in ("preprocess", "engine", "postprocess")},
        "server_ms": stream.server_ms(), "received": counts.received, "stylized": counts.stylized,
        "generated": counts.generated, "dropped": counts.dropped}


def served_parser(description: str) -> argparse.ArgumentParser:
    """The options the served benchmarks share: where results go, the compile cache, models, device, mode
    and how long each run warms up and measures."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/streamdiff-compile"))
    parser.add_argument("--models", default="sdxs-512,sd-turbo")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mode", default="max")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=SIZE,
                        help="the stream's width and height (the pictures sent stay 512x512)")
    return parser


def run_grid(args: argparse.Namespace, measure_one: Callable[[str, float], dict[str, Any]], name: str,
             **versions: str) -> None:
    """Each model at each source rate (--source-fps): every run printed as it ends, all written to OUT/name
    with the device and the versions."""
    import torch

    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
               "torch": torch.__version__, **versions, "runs": []}
    for model in args.models.split(","):
        for fps in (float(f) for f in args.source_fps.split(",")):
            results["runs"].append(measure_one(model, fps))
            print(json.dumps(results["runs"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = served_parser(__doc__.splitlines()[0])
    parser.add_argument("--source-fps", default="60,240", help="source frame rates: a camera's, and one above the engine's")
    parser.add_argument("--text", action="store_true", help="a page with no picture source: text-to-image frames")
    args = parser.parse_args()
    run_grid(args, lambda model, fps: measure(model, args.device, args.mode, args.cache, fps, args.warmup,
                                              args.seconds, args.text, args.size),
             f"web-roundtrip{'-text' if args.text else ''}.json")


if __name__ == "__main__":
    main()
