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
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


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


def ldm_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """UNet and CLIP text encoder of a diffusers SD 1.x pipeline in the original single-file layout."""
    config = pipe.unet.config
    up_has_attention = [t.startswith("CrossAttn") for t in config.up_block_types]
    state = {
        "model.diffusion_model." + _unet_key_to_ldm(k, config.layers_per_block, up_has_attention): v
        for k, v in pipe.unet.state_dict().items()
    }
    text_state = pipe.text_encoder.state_dict()
    # transformers 5 dropped the "text_model." level from CLIPTextModel's names; the original layout has it.
    nested = next(iter(text_state)).startswith("text_model.")
    prefix = "cond_stage_model.transformer." + ("" if nested else "text_model.")
    state.update({prefix + k: v for k, v in text_state.items()})
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
