"""The UNet's ResNet blocks with GroupNorm and SiLU fused into cuDNN's convolutions, against the compiled blocks.

Each of SD-Turbo's 22 ResNet blocks runs GroupNorm, SiLU, a 3x3 convolution, the stored time projection's
add, GroupNorm, SiLU, a 3x3 convolution and the residual add (He et al. 2016; Wu and He 2018). Compiled by
Inductor, the convolutions are cuDNN's and each normalisation is a statistics pass plus an apply pass over
the whole tensor. GroupNorm's apply is a per-(frame, channel) scale and shift, so cuDNN's runtime fusion
engines can take it into the convolution's input loads together with SiLU, and the bias and residual add
into its output stores; with one frame, the next GroupNorm's sums can come from the output stores too.

For every distinct block shape, at each batch: the compiled block (the engine's kind of code), the
block's convolutions alone (what a perfect fusion could reach), and cuDNN graphs (`VARIANTS`):
- `fused`: statistics by an Inductor reduction, both convolutions with their prologue and epilogue fused;
- `fused_sums` (one frame): the second statistics from the first convolution's output stores (genstats);
- `epilogue_only`: GroupNorm's apply and SiLU in one Inductor pass, bias and residual add fused;
- `fused_relu_timing`: ReLU in SiLU's place, to time the prologue pattern cuDNN's batch-norm fusions use.
With `--fp8`, instead: the block's two 3x3 convolutions in half precision and in float8 e4m3 (one scale
per tensor, float32 accumulation), the route TensorRT's FP8 engines take.
Timed as CUDA graph replays; each one's largest error against float32, relative to the largest output;
kernels per block. Writes one JSON line per result as it goes, then the totals over the UNet's 22 blocks.

    python benchmarks/resnet_fusion_probe.py --out DIR --batches 1

Needs the cuDNN frontend's Python package (`nvidia-cudnn-frontend`), which uses torch's cuDNN.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from kernel_profile import graph_ms, profile_kernels, rel_err
from torch import Tensor, nn

GROUPS = 32
EPS = 1e-5


class BlockShape(NamedTuple):
    """Input channels, output channels, latent side, and how many of SD-Turbo's blocks have this shape."""

    cin: int
    cout: int
    size: int
    count: int


# SD 2.1's UNet at a 64x64 latent: down (2 per level), mid (2), up (3 per level, inputs concatenated with skips).
SHAPES = [
    BlockShape(320, 320, 64, 2), BlockShape(320, 640, 32, 1), BlockShape(640, 640, 32, 1),
    BlockShape(640, 1280, 16, 1), BlockShape(1280, 1280, 16, 1), BlockShape(1280, 1280, 8, 4),
    BlockShape(2560, 1280, 8, 3), BlockShape(2560, 1280, 16, 2), BlockShape(1920, 1280, 16, 1),
    BlockShape(1920, 640, 32, 1), BlockShape(1280, 640, 32, 1), BlockShape(960, 640, 32, 1),
    BlockShape(960, 320, 64, 1), BlockShape(640, 320, 64, 2),
]


