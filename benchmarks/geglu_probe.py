"""GEGLU as one Triton kernel with the gating in its epilogue, against what the compiled UNet runs.

diffusers' GEGLU (Shazeer 2020, eq. 6) projects x (T, C) to 2H features and returns value * gelu(gate) of
the two halves: cuBLAS writes (T, 2H), and an Inductor kernel reads it back to write (T, H). The kernels
here compute an output tile's value and gate products side by side from the same input tile and gate in
registers, so the (T, 2H) intermediate never reaches memory: one with pointer loads, one with Hopper's
tensor memory accelerator (TMA) loading the tiles and storing the output.

For each GEGLU shape of SD-Turbo's UNet, at 1 and 16 frames: the compiled reference, the cuBLAS product
alone (what a perfect fusion could reach), the pointer kernel at its default tile and at each tile of a
small sweep, and the TMA kernel over its own sweep, all timed as CUDA graph replays; and each one's
largest error against float32, relative to the largest output. Writes JSON, prints a table. The kernels
ran inside the UNet (kernel_profile variants turbo-*-geglu) at commit 4c86eaa; see NOTES-cuda.md.

    python benchmarks/geglu_probe.py --json geglu.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from kernel_profile import graph_ms, rel_err
from torch import Tensor


class TileConfig(NamedTuple):
    """One launch configuration: output tile (block_m x block_n per half), reduction step, programs that
    share a column of weight tiles (grouped order, for L2 reuse), warps and pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    warps: int
    stages: int


def reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """diffusers' GEGLU: value * gelu(gate) of the projection's two halves."""
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return value * F.gelu(gate)


def choose_config(rows: int, hidden: int, channels: int) -> TileConfig:
    """The tile for a (rows x channels) @ (channels x 2*hidden) product: small row counts (one frame at the
    UNet's lower levels) take narrower tiles so that the 132 SMs of an H100 still get work."""
    if rows * hidden <= 256 * 5120:
        return TileConfig(64, 64, 64, 8, 4, 4)
    return TileConfig(128, 64, 64, 8, 4, 4)


def geglu_linear(x: Tensor, weight: Tensor, bias: Tensor, config: TileConfig | None = None) -> Tensor:
    """value * gelu(gate) of x @ weight.T + bias, for x (..., C) and weight (2H, C), in one kernel launch."""
    return _launch(_kernel(), x, weight, bias, config)


def _launch(kernel: Any, x: Tensor, weight: Tensor, bias: Tensor, config: TileConfig | None) -> Tensor:
    channels = x.shape[-1]
    rows2d = x.reshape(-1, channels).contiguous()
    rows, hidden = rows2d.shape[0], weight.shape[0] // 2
    out = torch.empty((rows, hidden), device=x.device, dtype=x.dtype)
    c = config or choose_config(rows, hidden, channels)
    grid = (_cdiv(rows, c.block_m) * _cdiv(hidden, c.block_n),)
    kernel[grid](rows2d, weight.contiguous(), bias, out, rows, hidden, channels, rows2d.stride(0), out.stride(0),
                 BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                 num_warps=c.warps, num_stages=c.stages)
    return out.reshape(*x.shape[:-1], hidden)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _kernel() -> Any:
    """The pointer-load kernel, defined at first use (TRITON_INTERPRET, for a check on a CPU, is read here)."""
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, H, K: tl.constexpr, stride_xm, stride_ym,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # Grouped order: GROUP_M row tiles walk the same column of weight tiles while it is in L2.
        pid = tl.program_id(0)
        grid_m = (M + BLOCK_M - 1) // BLOCK_M  # not tl.cdiv: the interpreter cannot run library functions
        grid_n = (H + BLOCK_N - 1) // BLOCK_N  # defined before TRITON_INTERPRET was set
        width = GROUP_M * grid_n
        first_m = (pid // width) * GROUP_M
        size_m = tl.minimum(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm[:, None] < M
        n_ok = rn[None, :] < H
        x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
        v_ptrs = w_ptr + rn[None, :] * K + rk[:, None]  # (BLOCK_K, BLOCK_N) of the value half's W^T
        g_ptrs = v_ptrs + H * K  # the gate half's rows follow the value half's
        acc_v = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # tl.zeros: a library function, as above
        acc_g = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for k in range(0, K, BLOCK_K):
            k_ok = (k + rk) < K
            a = tl.load(x_ptrs, mask=m_ok & k_ok[None, :], other=0.0)
            wv = tl.load(v_ptrs, mask=k_ok[:, None] & n_ok, other=0.0)
            wg = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok, other=0.0)
            acc_v = tl.dot(a, wv, acc_v)
            acc_g = tl.dot(a, wg, acc_g)
            x_ptrs += BLOCK_K
            v_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
        value = acc_v + tl.load(b_ptr + rn, mask=rn < H, other=0.0).to(tl.float32)[None, :]
        gate = acc_g + tl.load(b_ptr + H + rn, mask=rn < H, other=0.0).to(tl.float32)[None, :]
        y = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty), mask=m_ok & n_ok)

    return geglu_kernel


