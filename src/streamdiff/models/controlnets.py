"""ControlNets: which one a model takes, where its weights come from, and loading them.

A ControlNet is named by kind ("canny", "depth": the registry picks the published ControlNet of the
model's family), or given as a local diffusers folder or a hub id; several may steer one stream together.
Each must fit the UNet it steers: the same stages and text width, and a middle stage to feed (SDXS-512 and
tiny-sd have none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ControlPreprocess
from ..errors import UserError
from .architectures import _seeded, cast
from .depth_estimators import (
    DEFAULT_DEPTH_ESTIMATOR,
    load_depth_estimator,
    prefetch_depth_estimator,
)
from .hub import HubFiles, fetch, folder_or_hub_id
from .loading import _dtype_keyword, unreadable_model
from .registry import ModelSpec

CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
# Traits of a UNet that a ControlNet's residuals must match, stage by stage.
_MATCHING = ("block_out_channels", "cross_attention_dim", "in_channels", "addition_embed_type")


@dataclass(frozen=True)
class ControlKind:
    """A kind of control picture and the published ControlNet for it per model family."""

    name: str
    preprocess: ControlPreprocess  # what turns an input frame into the control picture; none: the frame itself
    repos: Mapping[str, str]  # family -> hub id


CONTROL_KINDS: dict[str, ControlKind] = {
    kind.name: kind
    for kind in (
        # The edges of each input frame (Canny, computed on the engine's device).
        ControlKind("canny", "canny",
                    {"sd21": "thibaud/controlnet-sd21-canny-diffusers", "sd15": "lllyasviel/control_v11p_sd15_canny",
                     "sdxl": "diffusers/controlnet-canny-sdxl-1.0"}),
        # Each input frame's depth, estimated on the engine's device (Depth Anything V2 Small; near is bright).
        ControlKind("depth", "depth",
                    {"sd21": "thibaud/controlnet-sd21-depth-diffusers", "sd15": "lllyasviel/control_v11f1p_sd15_depth",
                     "sdxl": "diffusers/controlnet-depth-sdxl-1.0"}),
    )
}


@dataclass
class LoadedControlNet:
    module: torch.nn.Module  # a diffusers ControlNetModel
    preprocess: ControlPreprocess  # the setting's, else the kind's own ("none" for a folder or hub id)
    estimator: torch.nn.Module | None = None  # the depth estimator, for preprocess "depth"


@dataclass
class LoadedControlNets:
    """Several ControlNets for one stream, in the order given, with one depth estimator for all that need it."""

    modules: tuple[torch.nn.Module, ...]
    preprocesses: tuple[ControlPreprocess, ...]
    names: tuple[str, ...]  # each one's label: its kind, or its folder's or hub repository's name
    estimator: torch.nn.Module | None = None


@dataclass(frozen=True)
class ControlFolders:
    """Where prefetch_controlnet found the ControlNet and the depth estimator; None: load_controlnet decides."""

    controlnet: str | None = None
    estimator: str | None = None


def takes_controlnet(unet_config: Mapping[str, Any]) -> bool:
    """Whether a UNet with this configuration has the middle stage a ControlNet feeds."""
    return unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None


def check_takes_controlnet(unet_config: Mapping[str, Any], model: str) -> None:
    """A UserError unless a UNet with this configuration can be steered by a ControlNet."""
    if not takes_controlnet(unet_config):
        raise UserError(f"model {model!r} has no middle stage for a ControlNet to feed; use a model that has "
                        "one, such as sd-turbo (SD 2.1) or sd15-lcm (SD 1.5)")


def preprocess_of(ref: str, setting: ControlPreprocess | None) -> ControlPreprocess:
    """How frames become the control picture for ControlNet `ref`: the setting, else the kind's own, else none."""
    if setting is not None:
        return setting
    kind = CONTROL_KINDS.get(ref)
    return kind.preprocess if kind is not None else "none"


Setting = ControlPreprocess | Sequence[ControlPreprocess] | None


def per_controlnet(refs: Sequence[str], setting: Setting) -> tuple[ControlPreprocess | None, ...]:
    """The control_preprocess setting of each ControlNet: one for all, one each, or None (each kind's own)."""
    if setting is None or isinstance(setting, str):
        return (setting,) * len(refs)
    if len(setting) != len(refs):
        raise UserError(f"control_preprocess gives {len(setting)} values for {len(refs)} ControlNet(s); give one, or "
                        "one per ControlNet")
    return tuple(setting)