class Block(nn.Module):
    """diffusers' ResnetBlock2D as the engine runs it: the time projection read from the conditioning cache."""

    def __init__(self, cin: int, cout: int, batch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.register_buffer("time", torch.randn(batch, cout) * 0.5)  # (B, cout): the stored projection
        for norm in (self.norm1, self.norm2):
            nn.init.normal_(norm.weight, 1.0, 0.2)
            nn.init.normal_(norm.bias, 0.0, 0.2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


def group_affine(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """GroupNorm of x (B, C, H, W) as a per-(frame, channel) scale and shift, both (B, C, 1, 1)."""
    b, c = x.shape[:2]
    xf = x.float()
    sums = torch.stack([xf.sum((2, 3)), (xf * xf).sum((2, 3))])  # (2, B, C)
    return _affine_from_sums(sums.view(2, b, GROUPS, c // GROUPS), x[0, 0].numel(), weight, bias)


def affine_from_channel_sums(total: Tensor, squares: Tensor, count: int, weight: Tensor,
                             bias: Tensor) -> tuple[Tensor, Tensor]:
    """The same from one frame's per-channel sums and sums of squares (1, C, 1, 1), as cuDNN's genstats writes."""
    c = total.shape[1]
    sums = torch.stack([total.view(1, c), squares.view(1, c)])
    return _affine_from_sums(sums.view(2, 1, GROUPS, c // GROUPS), count, weight, bias)


def _affine_from_sums(sums: Tensor, pixels: int, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """sums (2, B, G, C/G) over `pixels` positions per channel -> scale, shift (B, C, 1, 1) in half precision
    (cuDNN's fused prologue takes no float32 operand beside half-precision data)."""
    n = pixels * sums.shape[-1]
    mean = sums[0].sum(-1, keepdim=True) / n
    var = (sums[1].sum(-1, keepdim=True) / n - mean * mean).clamp_min(0.0)
    scale = torch.rsqrt(var + EPS) * weight.float().view(1, GROUPS, -1)
    shift = bias.float().view(1, GROUPS, -1) - mean * scale
    b = sums.shape[1]
    return (scale.reshape(b, -1, 1, 1).half().contiguous(memory_format=torch.channels_last),
            shift.reshape(b, -1, 1, 1).half().contiguous(memory_format=torch.channels_last))


def _built(g: Any) -> Tensor:
    """Check and build a cuDNN graph's plans (the heuristics' first choice, then the fallback); its workspace."""
    import cudnn

    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return torch.empty(g.get_workspace_size(), device="cuda", dtype=torch.uint8)


def _execute(handle: Any, graph: Any, pack: dict[Any, Tensor], workspace: Tensor) -> None:
    import cudnn

    # The handle launches on its own stream: follow whichever stream is current (a capture's, when timed).
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    graph.execute(pack, workspace, handle=handle)


class FusedConv:
    """One cuDNN graph: [x * scale + shift -> activation ->] 3x3 convolution -> + bias [+ residual], and
    optionally the output's per-channel sum and sum of squares. Without a prologue, x is the activated input."""

    def __init__(self, handle: Any, x: Tensor, scale: Tensor, weight: Tensor, bias: Tensor,
                 residual: Tensor | None, sums: bool, prologue: str | None):
        import cudnn

        self.handle = handle
        g = cudnn.pygraph(io_data_type=cudnn.data_type.HALF, intermediate_data_type=cudnn.data_type.HALF,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle,
                          is_cuda_graph_replay_expected=True)
        self.x, self.w = g.tensor_like(x), g.tensor_like(weight)
        self.bias = g.tensor_like(bias)
        a = self.x
        self.scale = self.shift = None
        if prologue is not None:
            self.scale, self.shift = g.tensor_like(scale), g.tensor_like(scale)
            a = getattr(g, prologue)(input=g.bias(input=g.scale(input=a, scale=self.scale), bias=self.shift))
        y = g.bias(input=g.conv_fprop(image=a, weight=self.w, padding=[1, 1], stride=[1, 1], dilation=[1, 1]),
                   bias=self.bias)
        self.residual = g.tensor_like(residual) if residual is not None else None
        if self.residual is not None:
            y = g.add(a=y, b=self.residual)
        self.y = y
        y.set_output(True).set_data_type(cudnn.data_type.HALF)
        self.sums = None
        if sums:
            self.sums = g.genstats(input=y)
            for s in self.sums:
                s.set_output(True).set_data_type(cudnn.data_type.FLOAT)
        self.graph, self.workspace = g, _built(g)

    def __call__(self, x: Tensor, scale: Tensor | None, shift: Tensor | None, weight: Tensor, bias: Tensor,
                 out: Tensor, residual: Tensor | None = None, sums: tuple[Tensor, Tensor] | None = None) -> None:
        pack = {self.x: x, self.w: weight, self.bias: bias, self.y: out}
        if self.scale is not None:
            pack[self.scale], pack[self.shift] = scale, shift
        if self.residual is not None:
            pack[self.residual] = residual
        if self.sums is not None:
            pack[self.sums[0]], pack[self.sums[1]] = sums
        _execute(self.handle, self.graph, pack, self.workspace)


def _activated(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    return F.silu(x * scale + shift)


# name -> (activation fused into the convolution's input loads, or None for an Inductor pass before it;
#          second statistics from the first convolution's output stores)
VARIANTS = {
    "fused": ("swish", False),
    "fused_sums": ("swish", True),
    "epilogue_only": (None, False),
    # ReLU in SiLU's place: the same pattern with the activation cuDNN's batch-norm fusions use. Timing only.
    "fused_relu_timing": ("relu", False),
}


def _fused_block(block: Block, x: Tensor, handle: Any, prologue: str | None, genstats: bool):
    """The block as two cuDNN graphs; returns a function of no arguments that writes and returns the output."""
    b, cout = x.shape[0], block.conv1.out_channels
    stats = torch.compile(group_affine, fullgraph=True, dynamic=False)
    from_sums = torch.compile(affine_from_channel_sums, fullgraph=True, dynamic=False)
    activate = torch.compile(_activated, fullgraph=True, dynamic=False)
    bias1 = (block.conv1.bias[None, :] + block.time).view(b, cout, 1, 1).contiguous(memory_format=torch.channels_last)
    bias2 = block.conv2.bias.view(1, cout, 1, 1).contiguous(memory_format=torch.channels_last)
    s1, _ = stats(x, block.norm1.weight, block.norm1.bias)
    h = torch.empty(b, cout, *x.shape[2:], device="cuda", dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    out = torch.empty_like(h)
    residual = block.shortcut(x) if block.shortcut is not None else x
    sums = (torch.empty(1, cout, 1, 1, device="cuda"), torch.empty(1, cout, 1, 1, device="cuda")) if genstats else None
    s2 = torch.empty(b, cout, 1, 1, device="cuda", dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    conv1 = FusedConv(handle, x, s1, block.conv1.weight, bias1, None, genstats, prologue)
    conv2 = FusedConv(handle, h, s2, block.conv2.weight, bias2, residual, False, prologue)

    def convolve(conv: FusedConv, inp: Tensor, scale: Tensor, shift: Tensor, weight: Tensor, bias: Tensor,
                 dest: Tensor, **kw: Any) -> None:
        if prologue is None:
            conv(activate(inp, scale, shift), None, None, weight, bias, dest, **kw)
        else:
            conv(inp, scale, shift, weight, bias, dest, **kw)

    def run() -> Tensor:
        scale1, shift1 = stats(x, block.norm1.weight, block.norm1.bias)
        convolve(conv1, x, scale1, shift1, block.conv1.weight, bias1, h, sums=sums)
        if sums is not None:
            scale2, shift2 = from_sums(sums[0], sums[1], h[0, 0].numel(), block.norm2.weight, block.norm2.bias)
        else:
            scale2, shift2 = stats(h, block.norm2.weight, block.norm2.bias)
        r = block.shortcut(x) if block.shortcut is not None else x
        convolve(conv2, h, scale2, shift2, block.conv2.weight, bias2, out, residual=r)
        return out

    return run


def probe(shape: BlockShape, batch: int, handle: Any, variants: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    block = Block(shape.cin, shape.cout, batch).cuda()
    x32 = torch.randn(batch, shape.cin, shape.size, shape.size, device="cuda")
    with torch.no_grad():
        ref = block(x32)
        block = block.half().to(memory_format=torch.channels_last)
        x = x32.half().contiguous(memory_format=torch.channels_last)
        row: dict[str, Any] = {"cin": shape.cin, "cout": shape.cout, "size": shape.size, "count": shape.count,
                               "batch": batch}
        compiled = torch.compile(block, fullgraph=True, dynamic=False)
        row["compiled_err"] = rel_err(compiled(x), ref)
        row["compiled_ms"] = graph_ms(lambda: compiled(x))
        row["compiled_kernels"] = profile_kernels(lambda: compiled(x), 5)["kernels_per_call"]

        # Without their biases: PyTorch adds a convolution's bias in a kernel of its own, which the compiled
        # block fuses into the passes after it, so the floor is the convolutions with no bias at all.
        def convs() -> Tensor:
            if block.shortcut is not None:
                F.conv2d(x, block.shortcut.weight)
            return F.conv2d(F.conv2d(x, block.conv1.weight, padding=1), block.conv2.weight, padding=1)

        row["convs_only_ms"] = graph_ms(convs)
        for name, (prologue, genstats) in VARIANTS.items():
            if name not in variants or (genstats and batch != 1):
                continue  # genstats sums over the frames too: one frame's GroupNorm only
            try:
                run = _fused_block(block, x, handle, prologue, genstats)
                row[f"{name}_err"] = rel_err(run().clone(), ref)
                row[f"{name}_ms"] = graph_ms(run)
                row[f"{name}_kernels"] = profile_kernels(run, 5)["kernels_per_call"]
            except Exception as exc:  # noqa: BLE001 - an unsupported fusion is a result to record, not a crash
                row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                traceback.print_exc()
    return row


class Fp8Conv:
    """One cuDNN graph: a 3x3 convolution of float8 (e4m3) input and weights, accumulated in float32, scaled
    back by the product of their two scales and written in half precision."""

    def __init__(self, handle: Any, x: Tensor, weight: Tensor, descale: Tensor):
        import cudnn

        self.handle = handle
        g = cudnn.pygraph(io_data_type=cudnn.data_type.HALF, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle,
                          is_cuda_graph_replay_expected=True)
        e4m3 = cudnn.data_type.FP8_E4M3
        self.x = g.tensor(dim=list(x.shape), stride=list(x.stride()), data_type=e4m3)
        self.w = g.tensor(dim=list(weight.shape), stride=list(weight.stride()), data_type=e4m3)
        self.descale = g.tensor_like(descale)
        y = g.conv_fprop(image=self.x, weight=self.w, padding=[1, 1], stride=[1, 1], dilation=[1, 1],
                         compute_data_type=cudnn.data_type.FLOAT)
        self.y = g.scale(input=y, scale=self.descale)
        self.y.set_output(True).set_data_type(cudnn.data_type.HALF)
        self.graph, self.workspace = g, _built(g)

    def __call__(self, x: Tensor, weight: Tensor, descale: Tensor, out: Tensor) -> None:
        _execute(self.handle, self.graph, {self.x: x, self.w: weight, self.descale: descale, self.y: out},
                 self.workspace)


def _e4m3(t: Tensor) -> tuple[Tensor, Tensor]:
    """t in float8 e4m3 with one scale for the tensor (its largest magnitude to e4m3's largest, 448)."""
    scale = 448.0 / t.abs().max().float()
    return (t.float() * scale).to(torch.float8_e4m3fn).contiguous(memory_format=torch.channels_last), 1.0 / scale


def probe_fp8(shape: BlockShape, batch: int, handle: Any) -> dict[str, Any]:
    """The block's two 3x3 convolutions in half precision (cuDNN through PyTorch) and in float8 (cuDNN graphs)."""
    torch.manual_seed(0)
    row: dict[str, Any] = {"cin": shape.cin, "cout": shape.cout, "size": shape.size, "count": shape.count,
                           "batch": batch}
    x = torch.randn(batch, shape.cin, shape.size, shape.size, device="cuda").half()
    x = x.contiguous(memory_format=torch.channels_last)
    w1 = (torch.randn(shape.cout, shape.cin, 3, 3, device="cuda") / (9 * shape.cin) ** 0.5).half()
    w2 = (torch.randn(shape.cout, shape.cout, 3, 3, device="cuda") / (9 * shape.cout) ** 0.5).half()
    w1, w2 = (w.contiguous(memory_format=torch.channels_last) for w in (w1, w2))
    with torch.no_grad():
        h = F.conv2d(x, w1, padding=1)
        row["fp16_ms"] = graph_ms(lambda: F.conv2d(F.conv2d(x, w1, padding=1), w2, padding=1))
        try:
            (x8, sx), (w18, sw1) = _e4m3(x), _e4m3(w1)
            (h8, sh), (w28, sw2) = _e4m3(h), _e4m3(w2)
            d1 = (sx * sw1).view(1, 1, 1, 1).contiguous()
            d2 = (sh * sw2).view(1, 1, 1, 1).contiguous()
            conv1, conv2 = Fp8Conv(handle, x8, w18, d1), Fp8Conv(handle, h8, w28, d2)
            out1, out2 = torch.empty_like(h), torch.empty_like(h)

            def run() -> Tensor:
                conv1(x8, w18, d1, out1)
                conv2(h8, w28, d2, out2)
                return out2

            run()
            row["fp8_err"] = rel_err(out1, h.float())
            row["fp8_ms"] = graph_ms(run)
        except Exception as exc:  # noqa: BLE001 - an unsupported float8 convolution is a result to record
            row["fp8_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
    return row


def _totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per batch: each method's time summed over the UNet's 22 blocks (each shape times its count)."""
    out: dict[str, dict[str, float]] = {}
    for batch in sorted({r["batch"] for r in rows}):
        mine = [r for r in rows if r["batch"] == batch]
        keys = [k for k in ("compiled_ms", "convs_only_ms", *(f"{v}_ms" for v in VARIANTS), "fp16_ms", "fp8_ms")
                if all(k in r for r in mine)]
        out[str(batch)] = {k: round(sum(r[k] * r["count"] for r in mine), 4) for k in keys}
        out[str(batch)]["blocks"] = sum(r["count"] for r in mine)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batches", default="1")
    parser.add_argument("--shapes", default="", help="indices into SHAPES, comma-separated (default: all)")
    parser.add_argument("--fp8", action="store_true", help="time the convolutions in float8 against half instead")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="cuDNN graphs to build (none: only the "
                        "compiled block and its convolutions)")
    args = parser.parse_args()
    import cudnn

    torch._dynamo.config.cache_size_limit = 512
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    name = "resnet-fp8" if args.fp8 else "resnet-fusion"
    lines = args.out / f"{name}.jsonl"
    handle = cudnn.create_handle()
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "cudnn_frontend": getattr(cudnn, "__version__", "?"),
           "cudnn_backend": cudnn.backend_version_string()}
    print(json.dumps(env), flush=True)
    picked = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    variants = [v for v in args.variants.split(",") if v in VARIANTS]
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for shape in picked:
            start = time.perf_counter()
            rows.append(probe_fp8(shape, batch, handle) if args.fp8 else probe(shape, batch, handle, variants))
            rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
            with open(lines, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
            print(json.dumps(rows[-1]), flush=True)
    summary = {"environment": env, "per_unet_ms": _totals(rows), "rows": rows}
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["per_unet_ms"]), flush=True)


if __name__ == "__main__":
    main()
