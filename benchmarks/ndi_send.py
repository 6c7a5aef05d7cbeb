"""What publishing a picture over NDI costs the camera app's display thread (`NdiSink.write`: the copy into
a BGRX buffer; NDI's SpeedHQ compression runs on the sink's own thread), and how many pictures a second that
thread gets out, with no receiver and with one receiver on this machine.

The moving synthetic scene (what a stylized picture compresses like) and uniform noise (the worst case) at
each size; the sender is paced at 30 pictures/s, as the display is.

    python3 benchmarks/ndi_send.py --out DIR [--sizes 512x512,1280x720,1024x1024] [--pictures 90]

Writes DIR/ndi-send.json (median and p90 ms per write, pictures sent per second) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _pictures(kind: str, height: int, width: int, count: int) -> list[np.ndarray]:
    if kind == "noise":
        return [np.random.default_rng(k).integers(0, 256, (height, width, 3), dtype=np.uint8) for k in range(4)]
    from streamdiff.bench.clips import make_clip

    return [np.ascontiguousarray(p[..., ::-1]) for p in make_clip("moving", min(count, 30), height, width)]


def _time_writes(sink: Any, pictures: list[np.ndarray], count: int) -> list[float]:
    times = []
    for k in range(count):
        started = time.perf_counter()
        sink.write(pictures[k % len(pictures)])
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(max(0.0, 1 / 30 - times[-1] / 1000))
    return times[5:]


def _drain(receiver: Any, stop: threading.Event, received: list[int]) -> None:
    while not stop.is_set():
        if receiver.read() is not None:
            received[0] += 1


def measure(height: int, width: int, kind: str, count: int, with_receiver: bool) -> dict[str, Any]:
    from streamdiff.app.ndi import NdiSink, NdiSource, find_source

    name = f"ndi-send-{kind}-{width}x{height}-{'rx' if with_receiver else 'solo'}"
    pictures = _pictures(kind, height, width, count)
    sink = NdiSink(name)
    receiver, stop, received, drain = None, threading.Event(), [0], None
    try:
        if with_receiver:
            receiver = NdiSource(f"ndi://{find_source(name).url_address}", lost_seconds=0.5)
            while receiver.read() is None:
                sink.write(pictures[0])
            drain = threading.Thread(target=_drain, args=(receiver, stop, received), name="ndi-receive")
            drain.start()
        before, started = sink.sent.count, time.perf_counter()
        times = _time_writes(sink, pictures, count)
        elapsed = time.perf_counter() - started
        sent_per_s, received_per_s = (sink.sent.count - before) / elapsed, received[0] / elapsed
    finally:
        stop.set()
        if drain is not None:
            drain.join()
        if receiver is not None:
            receiver.close()
        sink.close()
    return {"size": f"{width}x{height}", "pictures": kind, "receiver": with_receiver,
            "median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "writes": len(times),
            "sent_per_s": sent_per_s, "received_per_s": received_per_s if with_receiver else None}


def received_per_s(row: dict[str, Any]) -> str:
    return "-" if row["received_per_s"] is None else f"{row['received_per_s']:5.1f}/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="512x512,1280x720,1024x1024")
    parser.add_argument("--pictures", type=int, default=90)
    args = parser.parse_args()
    import os
    import platform

    # mDNS may not reach a container: search this machine through NDI's own configuration.
    config = Path(tempfile.mkdtemp())
    (config / "ndi-config.v1.json").write_text(json.dumps({"ndi": {"networks": {"ips": "127.0.0.1"}}}))
    os.environ.setdefault("NDI_CONFIG_DIR", str(config))
    rows = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        for kind in ("moving", "noise"):
            for with_receiver in (False, True):
                rows.append(measure(height, width, kind, args.pictures, with_receiver))
                print(f"{rows[-1]['size']:>10} {kind:>7} receiver={with_receiver!s:<5} "
                      f"write median {rows[-1]['median_ms']:6.2f} ms  p90 {rows[-1]['p90_ms']:6.2f} ms  "
                      f"sent {rows[-1]['sent_per_s']:5.1f}/s  received {received_per_s(rows[-1])}")
    from importlib.metadata import version

    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "ndi-python": version("ndi-python")}, "rows": rows}
    (args.out / "ndi-send.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
