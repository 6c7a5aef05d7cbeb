"""A short digest of a model's weights: which weights a stored artifact (a converted part) was made from."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def weights_digest(modules: Sequence[torch.nn.Module], samples: int = 1024) -> str:
    """A digest of the modules' weights from evenly spaced values of every tensor, exactly (no sums, whose
    last digits depend on the machine's reduction order)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(type(module).__name__.encode())
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().flatten()
            picked = flat[:: max(1, flat.numel() // samples)].to("cpu", torch.float32)
            digest.update(f"{name} {tuple(tensor.shape)} ".encode())
            digest.update(picked.numpy().tobytes())
    return digest.hexdigest()[:16]
