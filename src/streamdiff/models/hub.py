"""The Hugging Face hub side of loading: fetch every repo a model needs, or explain in one paragraph why not."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelPathNotFoundError, ModelUnavailableError, UserError


@dataclass(frozen=True)
class HubFiles:
    """Files of one hub repo that a load needs; patterns None means a diffusers pipeline's own choice."""

    repo: str
    role: str  # e.g. "the pipeline", "TAESD, replacing its VAE"
    patterns: tuple[str, ...] | None = None
    skip_vae: bool = False
    variant: str | None = None
    instead: str = ""  # an alternative that avoids this repo
    narrow: bool = False  # the repo holds far more than the patterns (h94/IP-Adapter): the download hint names them
    # A pipeline (patterns None) whose weight folders each hold one .safetensors file per variant: its download hint
    # names what diffusers fetches of it (pipeline_hint), not the whole repo with every variant and format.
    safetensors: bool = False


# What a model can be given as instead of a hub repo, offered when a repo cannot be fetched.
MODEL_ALTERNATIVES = ("a local diffusers folder (one with model_index.json)", "a single .safetensors file",
                      "--model tiny for an offline check of the pipeline (random weights, meaningless pictures)")


def folder_or_hub_id(ref: str, what: str, folder_kind: str, choices: str, example: str) -> str | None:
    """The folder `ref` names (it must hold config.json), or None for a hub id "owner/name"; a path that does not
    exist is a ModelPathNotFoundError and anything else a UserError naming `choices` (a ControlNet's or a depth
    estimator's ref: `what` names it in messages, `folder_kind` says what the folder should be)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a folder but not {folder_kind}: it has no config.json")
        return str(path)
    if ref.startswith((".", "~", "/")) or ref.count("/") > 1:
        raise ModelPathNotFoundError(f"{what} path {ref} does not exist")
    if ref.count("/") != 1:
        raise UserError(f"unknown {what} {ref!r}: give {choices} or a hub id such as {example}")
    return None


def fetch(wanted: Sequence[HubFiles], subject: str, alternatives: Sequence[str] = MODEL_ALTERNATIVES) -> list[str]:
    """Local folders of every wanted repo (downloading into the hub cache); all failures in one error that
    offers the missing repo's own alternative (where it alone is missing), then `alternatives`."""
    folders: list[str] = []
    failures: list[tuple[HubFiles, str]] = []
    last: BaseException | None = None
    for files in wanted:
        try:
            folders.append(_fetch_one(files))
        except Exception as exc:
            reason = failure_reason(exc)
            if reason is None:
                raise
            failures.append((files, reason))
            last = exc
    if failures:
        raise ModelUnavailableError(unavailable_message(subject, failures, alternatives)) from last
    return folders


def _fetch_one(files: HubFiles) -> str:
    if files.patterns is None:
        from diffusers import StableDiffusionPipeline

        skipped = dict.fromkeys(_skipped_components(files))
        with _quiet("diffusers.pipelines.pipeline_utils"):
            return str(StableDiffusionPipeline.download(files.repo, variant=files.variant, **skipped))
    from huggingface_hub import snapshot_download

    return snapshot_download(files.repo, allow_patterns=list(files.patterns))


def _skipped_components(files: HubFiles) -> tuple[str, ...]:
    """A pipeline's components passed at load time, which diffusers leaves out of its download: no safety checker
    (nor its feature extractor), no VAE where TAESD replaces it."""
    return ("safety_checker", "feature_extractor") + (("vae",) if files.skip_vae else ())


def pipeline_hint(files: HubFiles) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The include and exclude patterns of what _fetch_one's diffusers download takes of a pipeline repo whose
    weight folders each hold one .safetensors file (of files.variant where given): model_index.json, the scheduler
    and tokenizers, each folder's config and weights but the skipped components' (and a few configs more)."""
    weights = f".{files.variant}.safetensors" if files.variant else ".safetensors"
    include = ("model_index.json", "scheduler/*", "tokenizer*/*", "*/config.json", f"*/model{weights}",
               f"*/diffusion_pytorch_model{weights}")
    return include, tuple(f"{component}/*" for component in _skipped_components(files))


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Mute one library logger's warnings: a failed hub look-up is reported in full by fetch instead."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_network_error(exc: BaseException) -> bool:
    """Connection failures of any HTTP stack huggingface_hub may use (httpx, requests) or the OS."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "NetworkError", "TimeoutException", "ConnectTimeout", "ProxyError"}
    )


def failure_reason(exc: BaseException) -> str | None:
    """Why the hub could not provide a repo: "offline", "gated", "not_found", "unreachable"; None: no hub failure."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub

    chain = list(_exception_chain(exc))
    if any(isinstance(e, hub.OfflineModeIsEnabled) for e in chain):
        return "offline"
    if any(isinstance(e, hub.GatedRepoError) for e in chain):
        return "gated"
    if any(isinstance(e, (hub.RepositoryNotFoundError, hub.RevisionNotFoundError, hub.EntryNotFoundError))
           and not isinstance(e, hub.LocalEntryNotFoundError) for e in chain):
        return "not_found"
    if any(_is_network_error(e) or isinstance(e, (hub.LocalEntryNotFoundError, hub.HfHubHTTPError)) for e in chain):
        return "offline" if constants.HF_HUB_OFFLINE else "unreachable"
    return None


_REASONS = {
    "offline": "offline mode is on (HF_HUB_OFFLINE=1), so nothing can be downloaded",
    "unreachable": "the hub ({endpoint}) could not be reached",
    "not_found": "the hub has no such repository or file (check the spelling; private ones need `hf auth login`)",
    "gated": "the repository is gated: accept its terms on the hub, then log in with `hf auth login`",
}


def unavailable_message(subject: str, failures: Sequence[tuple[HubFiles, str]],
                        alternatives: Sequence[str] = MODEL_ALTERNATIVES) -> str:
    """One paragraph: what is missing, why, what to pass instead, how to download it beforehand."""
    from huggingface_hub import constants

    many = len(failures) > 1
    missing = _join([f"{files.repo} ({files.role})" for files, _ in failures])
    reasons = _join(sorted({_REASONS[reason] for _, reason in failures})).format(endpoint=constants.ENDPOINT)
    # A repo's own way round it (no TAESD, say) helps only where nothing else is missing too.
    own = failures[0][0].instead if len(failures) == 1 else ""
    instead = ([own] if own else []) + list(alternatives)
    downloads = _join([_download_command(files) for files, _ in failures])
    return (
        f"{subject} cannot be loaded: {missing} {'are' if many else 'is'} not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and {reasons}. Instead, pass {_join(instead, 'or')}. "
        f"To use {'them' if many else 'it'}, download {'them' if many else 'it'} once while online with "
        f"{downloads} (older huggingface_hub: `huggingface-cli download <repo>`)."
    )


def _download_command(files: HubFiles) -> str:
    """`hf download REPO`, naming the files a load fetches where the whole repo holds far more."""
    if files.patterns is None and files.safetensors:
        include, exclude = pipeline_hint(files)
    else:
        include, exclude = (files.patterns or ()) if files.narrow else (), ()
    options = [f" --include {p!r}" for p in include] + [f" --exclude {p!r}" for p in exclude]
    return f"`hf download {files.repo}{''.join(options)}`"


def _join(items: Sequence[str], word: str = "and") -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"
