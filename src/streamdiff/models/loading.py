"""Load a model by registry name, local diffusers folder, single checkpoint file or hub id.

Downloads go through huggingface_hub (its cache, its progress bars) and all of one model's repos are
fetched before anything is built, so whatever is missing is named at once, in one
ModelUnavailableError paragraph instead of a traceback (see hub.py).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelPathNotFoundError, UserError
from .hub import HubFiles, fetch
from .lora import LORA_FILES, LocatedLora, StyleLora, fuse_style_loras, locate_loras
from .registry import LCM_T_INDEX, REGISTRY, TAESD_REPO, TAESDXL_REPO, ModelSpec

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
TAESD_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
# What from_single_file reads from the base model's diffusers repo: configurations and tokenizers (SDXL has two),
# no weights.
CONFIG_FILES = ("model_index.json", "*/config.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*")
_FAMILY_BY_TEXT_WIDTH = {768: "sd15", 1024: "sd21"}


@dataclass
class LoadedModel:
    """A ready diffusers pipeline and the traits the engine runs it with."""

    pipe: StableDiffusionPipeline
    spec: ModelSpec


@dataclass(frozen=True)
class Source:
    """Where a model comes from: kind is "registry", "folder", "single_file" or "hub"."""

    kind: str
    location: str  # registry name, local path or hub id


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    taesd: bool | None = None,
    random_weights: bool = False,
    config: str | None = None,
    traits: Mapping[str, Any] | None = None,
    loras: Sequence[StyleLora] = (),
) -> LoadedModel:
    """Load `name_or_path`: a registry name, diffusers folder, .safetensors/.ckpt file or hub id.

    taesd: replace the VAE by TAESD (None: the model's trait, yes outside the registry).
    random_weights: a registry model's real architecture with seeded random weights, no download.
    config: for a single file, a diffusers folder or hub id of its base model (default: diffusers'
    choice from the checkpoint's keys). traits: ModelSpec fields to override, e.g. t_index_list.
    loras: style LoRAs fused into the weights, in order (random weights too, where their shapes fit).
    """
    source = resolve_source(name_or_path)
    styles = locate_loras(loras)
    if random_weights:
        loaded = _load_random(source, taesd, dtype, device, traits)
        fuse_style_loras(loaded.pipe, styles)
        return loaded
    if source.kind == "registry":
        spec = _with_traits(REGISTRY[source.location], traits)
        use_taesd = _use_taesd(spec, taesd)
        pipe = _load_registry(spec, use_taesd, dtype, device)
    else:
        use_taesd = True if taesd is None else taesd
        pipe = _load_other(source, use_taesd, dtype, config).to(device)
        repo_id = source.location if source.kind == "hub" else ""
        spec = _with_traits(spec_from_pipeline(name_or_path, pipe, repo_id=repo_id), traits)
    fuse_style_loras(pipe, styles)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe=pipe, spec=spec.with_traits(use_taesd=use_taesd))


def prefetch_model(name_or_path: str, *, dtype: torch.dtype, taesd: bool | None = None,
                   random_weights: bool = False) -> None:
    """Fetch what load_model would fetch, building nothing: a model that cannot be had fails now, in one error,
    before work that waits for it (a single checkpoint file's base configuration is read when it loads)."""
    source = resolve_source(name_or_path)
    if random_weights:
        _require_registry(source)
    elif source.kind == "registry":
        spec = REGISTRY[source.location]
        if not spec.local_builder:
            _registry_folders(spec, _use_taesd(spec, taesd), dtype)
    elif source.kind != "single_file":
        _other_folders(source, True if taesd is None else taesd, None)


def resolve_source(name_or_path: str) -> Source:
    """Registry name, then an existing folder or file, then a hub id "owner/name"; else a UserError."""
    if name_or_path in REGISTRY:
        return Source("registry", name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is a folder but not a diffusers pipeline: it has no model_index.json")
        return Source("folder", str(path))
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise UserError(f"{path} is not a model: expected a .safetensors or .ckpt file or a diffusers folder")
        return Source("single_file", str(path))
    if _looks_like_path(name_or_path):
        raise ModelPathNotFoundError(f"model path {name_or_path} does not exist")
    if name_or_path.count("/") != 1:
        raise UserError(
            f"unknown model {name_or_path!r}: give a registry name ({', '.join(REGISTRY)}), a diffusers "
            "folder, a .safetensors file or a hub id such as stabilityai/sd-turbo"
        )
    return Source("hub", name_or_path)


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "~"))
        or os.path.isabs(text)
        or "\\" in text
        or text.count("/") > 1
        or Path(text).suffix.lower() in SINGLE_FILE_SUFFIXES
    )


def spec_from_pipeline(name: str, pipe: Any, *, repo_id: str = "") -> ModelSpec:
    """Conservative traits for a model outside the registry: LCM boundary, two steps (32, 45), TAESD.

    Family and size come from the loaded components' configurations, never from the name: a second text tower
    is SDXL; family "tiny" stands for any other text width than SD 1.x (768) and SD 2.x (1024).
    """
    sample = pipe.unet.config.sample_size
    side = sample if isinstance(sample, int) else sample[0]
    family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else \
        _FAMILY_BY_TEXT_WIDTH.get(int(pipe.text_encoder.config.hidden_size), "tiny")
    return ModelSpec(
        name=name,
        repo_id=repo_id,
        description="model outside the registry; traits assumed (LCM boundary, two steps), override with traits",
        family=family,
        resolution=int(side) * int(pipe.vae_scale_factor),
        t_index_list=LCM_T_INDEX,
    )


def _with_traits(spec: ModelSpec, traits: Mapping[str, Any] | None) -> ModelSpec:
    return spec.with_traits(**dict(traits)) if traits else spec


def _use_taesd(spec: ModelSpec, taesd: bool | None) -> bool:
    return spec.use_taesd if taesd is None else taesd


# ----- loading per kind of source ---------------------------------------------------------------


def _load_registry(spec: ModelSpec, use_taesd: bool, dtype: torch.dtype, device: torch.device | str):
    if spec.local_builder:
        return _build_local(spec, use_taesd, dtype, device)
    folders = _registry_folders(spec, use_taesd, dtype)
    vae = load_taesd(folders[1], dtype) if use_taesd else None
    pipe = _from_folder(folders[0], dtype, vae=vae, variant=_variant(spec, dtype)).to(device)
    if spec.lora_repo:  # on the device, where the fusing matmuls are fast
        fuse_style_loras(pipe, [LocatedLora(StyleLora(spec.lora_repo), folders[-1], None)])
    return pipe


def _variant(spec: ModelSpec, dtype: torch.dtype) -> str | None:
    return "fp16" if spec.fp16_variant and dtype in (torch.float16, torch.bfloat16) else None


def _registry_folders(spec: ModelSpec, use_taesd: bool, dtype: torch.dtype) -> list[str]:
    """Local folders of a hub registry model: its pipeline, then TAESD where used, then its LoRA if it has one."""
    if spec.lora_repo:
        require_peft(spec.name, spec.lora_repo)
    wanted = [HubFiles(spec.repo_id, "the pipeline", skip_vae=use_taesd, variant=_variant(spec, dtype),
                       safetensors=spec.safetensors)]
    if use_taesd:
        wanted.append(_taesd_files(spec.taesd_repo))
    if spec.lora_repo:
        wanted.append(HubFiles(spec.lora_repo, "its LoRA", LORA_FILES))
    return fetch(wanted, f"model '{spec.name}'")


def _load_other(source: Source, use_taesd: bool, dtype: torch.dtype, config: str | None):
    folder, taesd_folder = _other_folders(source, use_taesd, config)
    vae = load_taesd(taesd_folder, dtype) if taesd_folder is not None else None
    if source.kind == "single_file":
        return _from_single_file(source.location, dtype, vae=vae, config_folder=folder)
    return _from_folder(folder, dtype, vae=vae, variant=None)


def _other_folders(source: Source, use_taesd: bool, config: str | None) -> tuple[str, str | None]:
    """Local folders of a model outside the registry: its pipeline (a single file's base configuration), and
    TAESD where used (None where not)."""
    subject = f"model '{source.location}'"
    config_folder = _config_folder(config)
    if source.kind == "hub":
        folder = fetch([HubFiles(source.location, "the pipeline", skip_vae=use_taesd)], subject)[0]
    elif source.kind == "single_file" and config_folder is None:
        base = config or _base_config_repo(source.location)
        folder = fetch([HubFiles(base, "the configuration of its base model", CONFIG_FILES,
                                 instead="config= a local diffusers folder of the same architecture")], subject)[0]
    else:
        folder = config_folder if source.kind == "single_file" else source.location
    # Which TAESD fits follows from the pipeline's class, so it is fetched once that is known.
    taesd_repo = TAESDXL_REPO if _is_sdxl(folder) else TAESD_REPO
    return folder, fetch([_taesd_files(taesd_repo)], subject)[0] if use_taesd else None


def _is_sdxl(folder: str) -> bool:
    """Whether the diffusers pipeline in `folder` is an SDXL one, as its model_index.json names its class."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    with unreadable_model(folder):
        class_name = json.loads(index.read_text()).get("_class_name", "")
    return isinstance(class_name, str) and class_name.startswith("StableDiffusionXL")


def _config_folder(config: str | None) -> str | None:
    """A single file's configuration given as a local folder; None for a hub id or no config."""
    if config is None:
        return None
    path = Path(config).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(config):
        raise ModelPathNotFoundError(f"config folder {config} does not exist")
    return None


def _taesd_files(repo: str) -> HubFiles:
    return HubFiles(repo, "TAESD, replacing its VAE", TAESD_FILES, instead="--no-taesd (taesd=False) to keep the model's own VAE")


def _build_local(spec: ModelSpec, use_taesd: bool, dtype: torch.dtype, device: torch.device | str):
    from .architectures import cast

    module_name, _, function = str(spec.local_builder).partition(":")
    pipe = getattr(importlib.import_module(module_name), function)(seed=0, full_vae=not use_taesd)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            cast(module, dtype, device)
    return pipe


def _require_registry(source: Source) -> None:
    if source.kind != "registry":
        raise UserError(f"random weights need a registry model name ({', '.join(REGISTRY)}); got {source.location!r}")


def _load_random(source: Source, taesd: bool | None, dtype: torch.dtype, device, traits) -> LoadedModel:
    """Seeded random weights of a registry model's architecture; its LoRA is left out (nothing to adapt)."""
    _require_registry(source)
    spec = _with_traits(REGISTRY[source.location], traits)
    if spec.local_builder:
        pipe, note = _build_local(spec, _use_taesd(spec, taesd), dtype, device), "random weights"
    else:
        from .architectures import build_random_pipeline, random_weights_note

        pipe = build_random_pipeline(spec, taesd=_use_taesd(spec, taesd), dtype=dtype, device=device)
        note = random_weights_note(spec.name)
    spec = spec.with_traits(description=f"{spec.description} [{note}]", lora_repo=None,
                            use_taesd=_use_taesd(spec, taesd))
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe=pipe, spec=spec)