def control_names(refs: Sequence[str]) -> tuple[str, ...]:
    """A short label per ControlNet (its kind, folder name or hub repository name), unique within the stream."""
    names: list[str] = []
    for i, ref in enumerate(refs):
        name = ref if ref in CONTROL_KINDS else Path(ref.rstrip("/")).name or ref
        names.append(f"{name} {i + 1}" if name in names else name)
    return tuple(names)


def _check_refs(refs: Sequence[str]) -> None:
    if not refs:
        raise UserError("expected at least one ControlNet")
    twice = sorted({ref for ref in refs if list(refs).count(ref) > 1})
    if twice:
        raise UserError(f"ControlNet {twice[0]!r} is given twice; give each once (its scale sets how strongly it "
                        "steers)")


def check_depth_estimator_use(refs: Sequence[str], preprocess: Setting, depth_estimator: str) -> None:
    """A UserError where a depth estimator other than the default is chosen and no ControlNet reads depth."""
    if depth_estimator == DEFAULT_DEPTH_ESTIMATOR:
        return
    if not refs or "depth" not in [preprocess_of(ref, how) for ref, how in zip(refs, per_controlnet(refs, preprocess))]:
        raise UserError("--depth-estimator serves a ControlNet that reads estimated depth: use it with "
                        "--controlnet depth or --control-preprocess depth")


def prefetch_controlnets(refs: Sequence[str], model: str, preprocess: Setting = None, *,
                         random_weights: bool = False,
                         depth_estimator: str = DEFAULT_DEPTH_ESTIMATOR) -> list[ControlFolders]:
    """prefetch_controlnet for each of several ControlNets steering one stream together (check_depth_estimator_use
    comes first, where a depth_estimator was chosen)."""
    _check_refs(refs)
    return [prefetch_controlnet(ref, model, how, random_weights=random_weights, depth_estimator=depth_estimator)
            for ref, how in zip(refs, per_controlnet(refs, preprocess))]


def load_controlnets(refs: Sequence[str], spec: ModelSpec, unet: torch.nn.Module, preprocess: Setting = None, *,
                     dtype: torch.dtype, device: torch.device | str, random_weights: bool = False,
                     folders: Sequence[ControlFolders] = (),
                     depth_estimator: str = DEFAULT_DEPTH_ESTIMATOR) -> LoadedControlNets:
    """load_controlnet for each ref in turn, sharing one depth estimator; random weights differ per ControlNet."""
    _check_refs(refs)
    folders = list(folders) or [ControlFolders()] * len(refs)
    modules: list[torch.nn.Module] = []
    kinds: list[ControlPreprocess] = []
    estimator: torch.nn.Module | None = None
    for i, (ref, how) in enumerate(zip(refs, per_controlnet(refs, preprocess))):
        loaded = load_controlnet(ref, spec, unet, how, dtype=dtype, device=device, random_weights=random_weights,
                                 folders=folders[i], estimator=estimator, seed=1 + i,
                                 depth_estimator=depth_estimator)
        modules.append(loaded.module)
        kinds.append(loaded.preprocess)
        estimator = loaded.estimator or estimator
    return LoadedControlNets(tuple(modules), tuple(kinds), control_names(refs), estimator)


def prefetch_controlnet(ref: str, model: str, preprocess: ControlPreprocess | None = None, *,
                        random_weights: bool = False, depth_estimator: str = DEFAULT_DEPTH_ESTIMATOR) -> ControlFolders:
    """Before the model loads: refuse a model without a middle stage, and fetch the ControlNet where it is known
    already (a folder, a hub id, or a kind for a registry model) and the depth estimator where the control
    picture is estimated depth, so that a missing one is named at once. preprocess: the setting, if any."""
    from .architectures import UNET_CONFIGS
    from .registry import REGISTRY

    if model in UNET_CONFIGS:
        check_takes_controlnet(UNET_CONFIGS[model], model)
    kind = CONTROL_KINDS.get(ref)
    spec = REGISTRY.get(model)
    if kind is None:
        folder = _locate(ref)
    elif random_weights or spec is None or spec.family == "tiny":
        folder = None
    else:
        folder = _kind_folder(kind, spec)
    estimator = None
    if preprocess_of(ref, preprocess) == "depth":
        estimator = prefetch_depth_estimator(model, random_weights=random_weights, estimator=depth_estimator)
    return ControlFolders(folder, estimator)