# (tokens per frame, channels, hidden features, GEGLU blocks at that size) of SD-Turbo's UNet at 512x512
SHAPES = [(4096, 320, 1280, 5), (1024, 640, 2560, 5), (256, 1280, 5120, 6)]
SWEEP = [TileConfig(64, 64, 64, 8, 4, 4), TileConfig(128, 64, 64, 8, 4, 4), TileConfig(128, 64, 64, 8, 8, 3),
         TileConfig(128, 128, 64, 8, 8, 3), TileConfig(64, 128, 64, 8, 4, 4), TileConfig(128, 64, 32, 8, 4, 5),
         TileConfig(64, 64, 32, 8, 4, 5), TileConfig(256, 64, 64, 8, 8, 3)]


@functools.cache
def _tma_kernel():
    """The same product and gating with Hopper's tensor memory accelerator (TMA) loading the tiles and
    storing the output: what Triton's fastest matrix products on an H100 use."""
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_tma_kernel(x_desc, w_desc, b_ptr, y_desc, M, H, K: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        grid_m = (M + BLOCK_M - 1) // BLOCK_M
        grid_n = (H + BLOCK_N - 1) // BLOCK_N
        width = GROUP_M * grid_n
        first_m = (pid // width) * GROUP_M
        size_m = tl.minimum(grid_m - first_m, GROUP_M)
        off_m = (first_m + (pid % width) % size_m) * BLOCK_M
        off_n = ((pid % width) // size_m) * BLOCK_N
        acc_v = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        acc_g = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for k in tl.range(0, K, BLOCK_K):
            a = x_desc.load([off_m, k])
            acc_v = tl.dot(a, w_desc.load([off_n, k]).T, acc_v)
            acc_g = tl.dot(a, w_desc.load([H + off_n, k]).T, acc_g)
        rn = off_n + tl.arange(0, BLOCK_N)
        value = acc_v + tl.load(b_ptr + rn).to(tl.float32)[None, :]
        gate = acc_g + tl.load(b_ptr + H + rn).to(tl.float32)[None, :]
        y = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
        y_desc.store([off_m, off_n], y.to(y_desc.dtype))

    return geglu_tma_kernel


def geglu_tma(x: Tensor, w: Tensor, b: Tensor, c: TileConfig) -> Tensor:
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows2d = x.reshape(-1, x.shape[-1])
    rows, channels, hidden = rows2d.shape[0], rows2d.shape[1], w.shape[0] // 2
    out = torch.empty((rows, hidden), device=x.device, dtype=x.dtype)
    grid = (_cdiv(rows, c.block_m) * _cdiv(hidden, c.block_n),)
    _tma_kernel()[grid](TensorDescriptor.from_tensor(rows2d, [c.block_m, c.block_k]),
                        TensorDescriptor.from_tensor(w, [c.block_n, c.block_k]), b,
                        TensorDescriptor.from_tensor(out, [c.block_m, c.block_n]), rows, hidden, channels,
                        BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                        num_warps=c.warps, num_stages=c.stages)
    return out.reshape(*x.shape[:-1], hidden)


TMA_SWEEP = [TileConfig(128, 64, 64, 8, 8, 3), TileConfig(128, 128, 64, 8, 8, 3),
             TileConfig(128, 64, 64, 8, 4, 4), TileConfig(64, 128, 64, 8, 4, 4),
             TileConfig(128, 128, 64, 8, 8, 4), TileConfig(128, 256, 64, 8, 8, 3),
             TileConfig(64, 64, 64, 8, 4, 4), TileConfig(128, 64, 128, 8, 8, 3)]


def probe_shape(tokens: int, channels: int, hidden: int, frames: int, dtype: torch.dtype) -> dict:
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(frames, tokens, channels, device="cuda", generator=gen).to(dtype)
    w = (torch.randn(2 * hidden, channels, device="cuda", generator=gen) / channels ** 0.5).to(dtype)
    b = (0.1 * torch.randn(2 * hidden, device="cuda", generator=gen)).to(dtype)
    ref32 = reference(x.float(), w.float(), b.float())
    compiled = torch.compile(reference, fullgraph=True, dynamic=False)
    row = {"frames": frames, "tokens": tokens, "channels": channels, "hidden": hidden, "dtype": str(dtype),
           "compiled_err": rel_err(compiled(x, w, b), ref32)}
    row["compiled_ms"] = graph_ms(lambda: compiled(x, w, b))
    row["product_only_ms"] = graph_ms(lambda: F.linear(x, w, b))
    row["fused_err"] = rel_err(geglu_linear(x, w, b), ref32)
    row["fused_default_ms"] = graph_ms(lambda: geglu_linear(x, w, b))
    row["default_tile"] = list(choose_config(frames * tokens, hidden, channels))
    sweep = {}
    for c in SWEEP:
        try:
            sweep[",".join(map(str, c))] = graph_ms(lambda c=c: geglu_linear(x, w, b, c))
        except Exception as exc:  # a tile too large for shared memory fails to launch: note it and go on
            sweep[",".join(map(str, c))] = f"{type(exc).__name__}"
    row["sweep_ms"] = sweep
    timed = {k: v for k, v in sweep.items() if isinstance(v, float)}
    row["best_tile"], row["fused_best_ms"] = min(timed.items(), key=lambda kv: kv[1])
    tma = {}
    for c in TMA_SWEEP:
        key = ",".join(map(str, c))
        try:
            if "tma_err" not in row:
                row["tma_err"] = rel_err(geglu_tma(x, w, b, c), ref32)
            tma[key] = graph_ms(lambda c=c: geglu_tma(x, w, b, c))
        except Exception as exc:  # as above: note the tile that cannot launch
            tma[key] = f"{type(exc).__name__}: {str(exc)[:120]}"
    row["tma_sweep_ms"] = tma
    timed = {k: v for k, v in tma.items() if isinstance(v, float)}
    row["tma_best_tile"], row["tma_best_ms"] = min(timed.items(), key=lambda kv: kv[1]) if timed else (None, None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--frames", default="1,16")
    args = parser.parse_args()
    rows = []
    for frames in [int(f) for f in args.frames.split(",")]:
        for tokens, channels, hidden, _ in SHAPES:
            rows.append(probe_shape(tokens, channels, hidden, frames, torch.float16))
            row = rows[-1]
            print(f"fbs {frames:2d} T {tokens:4d} C {channels:4d} H {hidden:4d}: compiled {row['compiled_ms']:.4f} "
                  f"product {row['product_only_ms']:.4f} fused {row['fused_default_ms']:.4f} "
                  f"best {row['fused_best_ms']:.4f} ({row['best_tile']}) tma {row['tma_best_ms']} "
                  f"({row['tma_best_tile']}) err {row['compiled_err']:.2e} / {row['fused_err']:.2e} / "
                  f"{row.get('tma_err')}", flush=True)
    bf16 = probe_shape(*SHAPES[0][:3], 1, torch.bfloat16)
    print(f"bf16 check: fused err {bf16['fused_err']:.2e}, compiled err {bf16['compiled_err']:.2e}")
    totals = {}
    for frames in sorted({r["frames"] for r in rows}):
        per = [(r, n) for r in rows if r["frames"] == frames for (t, c, h, n) in SHAPES if r["tokens"] == t]
        totals[frames] = {k: sum((r[k] or 0.0) * n for r, n in per)
                          for k in ("compiled_ms", "product_only_ms", "fused_default_ms", "fused_best_ms",
                                    "tma_best_ms")}
        print(f"fbs {frames}: per UNet call, {totals[frames]}")
    Path(args.json).write_text(json.dumps({"rows": rows, "bf16": bf16, "per_unet_call_ms": totals,
                                           "torch": torch.__version__, "device": torch.cuda.get_device_name()},
                                          indent=1))


if __name__ == "__main__":
    main()
