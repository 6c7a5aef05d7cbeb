"""`streamdiff models`: the registry and the models stream options fetch (ControlNets, IP-Adapters, the depth
estimator), and what of them (and of other diffusers models) is already cached."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .architectures import UNET_CONFIGS
from .controlnets import CONTROL_KINDS, CONTROLNET_FILES, takes_controlnet
from .depth_estimators import DEFAULT_DEPTH_ESTIMATOR, DEPTH_ESTIMATOR_FILES, DEPTH_SIZES
from .ip_adapters import DEFAULT_IP_ADAPTER, IP_ADAPTER_KINDS, IP_ADAPTER_REPO, hub_files
from .registry import DEFAULT_MODEL, REGISTRY, ModelSpec

LOCAL = "local"  # built on the spot, nothing to cache


@dataclass(frozen=True)
class CachedRepo:
    """One model repo of the huggingface_hub cache."""

    repo_id: str
    size_on_disk: int
    is_pipeline: bool  # a revision holds model_index.json and UNet weights
    revisions: tuple[frozenset[str], ...] = ()  # the files of each cached revision, relative to its snapshot


@dataclass(frozen=True)
class ModelStatus:
    """One registry entry with its cache state: "yes", "no", "partial" or "local"."""

    name: str
    repo_id: str
    description: str
    resolution: int
    steps: int
    t_index_list: tuple[int, ...]
    taesd: bool
    lora_repo: str | None
    default: bool
    cached: str
    missing: tuple[str, ...]


@dataclass(frozen=True)
class AuxiliaryStatus:
    """A model that a stream option downloads besides the pipeline, with its cache state: "yes", "no", "partial"."""

    path: str  # what is listed: the repo, or for one adapter of a repository holding many, repo/its weight file
    repo_id: str
    role: str  # "controlnet", "ip_adapter" or "depth_estimator"
    kind: str  # the --controlnet kind it serves ("canny", "depth"), or the --ip-adapter kind ("base", "plus")
    family: str | None  # the model family a ControlNet fits; None: any
    used_by: str  # the option that fetches it, e.g. "--controlnet canny with sd-turbo"
    cached: str
    missing: tuple[str, ...]  # its files that are not in the cache


def register(subparsers: Any) -> None:
    """Add the `models` subcommand to the CLI."""
    parser = subparsers.add_parser(
        "models", help="list the named models, ControlNets, IP-Adapters and depth estimators, and what is cached",
        description="List the model registry, the ControlNets, IP-Adapters and depth estimators that stream options "
                    "fetch, and which of them are already in the local Hugging Face cache.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--cache-dir", default=None, help="hub cache to inspect (default: huggingface_hub's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir or _default_cache_dir()
    repos = cached_repos(cache_dir)
    statuses = [model_status(spec, repos) for spec in REGISTRY.values()]
    auxiliaries = auxiliary_statuses(repos)
    others = sorted((r for r in repos.values() if r.is_pipeline and r.repo_id not in _registry_repos()),
                    key=lambda r: r.repo_id)
    text = (as_json if args.json else as_table)(cache_dir, statuses, others, auxiliaries)
    sys.stdout.write(text + "\n")
    return 0


def _default_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _registry_repos() -> set[str]:
    return {spec.repo_id for spec in REGISTRY.values() if spec.repo_id}


def cached_repos(cache_dir: str | Path) -> dict[str, CachedRepo]:
    """The model repos of a huggingface_hub cache; a missing or empty cache gives none."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return {}
    cached = {}
    for repo in info.repos:
        if repo.repo_type == "model":
            revisions = tuple(_files(rev) for rev in repo.revisions)
            cached[repo.repo_id] = CachedRepo(repo.repo_id, repo.size_on_disk,
                                              any(_is_pipeline(names) for names in revisions), revisions)
    return cached


def _files(revision: Any) -> frozenset[str]:
    return frozenset(f.file_path.relative_to(revision.snapshot_path).as_posix() for f in revision.files)


def _is_pipeline(names: frozenset[str]) -> bool:
    has_unet = any(n.startswith("unet/") and n.endswith((".safetensors", ".bin")) for n in names)
    return "model_index.json" in names and has_unet


def model_status(spec: ModelSpec, repos: dict[str, CachedRepo]) -> ModelStatus:
    """Whether every repo that loading `spec` needs (pipeline, TAESD, LoRA) is cached."""
    if spec.local_builder:
        cached, missing = LOCAL, ()
    else:
        missing = tuple(r for r in (spec.repo_id, *spec.auxiliary_repos()) if not _has(repos, r, r == spec.repo_id))
        cached = "no" if spec.repo_id in missing else ("partial" if missing else "yes")
    return ModelStatus(
        name=spec.name, repo_id=spec.repo_id, description=spec.description, resolution=spec.resolution,
        steps=spec.default_steps, t_index_list=spec.t_index_list, taesd=spec.use_taesd, lora_repo=spec.lora_repo,
        default=spec.name == DEFAULT_MODEL, cached=cached, missing=missing,
    )


