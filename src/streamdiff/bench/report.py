"""Benchmark output: a JSON document, a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

logger = logging.getLogger("streamdiff.bench")


def environment(device: torch.device) -> dict[str, Any]:
    """Device and library versions, recorded beside every number."""
    import diffusers
    import transformers

    from .. import __version__

    env: dict[str, Any] = {
        "streamdiff": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "device": str(device), "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per result: latency percentiles, FPS, energy, memory, skip rate, errors."""
    head = ("| case | median ms | p10 ms | p90 ms | ms/frame | FPS | J/frame | peak GPU MiB | skip | start s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [head]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['name']} | failed: {r['error']} |||||||||")
            continue
        lat = r["latency"]
        accel = r.get("accel") or {}
        start = accel.get("build_seconds")
        rows.append(
            f"| {r['name']} | {_fmt(lat['median_ms'])} | {_fmt(lat['p10_ms'])} | {_fmt(lat['p90_ms'])} | "
            f"{_fmt(r['ms_per_frame'])} | {_fmt(r['fps'], 1)} | {_fmt(r.get('joules_per_frame'), 3)} | "
            f"{_fmt(r.get('peak_gpu_memory_mb'), 0)} | {_fmt(r.get('skip_rate'))} | {_fmt(start, 1)} |"
        )
    return "\n".join(rows) + "\n"


def stages_table(results: Sequence[dict[str, Any]]) -> str:
    from .stages import STAGES

    with_stages = [r for r in results if r.get("stages_ms")]
    if not with_stages:
        return ""
    # A stage no case has (control, without a ControlNet) gets no column.
    shown = [s for s in STAGES if any(s in r["stages_ms"] for r in with_stages)]
    rows = ["| case | " + " | ".join(shown) + " | other | total |", "|---|" + "---:|" * (len(shown) + 2)]
    for r in with_stages:
        stages = r["stages_ms"]
        total = r["latency"]["median_ms"]
        other = total - sum(stages.values())
        rows.append(f"| {r['name']} | " + " | ".join(_fmt(stages.get(s), 3) for s in shown)
                    + f" | {_fmt(other, 3)} | {_fmt(total, 3)} |")
    return "\n".join(rows) + "\n"


def write_chart(path: Path, results: Sequence[dict[str, Any]], title: str) -> bool:
    """Horizontal bars of ms per frame (log scale), one per result; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no chart written (pip install matplotlib)")
        return False
    ok = [r for r in results if "error" not in r]
    if not ok:
        return False
    names = [r["name"] for r in ok]
    values = [r["ms_per_frame"] for r in ok]
    colours = ["#888888" if r["kind"] != "streamdiff" else "#2b6cb0" for r in ok]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(ok) + 1.5))
    ax.barh(range(len(ok)), values, color=colours)
    ax.set_yticks(range(len(ok)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per frame (median, host uint8 in to host uint8 out; log scale)")
    ax.set_title(title, fontsize=9)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
