"""The depth estimator behind control_preprocess "depth": Depth Anything V2, through transformers.

It turns camera frames into the depth pictures a depth ControlNet expects (depth.py runs it); its relative
output is what MiDaS gave the depth ControlNets' training pictures. Small (25 M parameters: a DINOv2 ViT-S
with a DPT head) is the default because it runs on every frame beside the UNet; Base (98 M) and Large
(335 M) see finer depth at a higher cost per frame, and their weights are licensed for non-commercial use
only (CC-BY-NC-4.0; Small's are Apache-2.0). Any Depth Anything folder or hub id works too. Random weights
(tests, benchmarks) build the chosen size's architecture, or a tiny one for the tiny model, without a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .architectures import _seeded, cast
from .hub import HubFiles, fetch, folder_or_hub_id
from .loading import unreadable_model
from .registry import REGISTRY

DEPTH_ESTIMATOR_FILES = ("config.json", "model.safetensors")
_INSTEAD = ("--control-preprocess none with a depth picture as the input (a depth camera's feed, a render)",
            "--model tiny for an offline check with a random-weight estimator (meaningless pictures)")


@dataclass(frozen=True)
class DepthSize:
    """One published size of Depth Anything V2: its hub id, its architecture, and its weights' licence."""

    name: str
    repo: str
    hidden: int  # the DINOv2 backbone's width
    layers: int
    heads: int
    out_indices: tuple[int, ...]  # the backbone layers the DPT head reads
    neck: tuple[int, ...]
    fusion: int
    licence: str


DEPTH_SIZES: dict[str, DepthSize] = {
    size.name: size
    for size in (
        DepthSize("small", "depth-anything/Depth-Anything-V2-Small-hf", 384, 12, 6, (3, 6, 9, 12),
                  (48, 96, 192, 384), 64, "Apache-2.0"),
        DepthSize("base", "depth-anything/Depth-Anything-V2-Base-hf", 768, 12, 12, (3, 6, 9, 12),
                  (96, 192, 384, 768), 128, "CC-BY-NC-4.0"),
        DepthSize("large", "depth-anything/Depth-Anything-V2-Large-hf", 1024, 24, 16, (5, 12, 18, 24),
                  (256, 512, 1024, 1024), 256, "CC-BY-NC-4.0"),
    )
}
DEFAULT_DEPTH_ESTIMATOR = "small"
DEPTH_ESTIMATOR_REPO = DEPTH_SIZES[DEFAULT_DEPTH_ESTIMATOR].repo


def depth_anything_config(tiny: bool = False, size: str = DEFAULT_DEPTH_ESTIMATOR) -> Any:
    """A published size's architecture (as in its DepthSize), or a tiny one of its kind."""
    from transformers import DepthAnythingConfig, Dinov2Config

    if tiny:
        backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                                image_size=70, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                                   neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=4)
    chosen = DEPTH_SIZES[size]
    backbone = Dinov2Config(hidden_size=chosen.hidden, num_hidden_layers=chosen.layers,
                            num_attention_heads=chosen.heads, intermediate_size=4 * chosen.hidden, image_size=518,
                            patch_size=14, out_indices=list(chosen.out_indices), reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=chosen.hidden,
                               neck_hidden_sizes=list(chosen.neck), fusion_hidden_size=chosen.fusion,
                               head_hidden_size=32)


def _folder(ref: str) -> str | None:
    """The folder `ref` names, None for a size or a hub id; a clear error for anything else (before loading)."""
    if ref in DEPTH_SIZES:
        return None
    return folder_or_hub_id(ref, "depth estimator", "a transformers depth estimator",
                            f"a size ({', '.join(DEPTH_SIZES)}), a Depth Anything folder",
                            "depth-anything/Depth-Anything-V2-Base-hf")


def _tiny_model(model: str) -> bool:
    spec = REGISTRY.get(model)
    return spec is not None and spec.family == "tiny"


def prefetch_depth_estimator(model: str, *, random_weights: bool = False,
                             estimator: str = DEFAULT_DEPTH_ESTIMATOR) -> str | None:
    """Before the model loads: the local folder of `estimator` (a size, a folder or a hub id; downloading it),
    so a missing one is named at once; None where random weights stand in for it."""
    folder = _folder(estimator)
    if (random_weights or _tiny_model(model)) and estimator in DEPTH_SIZES:
        return None
    if folder is not None:
        return folder
    repo = DEPTH_SIZES[estimator].repo if estimator in DEPTH_SIZES else estimator
    files = HubFiles(repo, "the depth estimator", DEPTH_ESTIMATOR_FILES)
    return fetch([files], "depth estimator", _INSTEAD)[0]


def load_depth_estimator(model: str, *, dtype: torch.dtype, device: torch.device | str,
                         random_weights: bool = False, folder: str | None = None,
                         estimator: str = DEFAULT_DEPTH_ESTIMATOR) -> torch.nn.Module:
    """The depth estimator for a stream of `model`: a size (random weights of its architecture where the model
    has random weights), a folder or a hub id; folder: where prefetch_depth_estimator found it."""
    _folder(estimator)
    if (random_weights or _tiny_model(model)) and estimator in DEPTH_SIZES:
        return cast(random_depth_estimator(tiny=_tiny_model(model), size=estimator), dtype, device)
    from transformers import DepthAnythingForDepthEstimation

    folder = folder or prefetch_depth_estimator(model, estimator=estimator)
    with unreadable_model(folder, "a Depth Anything depth estimator"):
        module = DepthAnythingForDepthEstimation.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return cast(module, dtype, device)


def random_depth_estimator(tiny: bool = False, seed: int = 2, size: str = DEFAULT_DEPTH_ESTIMATOR) -> torch.nn.Module:
    """A Depth Anything V2 size's architecture (or a tiny one) with seeded random weights, on the CPU.

    transformers initialises its convolutions so small that a random estimate is flat to 1e-8 (a black
    depth picture whatever the frame); variance-preserving convolutions give estimates of a trained model's
    scale, so the frame does reach the depth picture (tests can see it).
    """
    from transformers import DepthAnythingForDepthEstimation

    with _seeded(torch.device("cpu"), seed):
        module = DepthAnythingForDepthEstimation(depth_anything_config(tiny, size))
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return module.eval()
