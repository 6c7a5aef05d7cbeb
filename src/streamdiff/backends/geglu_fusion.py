"""Each transformer block's GEGLU as one matrix product with the gating done before the only write (Triton).

diffusers' GEGLU (Shazeer 2020, eq. 6) projects x (T, C) to 2H features, splits them into a value and a gate
half and returns value * gelu(gate): the matrix product writes (T, 2H), and a pointwise kernel reads all of it
back to write (T, H). In SD-Turbo's UNet at 16 frames of 512x512 those pointwise kernels took 1.48 ms of a
46.5 ms step on an H100 (benchmarks/NOTES-cuda.md, sixth round). Here one kernel computes an output tile's
value and gate products side by side from the same input tile, adds both biases and applies the exact
(erf) GELU in registers, so the (T, 2H) intermediate never reaches memory.

Fusing replaces `forward` per GEGLU instance (parameters and state dicts do not change); `unfuse` restores
it. The kernel is registered as a torch.library Triton op, so torch.compile traces it into the compiled
UNet and the CUDA graph captures it like any other kernel. Triton is imported only when fusing.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MARK = "_streamdiff_fused_geglu"
_DTYPES = (torch.float16, torch.bfloat16)


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


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why GEGLU cannot be fused here, or None when it can."""
    if device.type != "cuda":
        return f"the fused GEGLU kernel runs on CUDA devices only (this is {device.type})"
    if importlib.util.find_spec("triton") is None:
        return "the fused GEGLU kernel needs Triton, which is not installed"
    if dtype not in _DTYPES:
        return f"the fused GEGLU kernel runs in float16 or bfloat16; the model is {dtype}"
    return None


def fuse(unet: nn.Module) -> int:
    """Route every GEGLU of `unet` through the fused kernel; returns how many were fused."""
    count = 0
    for module in _geglus(unet):
        if not module.__dict__.get(_MARK):
            module.__dict__["forward"] = _fused_forward(module)
            module.__dict__[_MARK] = True
        count += 1
    return count


def unfuse(unet: nn.Module) -> None:
    """Undo fuse: each GEGLU runs its own forward again."""
    for module in _geglus(unet):
        if module.__dict__.pop(_MARK, False):
            module.__dict__.pop("forward", None)


def is_fused(unet: nn.Module) -> bool:
    return any(m.__dict__.get(_MARK) for m in _geglus(unet))


def geglu_linear(x: Tensor, weight: Tensor, bias: Tensor | None, config: TileConfig | None = None) -> Tensor:
    """value * gelu(gate) of x @ weight.T + bias, for x (..., C) and weight (2H, C), in one kernel launch."""
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return _launch(_kernel(), x, weight, bias, config)


def _geglus(unet: nn.Module) -> list[nn.Module]:
    from diffusers.models.activations import GEGLU

    return [m for m in unet.modules() if isinstance(m, GEGLU)]


def _fused_forward(module: nn.Module) -> Callable[..., Tensor]:
    op = _registered_op()
    proj = module.proj

    def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        bias = proj.bias if proj.bias is not None else proj.weight.new_zeros(proj.weight.shape[0])
        return op(hidden_states, proj.weight, bias)

    return forward


def _launch(kernel: Any, x: Tensor, weight: Tensor, bias: Tensor, config: TileConfig | None,
            wrap: Callable[[Any], Any] = lambda k: k) -> Tensor:
    channels = x.shape[-1]
    if weight.shape[0] % 2 or weight.shape[1] != channels:
        raise ValueError(f"GEGLU weight must be (2H, {channels}) for input (..., {channels}); got {tuple(weight.shape)}")
    rows2d = x.reshape(-1, channels)
    if rows2d.stride(-1) != 1:
        rows2d = rows2d.contiguous()
    rows, hidden = rows2d.shape[0], weight.shape[0] // 2
    out = torch.empty((rows, hidden), device=x.device, dtype=x.dtype)
    c = config or choose_config(rows, hidden, channels)
    grid = (_cdiv(rows, c.block_m) * _cdiv(hidden, c.block_n),)
    wrap(kernel)[grid](rows2d, weight.contiguous(), bias, out, rows, hidden, channels, rows2d.stride(0),
                       out.stride(0), BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k,
                       GROUP_M=c.group_m, num_warps=c.warps, num_stages=c.stages)
    return out.reshape(*x.shape[:-1], hidden)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _registered_op() -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The kernel as the torch.library op `streamdiff::geglu_linear`, which torch.compile can trace."""
    from torch.library import triton_op, wrap_triton

    kernel = _kernel()

    @triton_op("streamdiff::geglu_linear", mutates_args={})
    def geglu_linear_op(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return _launch(kernel, x, weight, bias, None, wrap_triton)

    return geglu_linear_op


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, defined at first use (Triton is optional, and TRITON_INTERPRET is read here)."""
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
