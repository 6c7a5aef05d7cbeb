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
    control_names: tuple[str, ...] = ()  # one label per ControlNet, in the order of Controls.control_scales
    style_image: str | None = None  # the name of the style picture in use; None before one is given


def status_lines(info: OverlayInfo, controls: Controls) -> list[str]:
    latency = "-" if info.latency_ms is None else f"{info.latency_ms:.0f} ms"
    settings = (
        f"strength {controls.strength:.2f}  steps {controls.steps}  blend {controls.blend:.1f}  "
        f"ema {controls.ema:.2f}  feedback {controls.feedback:.2f}  seed {controls.seed}"
    )
    lines = [
        f"[{info.prompt_number}/{info.prompt_count}] {info.prompt}",
        (f"AI {info.ai_fps:.1f} fps  camera {info.camera_fps:.1f} fps  display {info.display_fps:.0f} fps  "
         f"latency {latency}"),
        settings + ("  PAUSED" if controls.paused else ""),
    ]
    if controls.control_scales:
        lines.append(control_line(info.control_names, controls.control_scales))
    if controls.ip_adapter_scale is not None:
        lines.append(style_line(info.style_image, controls.ip_adapter_scale))
    if info.notice:
        lines.append(info.notice)
    lines.append("h: help  o: hide")
    return lines


def control_line(names: tuple[str, ...], scales: tuple[float, ...]) -> str:
    """Each ControlNet's scale with its name: "ControlNet canny 0.80  depth 0.40" (a number for a missing name)."""
    labels = [names[i] if i < len(names) else str(i + 1) for i in range(len(scales))]
    return "ControlNet " + "  ".join(f"{label} {scale:.2f}" for label, scale in zip(labels, scales))


def style_line(name: str | None, scale: float) -> str:
    """The IP-Adapter's scale and the picture in use: "Style 0.60 sunset.jpg"; no picture yet, no steering."""
    return f"Style {scale:.2f} {name if name is not None else '(no picture)'}"


def draw_overlay(image: np.ndarray, info: OverlayInfo, controls: Controls) -> np.ndarray:
    """Draw in place (the picture is the display's own copy) and return it; help replaces the status.
    A notice (a lost camera, say) shows even with the overlay hidden."""
    if controls.help:
        draw_text_box(image, ["keys (h: close)", *help_lines()], (MARGIN, MARGIN))
    elif controls.overlay:
        draw_text_box(image, status_lines(info, controls), (MARGIN, MARGIN))
    elif info.notice:
        draw_text_box(image, [info.notice], (MARGIN, MARGIN))
    return image


def draw_text_box(image: np.ndarray, lines: list[str], origin: tuple[int, int]) -> None:
    """Lines of white text on a darkened box, cut to the picture's width."""
    import cv2

    scale = _scale(image)
    step = _line_height(scale)
    x, y = origin
    room = image.shape[1] - x - 2 * MARGIN
    lines = [_fit(line, room, scale) for line in lines]
    width = max(_text_width(line, scale) for line in lines)
    box = image[y : y + step * len(lines) + MARGIN, x : x + width + 2 * MARGIN]
    box[:] = box // 3  # darken, so the text reads on any picture
    for i, line in enumerate(lines):
        baseline = y + (i + 1) * step
        cv2.putText(image, line, (x + MARGIN, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)


def _text_width(text: str, scale: float) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def _fit(text: str, room: int, scale: float) -> str:
    """Hershey fonts draw ASCII only; a line too long for `room` pixels ends in an ellipsis."""
    text = text.encode("ascii", "replace").decode("ascii")
    if _text_width(text, scale) <= room:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with its ellipsis
    while low < high:
        middle = (low + high + 1) // 2
        if _text_width(text[:middle] + "...", scale) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."


def _scale(image: np.ndarray) -> float:
    return max(0.3, min(0.6, image.shape[0] / 900.0))


def _line_height(scale: float) -> int:
    return int(30 * scale) + 4


def splash(text: str, width: int, height: int) -> np.ndarray:
    """A dark picture with one line of text: what the window shows while the model loads."""
    image = np.zeros((height, width, 3), np.uint8)
    draw_text_box(image, [text], (MARGIN, MARGIN))
    return image
