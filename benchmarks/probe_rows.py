"""What the probes share: a row printed as it is measured, and all rows saved with the machine they ran on."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def collect(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each printed as one JSON line once measured (a long run shows its progress)."""
    kept = []
    for row in rows:
        print(json.dumps(row), flush=True)
        kept.append(row)
    return kept


def save(out: Path, name: str, rows: list[dict[str, Any]], device: str) -> None:
    """out/NAME: {"environment": torch and the device's name, "rows": rows}."""
    import torch

    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
