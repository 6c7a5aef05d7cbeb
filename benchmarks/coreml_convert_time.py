"""How long `streamdiff convert` takes per part, how large the parts are and the process's peak memory, for
random weights of the real architectures (no download), on any machine with coremltools. Nothing here asserts.

    python benchmarks/coreml_convert_time.py --models sdxs-512,sd-turbo --out-dir /tmp/coreml --json times.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import time
from pathlib import Path


def _size_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sdxs-512")
    parser.add_argument("--out-dir", default="/tmp/streamdiff-coreml-probe")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import coremltools
    import torch

    from streamdiff.backends.coreml import use_coreml
    from streamdiff.backends.runner import AcceleratedStream
    from streamdiff.stream import StreamPipeline

    report: dict = {"machine": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__,
                    "coremltools": coremltools.__version__, "models": {}}
    for model in args.models.split(","):
        root = Path(args.out_dir) / model
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        pipe = StreamPipeline.from_model(model, random_weights=True, device="cpu", dtype="float32")
        pipe.prepare(prompt="a watercolor painting")
        loaded = time.perf_counter() - start
        store = use_coreml(pipe, root, load=None, progress=print)
        AcceleratedStream(pipe, None).warm()
        parts = {p.path.parent.name.split("-")[0]: {"shapes": p.path.stem, "seconds": round(p.seconds or 0, 1),
                                                      "mb": _size_mb(p.path)} for p in store.asked.values()}
        report["models"][model] = {"load_s": round(loaded, 1), "parts": parts,
                                   "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}
        print(model, json.dumps(report["models"][model]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
