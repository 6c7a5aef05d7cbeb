"""IP-Adapters: which one a model takes, where its weights come from, and loading it into a pipeline.

An adapter is named by kind ("base", "plus": the published IP-Adapter of the model's family, h94/IP-Adapter, with
its CLIP ViT-H image encoder), or given as a local weight file in the published layout (`image_encoder/` beside
it). diffusers' `load_ip_adapter` loads it into the pipeline; the stream then takes it over (ip_adapter.py).
SD 2.x models (sd-turbo, sdxs-512) have no published adapter. Random weights (tests, benchmarks) build the base
adapter's architecture for the UNet at hand with ViT-H's image encoder, or a tiny encoder for the tiny models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelPathNotFoundError, UserError
from .architectures import _seeded, cast
from .hub import HubFiles, fetch
from .registry import ModelSpec

IP_ADAPTER_REPO = "h94/IP-Adapter"
DEFAULT_IP_ADAPTER = "base"
IMAGE_TOKENS = 4  # the base adapter's image tokens
_INSTEAD = ("a local IP-Adapter weight file with its image_encoder/ folder beside it",
            "--model tiny for an offline check with a random-weight adapter (meaningless pictures)")
# CLIP ViT-H/14's vision tower, the image encoder of h94's ViT-H adapters (632 M parameters).
VIT_H = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
         "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"}
TINY_ENCODER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                "image_size": 32, "patch_size": 8, "projection_dim": 16}


@dataclass(frozen=True)
class AdapterFiles:
    """Where one adapter lies in its repository or folder, as diffusers' load_ip_adapter takes it."""

    subfolder: str
    weight_name: str
    image_encoder_folder: str  # relative to the repository's root


# kind -> family -> files in h94/IP-Adapter. SDXL takes the ViT-H versions: the same image encoder as SD 1.5's.
IP_ADAPTER_KINDS: dict[str, dict[str, AdapterFiles]] = {
    "base": {"sd15": AdapterFiles("models", "ip-adapter_sd15.safetensors", "models/image_encoder"),
             "sdxl": AdapterFiles("sdxl_models", "ip-adapter_sdxl_vit-h.safetensors", "models/image_encoder")},
    "plus": {"sd15": AdapterFiles("models", "ip-adapter-plus_sd15.safetensors", "models/image_encoder"),
             "sdxl": AdapterFiles("sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors", "models/image_encoder")},
}


# What diffusers' load_ip_adapter reads of the image encoder's folder; h94 also keeps a pytorch_model.bin of the same
# weights there (2.5 GB more), which is not fetched.
IMAGE_ENCODER_FILES = ("config.json", "model.safetensors")


def hub_files(files: AdapterFiles) -> tuple[str, ...]:
    """The files of an adapter in its repository that loading it reads: its weights, then its image encoder's."""
    return (f"{files.subfolder}/{files.weight_name}",
            *(f"{files.image_encoder_folder}/{name}" for name in IMAGE_ENCODER_FILES))


@dataclass(frozen=True)
class AdapterSource:
    """A folder holding an adapter's files (`files` inside it); None for random weights."""

    folder: str | None
    files: AdapterFiles | None = None


def locate_ip_adapter(ref: str, family: str, *, random_weights: bool = False) -> AdapterSource:
    """Before the model loads: the adapter `ref` (a kind or a weight file) for a model of `family`, fetched
    where it is a kind, so that a missing one is named at once."""
    kind = IP_ADAPTER_KINDS.get(ref)
    if kind is None:
        return _local_file(ref)
    if random_weights or family == "tiny":
        if ref != DEFAULT_IP_ADAPTER:
            raise UserError(f"random weights build the {DEFAULT_IP_ADAPTER} IP-Adapter only; got --ip-adapter {ref}")
        return AdapterSource(None)
    files = kind.get(family)
    if files is None:
        raise UserError(f"no {ref} IP-Adapter is published for {family} models (SD 2.x ones such as sd-turbo and "
                        "sdxs-512 have none): use --model sd15-lcm, sdxl-turbo or sdxl-lcm, or give an IP-Adapter weight file "
                        "that fits this model")
    wanted = HubFiles(IP_ADAPTER_REPO, f"the {ref} IP-Adapter", hub_files(files), narrow=True)
    folder = fetch([wanted], f"IP-Adapter '{ref}'", _INSTEAD)[0]
    return AdapterSource(folder, files)