def _has(repos: dict[str, CachedRepo], repo_id: str, pipeline: bool) -> bool:
    repo = repos.get(repo_id)
    return repo is not None and (repo.is_pipeline or not pipeline)


def auxiliary_statuses(repos: dict[str, CachedRepo]) -> list[AuxiliaryStatus]:
    """The published ControlNets of --controlnet KIND for each family, the IP-Adapters of --ip-adapter KIND for
    each family (one repository holds them all), then the depth estimator's sizes."""
    statuses = [
        _auxiliary(repos, repo, "controlnet", kind.name, family, f"--controlnet {kind.name} with {_users(family)}",
                   CONTROLNET_FILES)
        for kind in CONTROL_KINDS.values() for family, repo in kind.repos.items()
    ]
    for kind, families in IP_ADAPTER_KINDS.items():
        option = "--style-image, or --ip-adapter base" if kind == DEFAULT_IP_ADAPTER else f"--ip-adapter {kind}"
        for family, files in families.items():
            wanted = hub_files(files)
            statuses.append(_auxiliary(repos, IP_ADAPTER_REPO, "ip_adapter", kind, family,
                                       f"{option} with {_users(family, lambda config: True)}", wanted,
                                       path=f"{IP_ADAPTER_REPO}/{wanted[0]}"))
    for size in DEPTH_SIZES.values():
        option = "" if size.name == DEFAULT_DEPTH_ESTIMATOR else f" with --depth-estimator {size.name}"
        statuses.append(_auxiliary(repos, size.repo, "depth_estimator", "depth", None,
                                   f"--controlnet depth, or --control-preprocess depth{option} ({size.licence})",
                                   DEPTH_ESTIMATOR_FILES))
    return statuses


def _users(family: str, fits: Callable[[dict[str, Any]], bool] = takes_controlnet) -> str:
    """The registry models of `family` whose UNet `fits` (by default: a ControlNet can steer it), e.g. "sd-turbo"."""
    names = [name for name, spec in REGISTRY.items()
             if spec.family == family and name in UNET_CONFIGS and fits(UNET_CONFIGS[name])]
    return ", ".join(names) or f"{family} models"


def _auxiliary(repos: dict[str, CachedRepo], repo_id: str, role: str, kind: str, family: str | None,
               used_by: str, files: tuple[str, ...], path: str | None = None) -> AuxiliaryStatus:
    repo = repos.get(repo_id)
    revisions = repo.revisions if repo is not None else ()
    # The revision missing the fewest of the files a load fetches decides.
    missing = min((tuple(f for f in files if f not in names) for names in revisions), key=len, default=files)
    cached = "no" if missing == files else ("partial" if missing else "yes")
    return AuxiliaryStatus(path or repo_id, repo_id, role, kind, family, used_by, cached, missing)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows with every column but the last padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]


def as_table(cache_dir: str, statuses: list[ModelStatus], others: list[CachedRepo],
             auxiliaries: list[AuxiliaryStatus]) -> str:
    header = ("NAME", "REPO", "SIZE", "STEPS", "TAESD", "CACHED", "DESCRIPTION")
    rows = [header] + [
        (s.name + (" *" if s.default else ""), s.repo_id or "-", f"{s.resolution}px", str(s.steps),
         "yes" if s.taesd else "no", _cached_text(s), s.description)
        for s in statuses
    ]
    lines = _aligned(rows)
    lines += ["", f"* default model. Hub cache: {cache_dir}"]
    if auxiliaries:
        lines += ["", "ControlNets, IP-Adapters and the depth estimators, fetched when an option asks for them:"]
        aux_rows = [("REPO", "CACHED", "USED BY")] + [(a.path, _cached_text(a), a.used_by) for a in auxiliaries]
        lines += ["  " + line for line in _aligned(aux_rows)]
    if others:
        lines += ["", "Other diffusers models in the cache (load them by hub id):"]
        lines += [f"  {r.repo_id}  ({_size(r.size_on_disk)})" for r in others]
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _cached_text(status: ModelStatus | AuxiliaryStatus) -> str:
    if status.cached == "partial":
        return f"partial (missing {', '.join(status.missing)})"
    return "built locally" if status.cached == LOCAL else status.cached


def as_json(cache_dir: str, statuses: list[ModelStatus], others: list[CachedRepo],
            auxiliaries: list[AuxiliaryStatus]) -> str:
    document = {
        "cache_dir": cache_dir,
        "default_model": DEFAULT_MODEL,
        "models": [asdict(s) for s in statuses],
        "auxiliary_models": [asdict(a) for a in auxiliaries],
        "other_cached_pipelines": [{"repo_id": r.repo_id, "size_on_disk": r.size_on_disk} for r in others],
    }
    return json.dumps(document, indent=2)
