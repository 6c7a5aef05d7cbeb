"""SDXL's added conditions (Podell et al. 2023, section 2.2): the pooled text embedding and the picture's size.

An SDXL UNet (and its ControlNets) adds to the timestep embedding a projection of the second text tower's
pooled embedding and of six size numbers: the original size, the crop's top-left corner and the target size.
The engine carries a prompt as one tensor everywhere (cached, blended, batched for guidance, copied into the
buffers a captured step reads), so the pooled embedding rides in it as one more token, zero-padded to the
hidden states' width, and is taken apart only where a UNet or ControlNet is called. The size numbers follow
from the latents' shape: a picture of the render size, uncropped, as SDXL's pipelines describe their own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SIZE_NUMBERS = 6  # original height and width, crop top and left, target height and width
LATENT_SCALE = 8  # pixels per latent (the autoencoders' downsampling)


def pooled_width(model: torch.nn.Module) -> int | None:
    """The width of the pooled text embedding a UNet or ControlNet adds to its timestep embedding; None for a model
    without added conditions (SD 1.x / 2.x). Other kinds of added conditions are refused."""
    config = model.config
    kind = config.get("addition_embed_type")
    if kind is None:
        return None
    if kind != "text_time":
        raise ValueError(f"expected a UNet without added conditions or with SDXL's ('text_time'); got {kind!r}")
    return int(config["projection_class_embeddings_input_dim"]) - SIZE_NUMBERS * int(config["addition_time_embed_dim"])


def check_fits(unet: torch.nn.Module, text_encoder_2: torch.nn.Module | None) -> None:
    """A ValueError unless the UNet takes no added conditions, or SDXL's: the pooled embedding of the second text
    tower and the six size numbers (an SDXL refiner also takes an aesthetic score, which the engine does not give)."""
    width = pooled_width(unet)
    if width is None:
        return
    if text_encoder_2 is None:
        raise ValueError("expected SDXL's second text tower (text_encoder_2) for a UNet with SDXL's added conditions")
    projection = int(text_encoder_2.config.projection_dim)
    if width != projection:
        raise ValueError(f"expected a UNet whose added conditions take the second text tower's {projection}-wide "
                         f"pooled embedding and six size numbers; this one leaves {width} for the embedding (an "
                         "SDXL refiner, which also takes an aesthetic score?)")


def pack(hidden: Tensor, pooled: Tensor) -> Tensor:
    """Hidden states (B, T, D) and a pooled embedding (B, P), P <= D, as one tensor (B, T + 1, D)."""
    width = hidden.shape[-1]
    if pooled.shape[-1] > width:
        raise ValueError(f"expected a pooled text embedding at most {width} wide; got {pooled.shape[-1]}")
    token = torch.nn.functional.pad(pooled, (0, width - pooled.shape[-1])).unsqueeze(1)
    return torch.cat([hidden, token.to(hidden.dtype)], dim=1)


def unpack(embeddings: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """What `pack` joined: hidden states (B, T, D) and the pooled embedding (B, width)."""
    return embeddings[:, :-1], embeddings[:, -1, :width]


def size_numbers(latents: Tensor) -> Tensor:
    """(B, 6): the render size as original and target size, no crop, in the latents' dtype.

    Made with fills on the latents' device (no host copy), so it can be part of a captured CUDA graph.
    """
    return size_numbers_for(latents.shape[0], (latents.shape[-2], latents.shape[-1]), latents)


def size_numbers_for(batch: int, latent_size: tuple[int, int], like: Tensor) -> Tensor:
    """size_numbers for `batch` latents of (height, width) `latent_size`, in the dtype and on the device of `like`."""
    height, width = latent_size[0] * LATENT_SCALE, latent_size[1] * LATENT_SCALE
    numbers = like.new_zeros(batch, SIZE_NUMBERS)
    numbers[:, 0::4] = height  # columns 0 and 4: original and target height
    numbers[:, 1::4] = width  # columns 1 and 5: original and target width
    return numbers


def model_inputs(latents: Tensor, embeddings: Tensor, width: int | None) -> tuple[Tensor, dict[str, Any]]:
    """The encoder hidden states and the keyword arguments a UNet or ControlNet call takes for `embeddings`."""
    if width is None:
        return embeddings, {}
    hidden, pooled = unpack(embeddings, width)
    return hidden, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": size_numbers(latents)}}
