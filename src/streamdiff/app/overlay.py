"""The text drawn over the monitor view: prompt, rates, latency, settings, notices and the key help."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamdiff.app.keys import Controls, help_lines

MARGIN = 8


@dataclass(frozen=True)
class OverlayInfo:
    prompt: str
    prompt_number: int  # 1-based, for people
    prompt_count: int
    ai_fps: float
    camera_fps: float
    display_fps: float
    latency_ms: float | None
    notice: str = ""


def status_lines(info: OverlayInfo, controls: Controls) -> list[str]:
    latency = "-" if info.latency_ms is None else f"{info.latency_ms:.0f} ms"
    settings = (
        f"blend {controls.blend:.1f}  ema {controls.ema:.2f}  feedback {controls.feedback:.2f}  seed {controls.seed}"
    )
    lines = [
        f"[{info.prompt_number}/{info.prompt_count}] {info.prompt}",
        f"AI {info.ai_fps:.1f} fps  camera {info.camera_fps:.1f} fps  display {info.display_fps:.0f} fps  "
        f"latency {latency}",
        settings + ("  PAUSED" if controls.paused else ""),
    ]
    if info.notice:
        lines.append(info.notice)
    lines.append("h: help  o: hide")
    return lines


def draw_overlay(image: np.ndarray, info: OverlayInfo, controls: Controls) -> np.ndarray:
    """Draw in place (the picture is the display's own copy) and return it."""
    if controls.overlay:
        draw_text_box(image, status_lines(info, controls), (MARGIN, MARGIN))
    if controls.help:
        lines = ["keys"] + help_lines()
        scale = _scale(image)
        height = _line_height(scale) * len(lines) + 2 * MARGIN
        draw_text_box(image, lines, (MARGIN, max(MARGIN, image.shape[0] - height - MARGIN)))
    return image


def draw_text_box(image: np.ndarray, lines: list[str], origin: tuple[int, int]) -> None:
    """Lines of white text on a darkened box, clipped to the picture's width."""
    import cv2

    scale = _scale(image)
    step = _line_height(scale)
    max_chars = max(8, int((image.shape[1] - 2 * MARGIN - origin[0]) / (scale * 20)))
    lines = [_fit(line, max_chars) for line in lines]
    width = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for line in lines)
    x, y = origin
    box = image[y : y + step * len(lines) + MARGIN, x : x + width + 2 * MARGIN]
    box[:] = box // 3  # darken, so the text reads on any picture
    for i, line in enumerate(lines):
        baseline = y + (i + 1) * step
        cv2.putText(image, line, (x + MARGIN, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)


def _scale(image: np.ndarray) -> float:
    return max(0.35, min(0.7, image.shape[0] / 900.0))


def _line_height(scale: float) -> int:
    return int(30 * scale) + 4


def _fit(text: str, max_chars: int) -> str:
    """Hershey fonts draw ASCII only; long lines end in an ellipsis instead of leaving the picture."""
    text = text.encode("ascii", "replace").decode("ascii")
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