def load_controlnet(ref: str, spec: ModelSpec, unet: torch.nn.Module, preprocess: ControlPreprocess | None = None,
                    *, dtype: torch.dtype, device: torch.device | str, random_weights: bool = False,
                    folders: ControlFolders = ControlFolders(), estimator: torch.nn.Module | None = None,
                    seed: int = 1, depth_estimator: str = DEFAULT_DEPTH_ESTIMATOR) -> LoadedControlNet:
    """The ControlNet `ref` (a kind, a diffusers folder or a hub id) for the model of `spec` and `unet`, with the
    depth estimator (a size, folder or hub id: `depth_estimator`) if its control picture is estimated depth
    (`estimator`, if one is loaded already); preprocess: the setting, if any; seed: of the random weights a
    kind gets on a random-weight model."""
    check_takes_controlnet(unet.config, spec.name)
    how = preprocess_of(ref, preprocess)
    if how != "depth":
        estimator = None
    elif estimator is None:
        estimator = load_depth_estimator(spec.name, dtype=dtype, device=device, random_weights=random_weights,
                                         folder=folders.estimator, estimator=depth_estimator)
    kind = CONTROL_KINDS.get(ref)
    if kind is not None and (random_weights or spec.family == "tiny"):
        return LoadedControlNet(cast(random_controlnet(unet, seed), dtype, device), how, estimator)
    if kind is None:
        folder, source = folders.controlnet or _locate(ref), ref
    else:
        folder, source = folders.controlnet or _kind_folder(kind, spec), kind.repos[spec.family]
    module = _from_folder(folder, dtype)
    check_fits(module, unet, source)
    return LoadedControlNet(cast(module, dtype, device), how, estimator)


def _kind_folder(kind: ControlKind, spec: ModelSpec) -> str:
    repo = kind.repos.get(spec.family)
    if repo is None:
        raise UserError(f"no {kind.name} ControlNet is known for model {spec.name!r} (family {spec.family}); "
                        "give a ControlNet folder or hub id that fits it")
    return _fetch(repo, kind.name)


def _locate(ref: str) -> str:
    """The local folder of a ControlNet given as a folder or a hub id."""
    folder = folder_or_hub_id(ref, "ControlNet", "a diffusers ControlNet",
                              f"a kind ({', '.join(CONTROL_KINDS)}), a diffusers folder",
                              "thibaud/controlnet-sd21-canny-diffusers")
    return folder or _fetch(ref, ref)


def _fetch(repo: str, name: str) -> str:
    files = HubFiles(repo, "the ControlNet", CONTROLNET_FILES)
    instead = ("a local ControlNet folder (one with config.json)",
               "--model tiny for an offline check with a random-weight ControlNet (meaningless pictures)")
    return fetch([files], f"ControlNet '{name}'", instead)[0]


def _from_folder(folder: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import ControlNetModel

    with unreadable_model(folder, "a diffusers ControlNet"):
        return ControlNetModel.from_pretrained(folder, local_files_only=True, **{_dtype_keyword(): dtype})


def check_fits(controlnet: torch.nn.Module, unet: torch.nn.Module, source: str) -> None:
    """A UserError naming the first trait where the ControlNet's stages differ from the UNet's."""
    for name in _MATCHING:
        theirs, ours = controlnet.config.get(name), unet.config.get(name)
        if _plain(theirs) != _plain(ours):
            raise UserError(f"ControlNet {source} does not fit this model: its {name} is {_plain(theirs)}, the "
                            f"model's is {_plain(ours)} (a ControlNet of another Stable Diffusion version?)")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def random_controlnet(unet: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """A ControlNet of `unet`'s architecture with seeded random weights, created on the UNet's device.

    A trained ControlNet's zero convolutions (the control picture's way in and the residuals' ways out) start
    at zero and learn to matter; here they get random weights, and the picture's embedding keeps its
    variance, so that the control picture does reach the UNet (tests can see it).
    """
    from diffusers import ControlNetModel

    device = next(unet.parameters()).device
    with _seeded(device, seed):
        module = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        if device.type != "meta":
            for conv in [*module.controlnet_down_blocks, module.controlnet_mid_block]:
                conv.reset_parameters()  # PyTorch's default initialisation, as any other layer has
            for conv in module.controlnet_cond_embedding.modules():  # variance-preserving: the picture shows
                if isinstance(conv, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return module
