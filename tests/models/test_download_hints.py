"""The download hint of a missing pipeline names the files a load fetches, not the whole repository.

Each repository is written out as its file listing (from the hub's trees: every format and variant the repository
holds); the hint's --include patterns are matched against it as huggingface_hub matches them, and held to what
diffusers' own download chooses for the same request, run on that listing with the hub calls stood in for.
"""

from __future__ import annotations

import json
import re
import shlex
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.utils import filter_repo_objects

from streamdiff.models import hub, loading
from streamdiff.models.hub import HubFiles, unavailable_message
from streamdiff.models.loading import load_model

TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")


def _component(folder: str, stem: str, variants: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[str]:
    """A component folder: config.json, its weights in each variant ("" for none) and any other files."""
    return [f"{folder}/config.json", *(f"{folder}/{stem}{v}" for v in variants), *(f"{folder}/{x}" for x in extra)]


def _tokenizer(folder: str = "tokenizer") -> list[str]:
    return [f"{folder}/{name}" for name in TOKENIZER]


SAFE = (".safetensors", ".fp16.safetensors")
SD15 = [  # stable-diffusion-v1-5/stable-diffusion-v1-5
    ".gitattributes", "README.md", "model_index.json", "v1-inference.yaml", "v1-5-pruned.ckpt",
    "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.ckpt", "v1-5-pruned-emaonly.safetensors",
    "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json", *_tokenizer(),
    *_component("safety_checker", "model", SAFE, ("pytorch_model.bin", "pytorch_model.fp16.bin")),
    *_component("text_encoder", "model", SAFE, ("pytorch_model.bin", "pytorch_model.fp16.bin")),
    *_component("unet", "diffusion_pytorch_model",
                (*SAFE, ".bin", ".fp16.bin", ".non_ema.bin", ".non_ema.safetensors")),
    *_component("vae", "diffusion_pytorch_model", (*SAFE, ".bin", ".fp16.bin")),
]
SD_TURBO = [  # stabilityai/sd-turbo
    ".gitattributes", "LICENSE.md", "README.md", "model_index.json", "output.jpg", "sd_turbo.safetensors",
    "scheduler/scheduler_config.json", *_tokenizer(), *_component("text_encoder", "model", SAFE),
    *_component("unet", "diffusion_pytorch_model", SAFE), *_component("vae", "diffusion_pytorch_model", SAFE),
]
SDXL_TURBO = [  # stabilityai/sdxl-turbo
    ".gitattributes", "LICENSE.md", "README.md", "model_index.json", "output_tile.jpg", "sd_xl_turbo_1.0.safetensors",
    "sd_xl_turbo_1.0_fp16.safetensors", "scheduler/scheduler_config.json", *_tokenizer(), *_tokenizer("tokenizer_2"),
    *_component("text_encoder", "model", SAFE), *_component("text_encoder_2", "model", SAFE),
    *_component("unet", "diffusion_pytorch_model", SAFE), *_component("vae", "diffusion_pytorch_model", SAFE),
]
ONNX = ("model.onnx", "openvino_model.bin", "openvino_model.xml")
SDXL_BASE = [  # stabilityai/stable-diffusion-xl-base-1.0
    ".gitattributes", "01.png", "LICENSE.md", "README.md", "comparison.png", "model_index.json", "pipeline.png",
    "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors", "sd_xl_offset_example-lora_1.0.safetensors",
    "scheduler/scheduler_config.json", *_tokenizer(), *_tokenizer("tokenizer_2"),
    *_component("text_encoder", "model", SAFE, ("flax_model.msgpack", *ONNX)),
    *_component("text_encoder_2", "model", SAFE, ("flax_model.msgpack", "model.onnx_data", *ONNX)),
    *_component("unet", "diffusion_pytorch_model", SAFE, ("diffusion_flax_model.msgpack", "model.onnx_data", *ONNX)),
    *_component("vae", "diffusion_pytorch_model", SAFE, ("diffusion_flax_model.msgpack",)),
    *_component("vae_1_0", "diffusion_pytorch_model", SAFE),
    *_component("vae_decoder", "model", (), ONNX), *_component("vae_encoder", "model", (), ONNX),
]
SD_INDEX = {"_class_name": "StableDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}
SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
              "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
              "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}

CASES = {  # model, dtype, TAESD, listing, model_index.json, the weights a load reads
    "sd15-lcm float32": ("sd15-lcm", torch.float32, True, SD15, SD_INDEX,
                         {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"}),
    "sd15-lcm float16": ("sd15-lcm", torch.float16, True, SD15, SD_INDEX,
                         {"text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"}),
    "sd-turbo, its own VAE": ("sd-turbo", torch.float16, False, SD_TURBO, {**SD_INDEX, "safety_checker": [None, None],
                                                                           "feature_extractor": [None, None]},
                              {"text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                               "vae/diffusion_pytorch_model.fp16.safetensors"}),
    "sdxl-turbo float16": ("sdxl-turbo", torch.float16, True, SDXL_TURBO, SDXL_INDEX,
                           {"text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                            "unet/diffusion_pytorch_model.fp16.safetensors"}),
    # SDXL 1.0 base: diffusers' download also takes the weights of vae_1_0, a folder model_index.json does not name.
    "sdxl-lcm float16": ("sdxl-lcm", torch.float16, True, SDXL_BASE, SDXL_INDEX,
                         {"text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                          "unet/diffusion_pytorch_model.fp16.safetensors",
                          "vae_1_0/diffusion_pytorch_model.fp16.safetensors"}),
    "sdxl-lcm float32, its own VAE": ("sdxl-lcm", torch.float32, False, SDXL_BASE, SDXL_INDEX,
                                      {"text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                                       "unet/diffusion_pytorch_model.safetensors",
                                       "vae/diffusion_pytorch_model.safetensors",
                                       "vae_1_0/diffusion_pytorch_model.safetensors"}),
}


class _Asked(Exception):
    """Raised by the stand-ins once the request is known, before anything would be fetched."""


def _wanted_pipeline(monkeypatch, model: str, dtype: torch.dtype, taesd: bool) -> HubFiles:
    """The HubFiles of the pipeline that load_model asks fetch for."""
    asked: list[HubFiles] = []

    def fetch(wanted, subject, *args):
        asked.extend(wanted)
        raise _Asked

    monkeypatch.setattr(loading, "fetch", fetch)
    with pytest.raises(_Asked):
        load_model(model, dtype=dtype, device="cpu", taesd=taesd)
    return asked[0]


def _hint(files: HubFiles) -> dict[str, list[str]]:
    """The --include and --exclude patterns of the repo's `hf download` command in the offline message."""
    message = unavailable_message("model", [(files, "offline")])
    command = re.search(rf"`(hf download {re.escape(files.repo)}[^`]*)`", message)
    assert command, message
    words = shlex.split(command[1])[3:]
    patterns: dict[str, list[str]] = {"--include": [], "--exclude": []}
    for option, pattern in zip(words[::2], words[1::2]):
        patterns[option].append(pattern)
    return patterns


def _named(files: HubFiles, listing: list[str]) -> set[str]:
    """The files of `listing` that the hint's command downloads, matched as huggingface_hub matches them."""
    hint = _hint(files)
    return set(filter_repo_objects(listing, allow_patterns=hint["--include"], ignore_patterns=hint["--exclude"]))


def _diffusers_choice(monkeypatch, tmp_path, files: HubFiles, listing: list[str], index: dict) -> set[str]:
    """The files of `listing` that diffusers' download takes for `files` (hub._fetch_one's own call), with the
    hub's answers (the listing, model_index.json) stood in for and the download itself caught."""
    from diffusers.pipelines import pipeline_utils

    (tmp_path / "model_index.json").write_text(json.dumps(index))
    request: dict = {}

    def snapshot_download(repo, **kwargs):
        request.update(kwargs)
        raise _Asked

    siblings = [SimpleNamespace(rfilename=name) for name in listing]
    monkeypatch.setattr(pipeline_utils, "_resolve_revision", lambda *args, **kwargs: None)
    monkeypatch.setattr(pipeline_utils, "model_info", lambda *args, **kwargs: SimpleNamespace(siblings=siblings))
    monkeypatch.setattr(pipeline_utils, "hf_hub_download", lambda *args, **kwargs: str(tmp_path / "model_index.json"))
    monkeypatch.setattr(pipeline_utils, "snapshot_download", snapshot_download)
    with pytest.raises(_Asked):
        hub._fetch_one(files)
    return set(filter_repo_objects(listing, allow_patterns=request["allow_patterns"],
                                   ignore_patterns=request["ignore_patterns"]))


@pytest.mark.parametrize("case", CASES)
def test_a_missing_pipelines_hint_names_the_files_diffusers_fetches(monkeypatch, tmp_path, case):
    model, dtype, taesd, listing, index, weights = CASES[case]
    files = _wanted_pipeline(monkeypatch, model, dtype, taesd)
    named = _named(files, listing)
    assert {name for name in named if name.endswith(".safetensors")} == weights
    assert {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "unet/config.json"} <= named
    assert not any(name.endswith((".ckpt", ".bin", ".onnx", ".msgpack")) for name in named)
    assert ("vae/config.json" in named) is not taesd and not any(n.startswith("safety_checker/") for n in named)
    # Everything diffusers' download expects (offline, huggingface_hub refuses a snapshot that misses any of it);
    # beyond that, only the configs of folders model_index.json does not name (a few kB).
    fetched = _diffusers_choice(monkeypatch, tmp_path, files, listing, index)
    assert fetched <= named and all(name.endswith("/config.json") for name in named - fetched)


@pytest.mark.parametrize("model", ["sdxs-512", "tiny-sd"])
def test_a_pipeline_of_unstated_layout_keeps_the_whole_repo_hint(monkeypatch, model):
    # Whether its weights are .safetensors or .bin (diffusers takes whichever every component has) is not stated.
    files = _wanted_pipeline(monkeypatch, model, torch.float32, True)
    assert f"`hf download {files.repo}`" in unavailable_message("model", [(files, "offline")])


def test_a_hub_id_outside_the_registry_keeps_the_whole_repo_hint(monkeypatch):
    files = _wanted_pipeline(monkeypatch, "someone/some-pipeline", torch.float16, True)
    assert not files.safetensors and _hint(files) == {"--include": [], "--exclude": []}