# ----- diffusers calls on local files -------------------------------------------------------------


def _dtype_keyword() -> str:
    """diffusers renamed from_pretrained's torch_dtype to dtype; the old name warns where both exist."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _loading_options(dtype: torch.dtype, replace_vae: bool, sdxl: bool) -> dict[str, Any]:
    """Local files only, the wanted dtype, no safety checker (SD; SDXL has none); no VAE when TAESD replaces it."""
    options: dict[str, Any] = {"local_files_only": True, _dtype_keyword(): dtype}
    if not sdxl:
        options |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return options | ({"vae": None} if replace_vae else {})


def _with_vae(pipe: Any, vae: Any) -> Any:
    """Put TAESD in after loading: passed at load time, diffusers would warn that it is no AutoencoderKL."""
    if vae is not None:
        pipe.register_modules(vae=vae)
    return pipe


def _pipeline_class(sdxl: bool) -> Any:
    """diffusers' SDXL or SD pipeline class."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline


def _from_folder(folder: str, dtype: torch.dtype, *, vae: Any, variant: str | None) -> StableDiffusionPipeline:
    with unreadable_model(folder):
        sdxl = _is_sdxl(folder)
        options = _loading_options(dtype, replace_vae=vae is not None, sdxl=sdxl)
        return _with_vae(_pipeline_class(sdxl).from_pretrained(folder, variant=variant, **options), vae)


