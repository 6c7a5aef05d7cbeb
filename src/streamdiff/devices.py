"""Device and dtype choice, seeded generators and synchronisation: the one place for them."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit name must exist here."""
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but this machine has no usable CUDA GPU; use --device cpu")
    if device.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' was requested but Apple's Metal backend is not available here")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """Half precision on GPUs, float32 on the CPU (where half is slow or missing)."""
    if dtype is None:
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of float32, float16, bfloat16; got {dtype!r}") from None


def cpu_generator(seed: int) -> torch.Generator:
    """Random draws happen on the CPU so that one seed gives one stream on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