def _local_file(ref: str) -> AdapterSource:
    path = Path(ref).expanduser()
    if path.suffix not in (".safetensors", ".bin"):
        raise UserError(f"unknown IP-Adapter {ref!r}: give a kind ({', '.join(IP_ADAPTER_KINDS)}) or a weight file "
                        "(.safetensors or .bin) with its image_encoder/ folder beside it")
    if not path.is_file():
        raise ModelPathNotFoundError(f"IP-Adapter file {ref} does not exist")
    if not (path.parent / "image_encoder" / "config.json").is_file():
        raise UserError(f"IP-Adapter file {ref} needs its CLIP image encoder in {path.parent / 'image_encoder'} "
                        "(a transformers folder with config.json), as h94/IP-Adapter lays them out")
    return AdapterSource(str(path.parent), AdapterFiles("", path.name, "image_encoder"))


def load_ip_adapter(pipe: Any, ref: str, spec: ModelSpec, source: AdapterSource | None = None, *,
                    random_weights: bool = False, seed: int = 3) -> None:
    """Load the adapter `ref` into the diffusers pipeline `pipe` (its UNet, image encoder and feature extractor),
    in the pipeline's dtype and on its device."""
    source = source or locate_ip_adapter(ref, spec.family, random_weights=random_weights)
    if source.folder is None:
        _load_random(pipe, seed)
        return
    files = source.files
    assert files is not None
    weights = Path(source.folder, files.subfolder, files.weight_name)
    check_fits(_cross_attention_width(weights), pipe.unet, ref)
    if getattr(pipe, "feature_extractor", None) is None:
        encoder_config = Path(source.folder, files.image_encoder_folder, "config.json")
        pipe.register_modules(feature_extractor=feature_extractor(_image_size(encoder_config)))
    try:
        pipe.load_ip_adapter(source.folder, subfolder=files.subfolder, weight_name=files.weight_name,
                             image_encoder_folder=files.image_encoder_folder, local_files_only=True)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load IP-Adapter {ref} from {weights}: {str(exc).splitlines()[0]}") from exc


def feature_extractor(size: int) -> Any:
    """CLIP's picture preprocessing at `size` (resize, centre crop, normalise); the PIL one, which needs no
    torchvision, where transformers has it."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _image_size(config_file: Path) -> int:
    """The picture size a CLIP image encoder's config.json names (224 where it names none)."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return 224
    return int(config.get("vision_config", config).get("image_size", 224))


def _cross_attention_width(weights: Path) -> int:
    """The text width the adapter's first image key projection reads (its UNet's cross_attention_dim)."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return int(f.get_slice("ip_adapter.1.to_k_ip.weight").get_shape()[1])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return int(state["ip_adapter"]["1.to_k_ip.weight"].shape[1])


def check_fits(width: int, unet: torch.nn.Module, source: str) -> None:
    """A UserError unless the adapter's image keys read the UNet's text width."""
    ours = int(unet.config.cross_attention_dim)
    if width != ours:
        raise UserError(f"IP-Adapter {source} does not fit this model: it reads embeddings {width} wide, the model's "
                        f"are {ours} wide (an adapter of another Stable Diffusion version?)")


def random_adapter_state(unet: torch.nn.Module, image_width: int) -> dict[str, dict[str, torch.Tensor]]:
    """The base adapter's weights in the published layout, random, for `unet` and an image embedding of
    `image_width`: a projection to IMAGE_TOKENS tokens, and a key and value projection per cross-attention layer
    (numbered 1, 3, 5, ... in the UNet's processor order, as diffusers reads them)."""
    width = int(unet.config.cross_attention_dim)
    device = next(unet.parameters()).device
    image_proj = {"proj.weight": torch.randn(IMAGE_TOKENS * width, image_width, device=device) * image_width ** -0.5,
                  "proj.bias": torch.zeros(IMAGE_TOKENS * width, device=device),
                  "norm.weight": torch.ones(width, device=device), "norm.bias": torch.zeros(width, device=device)}
    layers: dict[str, torch.Tensor] = {}
    number = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            key = unet.get_submodule(name.removesuffix(".processor")).to_k.weight
            for projection in ("to_k_ip", "to_v_ip"):
                layers[f"{number}.{projection}.weight"] = torch.randn_like(key, dtype=torch.float32) * width ** -0.5
            number += 2
    return {"image_proj": image_proj, "ip_adapter": layers}


def random_image_encoder(tiny: bool) -> torch.nn.Module:
    """CLIP ViT-H/14's vision tower with its projection (or a tiny one), randomly initialised."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**(TINY_ENCODER if tiny else VIT_H))).eval()


def _load_random(pipe: Any, seed: int) -> None:
    """The base adapter with seeded random weights, through diffusers' own loading of its published layout."""
    unet = pipe.unet
    tiny = int(unet.config.cross_attention_dim) < 256
    device = next(unet.parameters()).device
    with _seeded(device, seed):
        encoder = cast(random_image_encoder(tiny), unet.dtype)
        state = random_adapter_state(unet, encoder.config.projection_dim)
    size = encoder.config.image_size
    pipe.register_modules(image_encoder=encoder, feature_extractor=feature_extractor(size))
    pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
