"""The depth estimator behind control_preprocess "depth": Depth Anything V2 Small, through transformers.

It turns camera frames into the depth pictures a depth ControlNet expects (depth.py runs it). Small (25 M
parameters: a DINOv2 ViT-S with a DPT head) because it runs on every frame beside the UNet; its relative
output is what MiDaS gave the depth ControlNets' training pictures. Random weights (tests, benchmarks) build
its architecture, or a tiny one for the tiny model, without a download.
"""

from __future__ import annotations

from typing import Any

import torch

from .architectures import _seeded, cast
from .hub import HubFiles, fetch
from .loading import unreadable_model
from .registry import REGISTRY

DEPTH_ESTIMATOR_REPO = "depth-anything/Depth-Anything-V2-Small-hf"
DEPTH_ESTIMATOR_FILES = ("config.json", "model.safetensors")
_INSTEAD = ("--control-preprocess none with a depth picture as the input (a depth camera's feed, a render)",
            "--model tiny for an offline check with a random-weight estimator (meaningless pictures)")


def depth_anything_config(tiny: bool = False) -> Any:
    """Depth Anything V2 Small's architecture (as published with DEPTH_ESTIMATOR_REPO), or a tiny one of its kind."""
    from transformers import DepthAnythingConfig, Dinov2Config

    if tiny:
        backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                                image_size=70, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                                   neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=4)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                            patch_size=14, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                               neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)


def _tiny_model(model: str) -> bool:
    spec = REGISTRY.get(model)
    return spec is not None and spec.family == "tiny"


def prefetch_depth_estimator(model: str, *, random_weights: bool = False) -> str | None:
    """Before the model loads: the estimator's local folder (downloading it), so a missing one is named at
    once; None where random weights stand in for it."""
    if random_weights or _tiny_model(model):
        return None
    files = HubFiles(DEPTH_ESTIMATOR_REPO, "the depth estimator", DEPTH_ESTIMATOR_FILES)
    return fetch([files], "depth estimator", _INSTEAD)[0]


def load_depth_estimator(model: str, *, dtype: torch.dtype, device: torch.device | str,
                         random_weights: bool = False, folder: str | None = None) -> torch.nn.Module:
    """The depth estimator for a stream of `model`; folder: where prefetch_depth_estimator found it."""
    if random_weights or _tiny_model(model):
        return cast(random_depth_estimator(tiny=_tiny_model(model)), dtype, device)
    from transformers import DepthAnythingForDepthEstimation

    folder = folder or prefetch_depth_estimator(model)
    with unreadable_model(folder, "a Depth Anything depth estimator"):
        module = DepthAnythingForDepthEstimation.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return cast(module, dtype, device)


def random_depth_estimator(tiny: bool = False, seed: int = 2) -> torch.nn.Module:
    """Depth Anything V2 Small's architecture (or a tiny one) with seeded random weights, on the CPU.

    transformers initialises its convolutions so small that a random estimate is flat to 1e-8 (a black
    depth picture whatever the frame); variance-preserving convolutions give estimates of a trained model's
    scale, so the frame does reach the depth picture (tests can see it).
    """
    from transformers import DepthAnythingForDepthEstimation

    with _seeded(torch.device("cpu"), seed):
        module = DepthAnythingForDepthEstimation(depth_anything_config(tiny))
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return module.eval()
