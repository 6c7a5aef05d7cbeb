"""Style LoRAs fused into a model's weights at load time: a file from a model site, a folder or a hub repo.

Fused, a LoRA costs a stream nothing per frame (no adapter layers stay), and accelerated or converted
backends see plain weights. Several LoRAs fuse one after another, each with its own scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelPathNotFoundError, UserError
from .digest import weights_digest

LORA_FILES = ("*.safetensors",)


@dataclass(frozen=True)
class StyleLora:
    """A LoRA to fuse: a .safetensors file, a folder holding one, or a hub repo id; scale 1 is as trained."""

    source: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> StyleLora:
        """SOURCE[:SCALE], e.g. ink.safetensors:0.8 or owner/repo (a colon not followed by a number, as in
        C:\\styles\\ink.safetensors, belongs to the source, unless only the part before it is a file or folder)."""
        head, sep, tail = text.rpartition(":")
        number = _number(tail) if sep else None
        if sep and number is None and _exists(head) and not _exists(text):
            raise ValueError(f"a LoRA's scale, after the ':' in {text!r}, must be a number such as 0.8; got {tail!r}")
        source, scale = (head, number) if number is not None else (text, 1.0)
        if not source.strip():
            raise ValueError(f"--lora expects SOURCE[:SCALE] (a .safetensors file, a folder or a hub repo); got "
                             f"{text!r}")
        if not math.isfinite(scale):
            raise ValueError(f"a LoRA's scale must be a finite number; got {tail!r}")
        return cls(source, float(scale))


def _exists(path: str) -> bool:
    return bool(path) and Path(path).expanduser().exists()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class LocatedLora:
    """A LoRA and where its file is on this machine (weight_name None: diffusers picks the folder's file)."""

    lora: StyleLora
    folder: str
    weight_name: str | None


def locate_loras(loras: Sequence[StyleLora]) -> list[LocatedLora]:
    """Check local LoRAs and fetch hub ones, before the model loads: a missing one fails at once."""
    if loras:
        from diffusers.utils import is_peft_available

        if not is_peft_available():
            raise UserError(f"the LoRA {loras[0].source} needs the peft package to be fused: pip install peft")
    return [LocatedLora(lora, *_locate(lora.source)) for lora in loras]


def fuse_style_loras(pipe: Any, loras: Sequence[LocatedLora]) -> None:
    """Fuse each LoRA into `pipe`'s UNet (and text encoder, where it has layers for it); a LoRA that changes
    no weight (one made for another architecture) is an error rather than a silent no-op."""
    for index, located in enumerate(loras):
        lora, name = located.lora, f"style_{index}"
        before = weights_digest(_adaptable(pipe))
        try:
            pipe.load_lora_weights(located.folder, weight_name=located.weight_name, adapter_name=name)
            pipe.fuse_lora(lora_scale=lora.scale, adapter_names=[name])
            pipe.unload_lora_weights()
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot fuse the LoRA {lora.source} into this model: {first}") from exc
        if lora.scale != 0 and weights_digest(_adaptable(pipe)) == before:
            raise UserError(f"the LoRA {lora.source} matches none of this model's layers: is it made for another "
                            "architecture (SDXL, SD 1.x vs 2.x)?")


def _adaptable(pipe: Any) -> list[Any]:
    """The modules a LoRA may adapt: the UNet and the text towers (SDXL has two)."""
    return [m for m in (pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]


def _locate(source: str) -> tuple[str, str | None]:
    """(folder, file name or None to let diffusers pick) of a local file or folder, or a fetched hub repo."""
    path = Path(source).expanduser()
    if path.is_file():
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), None
    if path.suffix.lower() == ".safetensors" or source.startswith((".", "~", "/")) or source.count("/") != 1:
        raise ModelPathNotFoundError(f"LoRA not found: {source} (give a .safetensors file, a folder or a hub repo "
                                     "id such as owner/name)")
    from .hub import HubFiles, fetch

    wanted = HubFiles(source, "the LoRA", LORA_FILES, instead="its .safetensors file as --lora FILE")
    return fetch([wanted], f"LoRA '{source}'")[0], None
