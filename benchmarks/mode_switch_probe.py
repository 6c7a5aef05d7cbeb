"""A stream built and warmed on img2img, then asked for text-to-image frames (as the web page's source switch
does): the time of each txt2img call, and Dynamo's recompilations meanwhile. Nothing here asserts.

    TORCH_LOGS=recompiles python3 benchmarks/mode_switch_probe.py --models sdxs-512 --cache DIR
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PROMPT = "a watercolor painting of a lighthouse at dusk"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sdxs-512")
    parser.add_argument("--cache", default="/tmp/streamdiff-compile")
    parser.add_argument("--mode", default="max")
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    import torch

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    for model in args.models.split(","):
        pipe = StreamPipeline.from_model(model, random_weights=True, device="cuda", seed=2, feedback=0.3)
        pipe.prepare(prompt=PROMPT)
        stream, _ = accelerate(pipe, args.mode, cache_dir=args.cache, build=True, progress=lambda _: None)
        frame = np.random.default_rng(0).integers(0, 256, (512, 512, 3), np.uint8)
        for _ in range(3):
            stream.img2img(frame, output_type="np")
        for kind in ("txt2img", "img2img", "txt2img"):
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                stream.txt2img("np") if kind == "txt2img" else stream.img2img(frame, output_type="np")
                torch.cuda.synchronize()
                times.append(round(1000 * (time.perf_counter() - start), 2))
            print(model, kind, "ms per call:", times, flush=True)


if __name__ == "__main__":
    main()
