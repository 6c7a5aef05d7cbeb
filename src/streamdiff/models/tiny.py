"""Tiny random-weight components of the real Stable Diffusion architectures, built with no download.

They exercise every code path of the engine in milliseconds on a CPU; their pictures are meaningless.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch

TINY_RESOLUTION = 64
TINY_TEXT_WIDTH = 32
# SDXL's second text tower is wider than its first (OpenCLIP bigG 1280, CLIP-L 768); so is the tiny one's, which
# also lets diffusers' single-file loader tell them apart by width, as it does for the real ones.
TINY_TEXT_WIDTH_2 = 48
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# Merges of frequent English pairs, so that ordinary prompts take fewer tokens than characters.
_MERGES = ("t h", "th e</w>", "a n", "i n", "e r", "o n", "r e", "a t", "e n", "s t")


def _byte_alphabet() -> list[str]:
    """The printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _write_tokenizer_files(folder: Path) -> None:
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(m.split()) for m in _MERGES] + list(_SPECIAL)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    config = {
        "model_max_length": 77,
        "bos_token": _SPECIAL[0],
        "eos_token": _SPECIAL[1],
        "unk_token": _SPECIAL[1],
        "pad_token": _SPECIAL[1],
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@functools.lru_cache(maxsize=1)
def _tokenizer_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="streamdiff-tiny-tokenizer-"))
    _write_tokenizer_files(folder)
    return folder


def build_tiny_tokenizer():
    """A real CLIP byte-level BPE tokenizer over a small local vocabulary (77-token context)."""
    from transformers import CLIPTokenizer

    # transformers 5 ignores vocab_file/merges_file keyword arguments: load from a folder instead.
    return CLIPTokenizer.from_pretrained(str(_tokenizer_folder()))


def tiny_vocab_size() -> int:
    return len(json.loads((_tokenizer_folder() / "vocab.json").read_text()))


def build_tiny_text_encoder(projection: bool = False, width: int = TINY_TEXT_WIDTH):
    """CLIP's text tower, tiny; with `projection` the one SDXL adds (CLIPTextModelWithProjection: a pooled,
    projected embedding besides the hidden states)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=tiny_vocab_size(),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tiny_vocab_size() - 2,
        eos_token_id=tiny_vocab_size() - 1,
        pad_token_id=tiny_vocab_size() - 1,
        projection_dim=width,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def build_tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def build_tiny_sdxl_unet():
    """SDXL's UNet layout, tiny: no attention at the top level, more transformer layers lower down, and the
    pooled text embedding with the picture's size ("text_time") added to the timestep embedding."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=TINY_TEXT_WIDTH + TINY_TEXT_WIDTH_2,  # both text towers' hidden states side by side
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TINY_TEXT_WIDTH_2,  # six size numbers, the pooled text
        norm_num_groups=8,
    ).eval()


def build_tiny_taesd():
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).eval()
    _keep_signal_alive(vae)
    return vae


def _keep_signal_alive(vae: torch.nn.Module) -> None:
    """Variance-preserving init, so latents and pictures carry the input instead of fading to a constant.

    PyTorch's default init shrinks the signal at every layer; tests then could not tell inputs apart.
    TAESD's decoder maps its last layer's [0, 1] range to [-1, 1]: that layer is centred on 0.5 and
    scaled down so that most output pixels land inside the range unclipped.
    """
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    last = vae.decoder.layers[-1]
    with torch.no_grad():
        probe = vae.decoder(torch.randn(2, 4, 8, 8) * 3.0)  # (y * 2 - 1) of the unscaled layer
        last.weight.mul_(0.15 / float(((probe + 1) / 2).std()))
        last.bias.fill_(0.5)


def build_tiny_vae():
    """The full-VAE architecture (AutoencoderKL), tiny, for tests that compare against TAESD."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=TINY_RESOLUTION,
    ).eval()


def build_tiny_scheduler():
    from diffusers import LCMScheduler

    # Stable Diffusion's training schedule (scaled linear betas), as LCM models ship it.
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def build_tiny_pipeline(seed: int = 0, full_vae: bool = False):
    """A diffusers StableDiffusionPipeline of tiny random components; same seed, same weights."""
    from diffusers import StableDiffusionPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_tiny_unet()
        text_encoder = build_tiny_text_encoder()
        vae = build_tiny_vae() if full_vae else build_tiny_taesd()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tiny_tokenizer(),
        unet=unet,
        scheduler=build_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(seed: int = 0, full_vae: bool = False):
    """A diffusers StableDiffusionXLPipeline of tiny random components; same seed, same weights."""
    from diffusers import StableDiffusionXLPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_tiny_sdxl_unet()
        text_encoder = build_tiny_text_encoder()
        text_encoder_2 = build_tiny_text_encoder(projection=True, width=TINY_TEXT_WIDTH_2)
        vae = build_tiny_vae() if full_vae else build_tiny_taesd()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_tiny_tokenizer(),
        tokenizer_2=build_tiny_tokenizer(),
        unet=unet,
        scheduler=build_tiny_scheduler(),
    )
