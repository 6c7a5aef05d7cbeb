"""`streamdiff models`: the registry, and what of it (and of other diffusers models) is already cached."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .registry import DEFAULT_MODEL, REGISTRY, ModelSpec

LOCAL = "local"  # built on the spot, nothing to cache


@dataclass(frozen=True)
class CachedRepo:
    """One model repo of the huggingface_hub cache."""

    repo_id: str
    size_on_disk: int
    is_pipeline: bool  # a revision holds model_index.json and UNet weights


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


def register(subparsers: Any) -> None:
    """Add the `models` subcommand to the CLI."""
    parser = subparsers.add_parser(
        "models", help="list the named models and what is already in the local cache",
        description="List the model registry and which models are already in the local Hugging Face cache.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--cache-dir", default=None, help="hub cache to inspect (default: huggingface_hub's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir or _default_cache_dir()
    repos = cached_repos(cache_dir)
    statuses = [model_status(spec, repos) for spec in REGISTRY.values()]
    others = sorted((r for r in repos.values() if r.is_pipeline and r.repo_id not in _registry_repos()),
                    key=lambda r: r.repo_id)
    text = as_json(cache_dir, statuses, others) if args.json else as_table(cache_dir, statuses, others)
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
    return {
        repo.repo_id: CachedRepo(repo.repo_id, repo.size_on_disk, any(_is_pipeline(rev) for rev in repo.revisions))
        for repo in info.repos
        if repo.repo_type == "model"
    }


def _is_pipeline(revision: Any) -> bool:
    names = {f.file_path.relative_to(revision.snapshot_path).as_posix() for f in revision.files}
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


def as_table(cache_dir: str, statuses: list[ModelStatus], others: list[CachedRepo]) -> str:
    header = ("NAME", "REPO", "SIZE", "STEPS", "TAESD", "CACHED", "DESCRIPTION")
    rows = [header] + [
        (s.name + (" *" if s.default else ""), s.repo_id or "-", f"{s.resolution}px", str(s.steps),
         "yes" if s.taesd else "no", _cached_text(s), s.description)
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines += ["", f"* default model. Hub cache: {cache_dir}"]
    if others:
        lines += ["", "Other diffusers models in the cache (load them by hub id):"]
        lines += [f"  {r.repo_id}  ({_size(r.size_on_disk)})" for r in others]
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _cached_text(status: ModelStatus) -> str:
    if status.cached == "partial":
        return f"partial (missing {', '.join(status.missing)})"
    return "built locally" if status.cached == LOCAL else status.cached


def as_json(cache_dir: str, statuses: list[ModelStatus], others: list[CachedRepo]) -> str:
    document = {
        "cache_dir": cache_dir,
        "default_model": DEFAULT_MODEL,
        "models": [asdict(s) for s in statuses],
        "other_cached_pipelines": [{"repo_id": r.repo_id, "size_on_disk": r.size_on_disk} for r in others],
    }
    return json.dumps(document, indent=2)
