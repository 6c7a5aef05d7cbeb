"""Nearest 2x upsampling and a 3x3 convolution as the engine ran them, against one transposed convolution.

`streamdiff.backends.upsample_fold` computes conv3x3(nearest_2x(x)) as a transposed convolution (4x4
kernel, stride 2) on the small map: 4/9 of the multiplications and no doubled map in memory. This times,
for each such layer of the SD-Turbo UNet (Upsample2D: 1280 channels at 8 and 16, 640 at 32), of the
SDXS-512 reconstruction (1280 at 16, 640 at 32) and of TAESD's decoder (64 channels at 64, 128 and 256):
- `compiled`: F.interpolate then the convolution, compiled by Inductor (the compiled UNet's code);
- `broadcast` (TAESD): the word-wise broadcast copy then the convolution (the fused codec's code);
- `folded`: the transposed convolution (cuDNN);
as CUDA graph replays in half precision and channels-last layout, with each one's largest error against
the float32 result of the plain math, relative to its largest output. One JSON line per result, then the
totals per model at each batch.

    python benchmarks/upsample_fold_probe.py --out DIR --batches 1,16
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from kernel_profile import graph_ms, probe_arguments, rel_err, run_probes
from torch import Tensor

from streamdiff.backends.codec_fusion import upsample_nearest_2x
from streamdiff.backends.upsample_fold import folded_weight, upsample_conv


class Layer(NamedTuple):
    """Which model, channels, side of the map before doubling, and whether the convolution has a bias."""

    model: str
    channels: int
    size: int
    bias: bool


LAYERS = [
    Layer("sd-turbo", 1280, 8, True), Layer("sd-turbo", 1280, 16, True), Layer("sd-turbo", 640, 32, True),
    Layer("sdxs-512", 1280, 16, True), Layer("sdxs-512", 640, 32, True),
    Layer("taesd-decoder", 64, 64, False), Layer("taesd-decoder", 64, 128, False), Layer("taesd-decoder", 64, 256, False),
]


def _plain(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)


def _broadcast(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return F.conv2d(upsample_nearest_2x(x), w, b, padding=1)


def probe(layer: Layer, batch: int) -> dict[str, Any]:
    g = torch.Generator(device="cuda").manual_seed(0)
    c, s = layer.channels, layer.size
    x = torch.randn(batch, c, s, s, device="cuda", generator=g).half().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, c, 3, 3, device="cuda", generator=g) / (9 * c) ** 0.5).half()
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(c, device="cuda", generator=g).half() if layer.bias else None
    folded = folded_weight(w).contiguous(memory_format=torch.channels_last)
    ref = _plain(x.float(), w.float(), None if b is None else b.float())
    compiled = torch.compile(_plain, fullgraph=True)
    variants: dict[str, Callable[[], Tensor]] = {
        "compiled": lambda: compiled(x, w, b),
        "folded": lambda: upsample_conv(x, folded, b),
    }
    if layer.model == "taesd-decoder":
        variants["broadcast"] = lambda: _broadcast(x, w, b)
    row: dict[str, Any] = {**layer._asdict(), "batch": batch,
                           "gflop_plain": round(2 * batch * (2 * s) ** 2 * c * c * 9 / 1e9, 3)}
    for name, fn in variants.items():
        with torch.no_grad():
            row[f"{name}_err"] = rel_err(fn(), ref)
            row[f"{name}_ms"] = round(graph_ms(fn), 5)
    return row


def _totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = {}
    for r in rows:
        key = f"{r['model']} batch {r['batch']}"
        t = totals.setdefault(key, {})
        for k, v in r.items():
            if k.endswith("_ms"):
                t[k] = round(t.get(k, 0.0) + v, 5)
    return totals


def main() -> None:
    args = probe_arguments(__doc__)
    torch._dynamo.config.cache_size_limit = 64
    torch.backends.cudnn.benchmark = True  # as the engine sets it
    rows = run_probes(probe, LAYERS, args.batches)
    summary = {"environment": {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "cudnn": torch.backends.cudnn.version()},
               "totals_ms": _totals(rows), "rows": rows}
    (args.out / "upsample-fold.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["totals_ms"]), flush=True)


if __name__ == "__main__":
    main()
