"""How much of the UNet's transformer blocks is matrix products and attention, and how much is the rest.

Each of SD-Turbo's 16 Transformer2DModel blocks runs GroupNorm, proj_in, self-attention (LayerNorm, fused
QKV product, attention, output product, residual add), cross-attention on the prompt (LayerNorm, query
product, attention on the stored keys and values, output product, residual add), the GEGLU feed-forward
(LayerNorm, product to 2 x 4C, value * gelu(gate), product back, residual add), proj_out and the residual
add (Vaswani et al. 2017; Shazeer 2020). The engine runs it compiled by Inductor: cuBLAS products, cuDNN
attention, Triton kernels for the norms, the gating, the adds and the layout changes.

For each block shape, at each batch: the compiled block, and its products and attention calls alone on
the same shapes (what any fusion of the rest, in half precision, could at best reach), as CUDA graph
replays; the compiled block's error against float32; kernels per block, and the compiled block's kernels
by name. With `resnet_fusion_probe.py`'s
totals for the 22 ResNet blocks this bounds what fusing norms and pointwise work into the products
(CUTLASS- or TensorRT-class kernels) could take off a UNet call.

    python benchmarks/transformer_ceiling_probe.py --out DIR --batches 1,16
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from kernel_profile import graph_ms, probe_arguments, profile_kernels, rel_err, run_probes
from torch import Tensor, nn

HEAD = 64
PROMPT_TOKENS = 77


class BlockShape(NamedTuple):
    """Channels, latent side, and how many of SD-Turbo's transformer blocks have this shape."""

    channels: int
    size: int
    count: int


# SD 2.1's UNet at a 64x64 latent: 2 per down level (the lowest has none), 1 in the middle, 3 per up level.
SHAPES = [BlockShape(320, 64, 5), BlockShape(640, 32, 5), BlockShape(1280, 16, 5), BlockShape(1280, 8, 1)]


class Block(nn.Module):
    """Transformer2DModel with one BasicTransformerBlock as the engine runs it: linear proj_in/proj_out,
    fused QKV, SDPA, the cross-attention's keys and values read from the conditioning cache."""

    def __init__(self, c: int, batch: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.proj_in, self.proj_out = nn.Linear(c, c), nn.Linear(c, c)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.out1 = nn.Linear(c, c)
        self.q2 = nn.Linear(c, c, bias=False)
        self.out2 = nn.Linear(c, c)
        self.ff_in, self.ff_out = nn.Linear(c, 8 * c), nn.Linear(4 * c, c)
        heads = c // HEAD
        self.register_buffer("keys", torch.randn(batch, heads, PROMPT_TOKENS, HEAD))
        self.register_buffer("values", torch.randn(batch, heads, PROMPT_TOKENS, HEAD))

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, HEAD).transpose(1, 2)

    def _merge(self, t: Tensor) -> Tensor:
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, -1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        h = self.proj_in(h)
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        h = h + self.out1(self._merge(F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))))
        q = self._heads(self.q2(self.ln2(h)))
        h = h + self.out2(self._merge(F.scaled_dot_product_attention(q, self.keys, self.values)))
        value, gate = self.ff_in(self.ln3(h)).chunk(2, dim=-1)
        h = h + self.ff_out(value * F.gelu(gate))
        h = self.proj_out(h).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return h + x


def _products(block: Block, x: Tensor):
    """The block's matrix products (without their biases, which the compiled block adds in passes it fuses)
    and attention calls alone, on inputs of their shapes made once."""
    b, c, hh, ww = x.shape
    t = torch.randn(b, hh * ww, c, device=x.device, dtype=x.dtype)
    q = block._heads(torch.randn(b, hh * ww, c, device=x.device, dtype=x.dtype))
    hidden = torch.randn(b, hh * ww, 4 * c, device=x.device, dtype=x.dtype)
    on_t = [block.proj_in, block.qkv, block.out1, block.q2, block.out2, block.ff_in, block.proj_out]

    def run() -> Tensor:
        for layer in on_t:
            F.linear(t, layer.weight)
        F.scaled_dot_product_attention(q, q, q)
        F.scaled_dot_product_attention(q, block.keys, block.values)
        return F.linear(hidden, block.ff_out.weight)

    return run


def probe(shape: BlockShape, batch: int) -> dict[str, Any]:
    torch.manual_seed(0)
    block = Block(shape.channels, batch).cuda()
    x32 = torch.randn(batch, shape.channels, shape.size, shape.size, device="cuda")
    with torch.no_grad():
        ref = block(x32)
        block = block.half()
        x = x32.half().contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(block, fullgraph=True, dynamic=False)
        row: dict[str, Any] = {"channels": shape.channels, "size": shape.size, "count": shape.count, "batch": batch,
                               "compiled_err": rel_err(compiled(x), ref)}
        row["compiled_ms"] = graph_ms(lambda: compiled(x))
        kernels = profile_kernels(lambda: compiled(x), 5)
        row["compiled_kernels"] = kernels["kernels_per_call"]
        row["compiled_top"] = kernels["top"][:30]
        products = _products(block, x)
        row["products_only_ms"] = graph_ms(products)
        row["products_kernels"] = profile_kernels(products, 5)["kernels_per_call"]
    return row


def main() -> None:
    args = probe_arguments(__doc__)
    torch._dynamo.config.cache_size_limit = 512
    rows = run_probes(probe, SHAPES, args.batches)
    totals = {str(b): {k: round(sum(r[k] * r["count"] for r in rows if r["batch"] == b), 4)
                       for k in ("compiled_ms", "products_only_ms")} for b in {r["batch"] for r in rows}}
    summary = {"environment": {"device": torch.cuda.get_device_name(), "torch": torch.__version__},
               "per_unet_ms": totals, "rows": rows}
    (args.out / "transformer-ceiling.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    main()
