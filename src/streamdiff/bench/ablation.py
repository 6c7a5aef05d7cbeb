"""The StreamDiffusion paper's component study on this machine: each component on and off, one table.

Groups (reference variant first, speed-ups are against it):
  stream batch     sequential steps vs the stream batch, at 2 and 4 steps
  residual CFG     full CFG vs onetime-negative (initialize) vs self-negative vs none, at 1 and 2 steps
  similarity       filter off vs on (threshold 0.98), on a static and a moving clip: skip rate, energy
  codec            the full KL VAE vs TAESD, with its convolutions fused (cuDNN's kernels on CUDA in half
                   precision, else PyTorch's) and not fused; SDXL's full VAE runs in float32 under a float16
                   stream (Components.vae_dtype), as diffusers' SDXL pipelines run it
  acceleration     the plain engine vs its exact rewrites (eager) vs compile vs CUDA graphs vs both
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .scenario import Scenario


@dataclass(frozen=True)
class AblationCase:
    group: str
    variant: str
    scenario: Scenario
    reference: bool = False  # the group's baseline row for speed-ups


def _case(group: str, variant: str, base: Scenario, reference: bool = False, **changes: Any) -> AblationCase:
    label = f"ablation | {group} | {variant}"
    return AblationCase(group, variant, base.with_changes(label=label, **changes), reference)


def ablation_cases(model: str = "sd-turbo", resolution: int = 512, accel: str = "auto") -> list[AblationCase]:
    base = Scenario(model=model, resolution=resolution, accel=accel)
    cases: list[AblationCase] = []
    for steps in (2, 4):
        group = f"stream batch, {steps} steps"
        cases.append(_case(group, "sequential steps", base, True, steps=steps, batched=False))
        cases.append(_case(group, "stream batch", base, steps=steps))
    for steps in (1, 2):
        group = f"residual CFG, {steps} step{'s' if steps > 1 else ''}, guidance 1.4"
        cases.append(_case(group, "full CFG", base, True, steps=steps, cfg="full"))
        cases.append(_case(group, "R-CFG onetime-negative", base, steps=steps, cfg="initialize"))
        cases.append(_case(group, "R-CFG self-negative", base, steps=steps, cfg="self"))
        cases.append(_case(group, "no CFG", base, steps=steps, cfg="none"))
    for clip in ("static", "moving"):
        group = f"similarity filter, {clip} clip"
        cases.append(_case(group, "filter off", base, True, clip=clip))
        cases.append(_case(group, "filter 0.98", base, clip=clip, similarity=0.98))
    cases.append(_case("codec", "full VAE", base, True, taesd=False))
    cases.append(_case("codec", "TAESD", base))
    cases.append(_case("codec", "TAESD, convolutions not fused", base, codec_fusion=False))
    for mode in ("none", "eager", "compile", "graphs", "max"):
        cases.append(_case("acceleration", mode, base, mode == "none", accel=mode))
    return cases


def ablation_table(cases: Sequence[AblationCase], results: Sequence[dict[str, Any]]) -> tuple[str, list[dict]]:
    """A Markdown table and its rows; mean ms per frame (the filter makes frames unequal), speed-up in the group."""
    by_label = {r["scenario"]["label"]: r for r in results if r.get("kind") == "streamdiff" and "scenario" in r}
    rows, reference_ms = [], {}
    for case in cases:
        r = by_label.get(case.scenario.label)
        if r is None or "error" in r:
            rows.append({"group": case.group, "variant": case.variant, "error": (r or {}).get("error", "not run")})
            continue
        mean = r["latency"]["mean_ms"] / case.scenario.frame_buffer_size
        if case.reference:
            reference_ms[case.group] = mean
        ref = reference_ms.get(case.group)
        rows.append({"group": case.group, "variant": case.variant, "mean_ms_per_frame": mean,
                     "median_ms_per_frame": r["ms_per_frame"], "fps": 1000.0 / mean,
                     "joules_per_frame": r.get("joules_per_frame"), "skip_rate": r.get("skip_rate"),
                     "speedup": ref / mean if ref else None})
    lines = ["| group | variant | mean ms/frame | median ms/frame | FPS | J/frame | skip rate | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['group']} | {row['variant']} | failed: {row['error']} ||||||")
            continue
        lines.append("| {group} | {variant} | {m:.2f} | {med:.2f} | {fps:.1f} | {j} | {skip} | {sp} |".format(
            group=row["group"], variant=row["variant"], m=row["mean_ms_per_frame"], med=row["median_ms_per_frame"],
            fps=row["fps"], j="-" if row["joules_per_frame"] is None else f"{row['joules_per_frame']:.3f}",
            skip="-" if row["skip_rate"] is None else f"{row['skip_rate']:.0%}",
            sp="-" if row["speedup"] is None else f"{row['speedup']:.2f}x"))
    return "\n".join(lines) + "\n", rows


def write_ablation_chart(path: Any, rows: Sequence[dict]) -> bool:
    """Grouped bars of mean ms per frame, one panel row per group."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return False
    labels = [f"{r['group']}: {r['variant']}" for r in ok]
    groups = list(dict.fromkeys(r["group"] for r in ok))
    palette = plt.get_cmap("tab10")
    colours = [palette(groups.index(r["group"]) % 10) for r in ok]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(ok) + 1.5))
    values = [r["mean_ms_per_frame"] for r in ok]
    ax.barh(range(len(ok)), values, color=colours)
    ax.set_yticks(range(len(ok)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per frame")
    ax.set_title("StreamDiffusion components, on and off", fontsize=9)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