def _from_single_file(path: str, dtype: torch.dtype, *, vae: Any, config_folder: str) -> StableDiffusionPipeline:
    with unreadable_model(path):
        sdxl = _is_sdxl(config_folder)  # the base model's folder says which pipeline the file belongs to
        options = _loading_options(dtype, replace_vae=vae is not None, sdxl=sdxl)
        return _with_vae(_pipeline_class(sdxl).from_single_file(path, config=config_folder, **options), vae)


def _base_config_repo(path: str) -> str:
    """The base model repo whose configuration diffusers itself would read this checkpoint with."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    with unreadable_model(path):
        checkpoint = load_single_file_checkpoint(path, local_files_only=True)
        return str(fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"])


def load_taesd(folder: str, dtype: torch.dtype) -> Any:
    """TAESD (AutoencoderTiny) from a local folder."""
    from diffusers import AutoencoderTiny

    with unreadable_model(folder):
        return AutoencoderTiny.from_pretrained(folder, local_files_only=True, **{_dtype_keyword(): dtype})


def require_peft(model: str, repo: str) -> None:
    """diffusers fuses LoRAs through peft, an optional dependency."""
    from diffusers.utils import is_peft_available

    if not is_peft_available():
        raise UserError(f"model '{model}' fuses the LoRA {repo}, which needs the peft package: pip install peft")


@contextmanager
def unreadable_model(where: str, expected: str = "a Stable Diffusion 1.x/2.x or SDXL model") -> Iterator[None]:
    """Local files that cannot be read as the expected model become one-line UserErrors."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        yield
    except UserError:
        raise
    except (SingleFileComponentError, ValueError, KeyError, OSError, RuntimeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"could not load {where} as {expected}: {first_line}") from exc
