"""Helpers for the model tests: a real huggingface_hub cache layout, and tiny checkpoints in LDM layout."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hub_cache(cache_dir: Path, repo_id: str, folder: Path) -> Path:
    """Copy `folder` into `cache_dir` as huggingface_hub lays a downloaded snapshot out.

    blobs/<sha256> hold the contents, snapshots/<commit>/<path> link to them, refs/main names the commit.
    """
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / source.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL's "text_time"
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# OpenCLIP's names for the parts of a transformers CLIP text layer (SDXL's second text encoder).
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def _unet_key_to_ldm(key: str, layers: int, up_has_attention: list[bool]) -> str:
    """The original (LDM) name of a diffusers UNet parameter: the inverse of diffusers' converter."""
    for new, old in _TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i = 1 + int(m[1]) * (layers + 1) + int(m[3])
        return f"input_blocks.{i}.0.{_resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{i}.1.{m[4]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[2])}.{_resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i = int(m[1]) * (layers + 1) + int(m[3])
        return f"output_blocks.{i}.0.{_resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{i}.1.{m[4]}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)
    assert m, f"unexpected UNet parameter {key}"
    block = int(m[1])
    return f"output_blocks.{block * (layers + 1) + layers}.{2 if up_has_attention[block] else 1}.conv.{m[2]}"


def _ldm_unet(unet) -> dict[str, torch.Tensor]:
    config = unet.config
    up_has_attention = [t.startswith("CrossAttn") for t in config.up_block_types]
    return {
        "model.diffusion_model." + _unet_key_to_ldm(k, config.layers_per_block, up_has_attention): v
        for k, v in unet.state_dict().items()
    }


def _ldm_clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    text_state = text_encoder.state_dict()
    # transformers 5 dropped the "text_model." level from CLIPTextModel's names; the original layout has it.
    nested = next(iter(text_state)).startswith("text_model.")
    return {prefix + ("" if nested else "text_model.") + k: v for k, v in text_state.items()}


def _open_clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's layout: one in_proj for the queries, keys and
    values of a layer, the projection transposed (the inverse of diffusers' convert_open_clip_checkpoint)."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {"positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"), "ln_final.bias": state.pop("final_layer_norm.bias"),
           "text_projection": state.pop("text_projection.weight").T}
    state.pop("embeddings.position_ids", None)
    for layer in range(text_encoder.config.num_hidden_layers):
        head = f"encoder.layers.{layer}."
        block = f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{head}self_attn.{p}_proj.{kind}") for p in "qkv"])
            for new, old in _OPEN_CLIP_LAYER.items():
                out[f"{block}{old}.{kind}"] = state.pop(f"{head}{new}.{kind}")
    assert not state, f"text encoder parameters left unconverted: {sorted(state)}"
    return {prefix + k: v for k, v in out.items()}


def ldm_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """UNet and text encoder(s) of a diffusers SD 1.x or SDXL pipeline in the original single-file layout."""
    state = _ldm_unet(pipe.unet)
    if getattr(pipe, "text_encoder_2", None) is None:
        state.update(_ldm_clip(pipe.text_encoder, "cond_stage_model.transformer."))
    else:
        state.update(_ldm_clip(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    return {k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="session")
def tiny_reference():
    from streamdiff.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_reference) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "sd-turbo-export"  # a misleading name: traits must not follow it
    tiny_reference.save_pretrained(folder)
    return folder


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache with offline mode on, for this test only (huggingface_hub reads both per call)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def unet_output(pipe_or_unet, seed: int = 0) -> torch.Tensor:
    """The UNet's prediction for a fixed random input, in float32."""
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    generator = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    sample = torch.randn(1, 4, size, size, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, 500, context).sample.float()


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for tests (conftest modules are not imported by name)."""

    class Helpers:
        add_to_hub_cache = staticmethod(add_to_hub_cache)
        ldm_checkpoint = staticmethod(ldm_checkpoint)
        unet_output = staticmethod(unet_output)

    return Helpers
