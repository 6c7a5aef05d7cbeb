"""Configurations of the real architectures, to build them with random weights and no download (benchmarks).

The SD 1.5, SD 2.1 and SDXL configurations are the published ones. The SDXS-512 and segmind tiny-sd UNets are
reconstructions, as their exact configurations are not available offline: both are modelled on the
block removal of BK-SDM-Tiny (three stages of 320/640/1280 channels, one ResNet and one transformer per
down stage, two per up stage, no middle block) at their families' attention widths. They come out at
327M and 323M parameters, in line with the published sizes, so compute and memory are representative;
the pictures of random weights are meaningless either way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .registry import ModelSpec

# SD 2.1-base, which SD-Turbo keeps unchanged: 865.9M parameters.
UNET_SD21: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}

# SD 1.5: 859.5M parameters.
UNET_SD15: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

# SDXL 1.0 base, which SDXL-Turbo keeps unchanged: 2567.5M parameters. No attention at the top level, 1, 2 and
# 10 transformer layers per block lower down, and the pooled text embedding with six size numbers added to the
# timestep embedding (6 x 256 + 1280 = 2816).
UNET_SDXL: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

_BLOCK_REMOVED: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3,
    "up_block_types": ("CrossAttnUpBlock2D",) * 3,
    "mid_block_type": None,
    "layers_per_block": 1,
}

# Reconstruction of SDXS-512 (SD 2.1 text encoder and attention widths): 326.8M parameters.
UNET_SDXS_512: dict[str, Any] = {
    **_BLOCK_REMOVED,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
}

# Reconstruction of segmind tiny-sd (SD 1.5 text encoder and attention widths): 323.4M parameters.
UNET_TINY_SD: dict[str, Any] = {**_BLOCK_REMOVED, "cross_attention_dim": 768, "attention_head_dim": 8}

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sdxs-512": UNET_SDXS_512,
    "sd-turbo": UNET_SD21,
    "sdxl-turbo": UNET_SDXL,
    "sdxl-lcm": UNET_SDXL,
    "sd15-lcm": UNET_SD15,
    "tiny-sd": UNET_TINY_SD,
}
RECONSTRUCTED: frozenset[str] = frozenset({"sdxs-512", "tiny-sd"})

# CLIP ViT-L/14 text tower (SD 1.x).
TEXT_ENCODER_SD15: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

# OpenCLIP ViT-H/14 text tower as SD 2.x uses it (penultimate layer: 23 of 24 layers kept).
TEXT_ENCODER_SD21: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 512,
}

# OpenCLIP ViT-bigG/14 text tower, SDXL's second (CLIPTextModelWithProjection: its pooled embedding projected).
TEXT_ENCODER_SDXL_2: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# SDXL's first text tower is SD 1.x's CLIP ViT-L; its second is keyed "sdxl-2".
TEXT_ENCODER_CONFIGS: dict[str, dict[str, Any]] = {"sd15": TEXT_ENCODER_SD15, "sd21": TEXT_ENCODER_SD21,
                                                  "sdxl": TEXT_ENCODER_SD15, "sdxl-2": TEXT_ENCODER_SDXL_2}

# diffusers' AutoencoderTiny defaults are TAESD's architecture.
TAESD_CONFIG: dict[str, Any] = {}

# The Stable Diffusion KL autoencoder (shared by SD 1.x and 2.x).
VAE_KL_CONFIG: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
}

# SDXL's autoencoder: the same architecture, its own latent scale; it overflows in float16, which its
# configuration's force_upcast says (diffusers' SDXL pipelines then decode in float32, and so does the engine).
VAE_KL_SDXL_CONFIG: dict[str, Any] = {**VAE_KL_CONFIG, "scaling_factor": 0.13025, "force_upcast": True}

# Stable Diffusion's training noise schedule, as LCM models ship it.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,  # as SD's configurations say; LCM ignores it, diffusers warns when it is 0
}


def random_weights_note(name: str) -> str:
    """How a random-weight build of `name` relates to the real model, for its description."""
    if name in RECONSTRUCTED:
        return "random weights; UNet architecture reconstructed (published size, exact configuration unknown)"
    return "random weights; published architecture"


def unet_config(name: str, resolution: int) -> dict[str, Any]:
    """The UNet2DConditionModel keyword arguments of registry model `name` at its native `resolution`."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"no architecture recorded for {name!r}; known: {', '.join(UNET_CONFIGS)}")
    return {**copy.deepcopy(UNET_CONFIGS[name]), "sample_size": resolution // 8}


def text_encoder_config(family: str, tokenizer: Any) -> Any:
    """A CLIPTextConfig of the family's text tower, with the special token ids of `tokenizer`."""
    from transformers import CLIPTextConfig

    if family not in TEXT_ENCODER_CONFIGS:
        raise ValueError(f"no text encoder recorded for family {family!r}; known: {', '.join(TEXT_ENCODER_CONFIGS)}")
    return CLIPTextConfig(
        **TEXT_ENCODER_CONFIGS[family],
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_vae(taesd: bool, resolution: int, family: str = "sd21") -> torch.nn.Module:
    """TAESD (AutoencoderTiny) or the family's full autoencoder (AutoencoderKL), randomly initialised."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    if taesd:
        return AutoencoderTiny(**TAESD_CONFIG)
    return AutoencoderKL(**(VAE_KL_SDXL_CONFIG if family == "sdxl" else VAE_KL_CONFIG), sample_size=resolution)


def build_random_pipeline(spec: ModelSpec, *, taesd: bool, dtype: torch.dtype, device: torch.device | str,
                          seed: int = 0) -> Any:
    """Model `spec`'s real architecture with seeded random weights, created directly on `device`.

    On "meta" nothing is allocated, which is how the parameter counts are checked.
    """
    from diffusers import LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()  # its ids stay below the real vocabulary size
    parts: dict[str, Any] = {"tokenizer": tokenizer, "scheduler": LCMScheduler(**SCHEDULER_CONFIG)}
    with _seeded(torch.device(device), seed):
        # Each module is cast as soon as it exists, so float32 copies never pile up.
        parts["unet"] = cast(UNet2DConditionModel(**unet_config(spec.name, spec.resolution)), dtype)
        parts["text_encoder"] = cast(CLIPTextModel(text_encoder_config(spec.family, tokenizer)), dtype)
        if spec.family == "sdxl":
            second = CLIPTextModelWithProjection(text_encoder_config("sdxl-2", tokenizer))
            parts.update(text_encoder_2=cast(second, dtype), tokenizer_2=tokenizer)
        parts["vae"] = cast(build_vae(taesd, spec.resolution, spec.family), dtype)
    return _pipeline(parts)


def _pipeline(parts: dict[str, Any]) -> Any:
    """A diffusers SDXL pipeline of these parts where they hold a second text tower, else an SD one."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if "text_encoder_2" in parts:
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def cast(module: torch.nn.Module, dtype: torch.dtype, device: torch.device | str | None = None) -> Any:
    """Cast (and move) a module in eval mode; torch's own `to`, as diffusers' override warns needlessly."""
    return torch.nn.Module.to(module, device=device, dtype=dtype).eval()


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Modules created inside start from `seed` on `device`; the global generators are restored after."""
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(seed)
        yield
