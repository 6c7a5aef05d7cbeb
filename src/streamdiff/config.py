"""Stream settings: one frozen, validated object instead of a long constructor."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

Fit = Literal["exact", "crop", "pad", "stretch"]
FITS: tuple[str, ...] = ("exact", "crop", "pad", "stretch")
ControlPreprocess = Literal["canny", "depth", "none"]
CONTROL_PREPROCESSES: tuple[str, ...] = ("canny", "depth", "none")
CONTROL_SCALE_MAX = 5.0  # a ControlNet's conditioning scale, [0, this]
IP_ADAPTER_SCALE_MAX = 5.0  # an IP-Adapter's scale, [0, this]: trained at 1, styles usually sit between 0.3 and 1


class CfgType(str, enum.Enum):
    """Residual classifier-free guidance modes of StreamDiffusion (Kodaira et al. 2023, sec. 3.3)."""

    NONE = "none"
    FULL = "full"
    SELF = "self"
    INITIALIZE = "initialize"

    @classmethod
    def parse(cls, value: str | CfgType) -> CfgType:
        if isinstance(value, CfgType):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"cfg_type must be one of {names}; got {value!r}") from None


def strength_to_t_index(strength: float, steps: int, num_inference_steps: int) -> tuple[int, ...]:
    """Evenly spaced schedule indices that start where `strength` of the noise is added.

    strength 1.0 starts from pure noise (index 0); 0.5 starts half way down the schedule.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1]; got {strength}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    start = min(round((1.0 - strength) * num_inference_steps), num_inference_steps - 1)
    span = num_inference_steps - start
    if steps > span:
        raise ValueError(
            f"steps={steps} does not fit strength={strength:.4g}: at most {span} steps remain "
            f"of num_inference_steps={num_inference_steps}"
        )
    return tuple(start + (j * span) // steps for j in range(steps))


@dataclass(frozen=True)
class StreamConfig:
    """Everything that fixes the shape and numerics of a stream; checked once in __post_init__."""

    t_index_list: tuple[int, ...] | None = None
    num_inference_steps: int = 50
    strength: float | None = None
    steps: int | None = None
    width: int = 512
    height: int = 512
    frame_buffer_size: int = 1
    shared_noise: bool = False  # the F frames of a call share each step's fixed noise (see _draw_noise)
    use_denoising_batch: bool = True
    do_add_noise: bool = True
    cfg_type: CfgType = CfgType.NONE
    guidance_scale: float = 1.2
    delta: float = 1.0
    seed: int = 2
    dtype: torch.dtype | None = None
    device: str = "auto"
    fit: Fit = "exact"
    feedback: float = 0.0
    ema: float = 0.0
    similarity_threshold: float | None = None
    similarity_max_skip: int = 10
    prompt_blend: Literal["linear", "slerp"] = "linear"
    # With ControlNets (see control.py): how strongly each steers, and how a frame becomes its control picture;
    # one value for every ControlNet, or a tuple with one per ControlNet in their order.
    control_scale: float | tuple[float, ...] = 1.0
    control_preprocess: ControlPreprocess | tuple[ControlPreprocess, ...] = "canny"
    canny_thresholds: tuple[float, float] = (100.0, 200.0)  # OpenCV's units: gradients of 0..255 intensities
    # With an IP-Adapter (see ip_adapter.py): how strongly the style picture steers (0: not at all, 1: as trained).
    ip_adapter_scale: float = 0.6

    def __post_init__(self) -> None:
        object.__setattr__(self, "cfg_type", CfgType.parse(self.cfg_type))
        object.__setattr__(self, "t_index_list", self._resolve_t_index())
        # strength/steps are only a way to spell t_index_list; once resolved, the list is the truth.
        object.__setattr__(self, "strength", None)
        object.__setattr__(self, "steps", None)
        self._check_sizes()
        self._check_ranges()

    def _resolve_t_index(self) -> tuple[int, ...]:
        n = self.num_inference_steps
        if not isinstance(n, int) or not 1 <= n <= 1000:
            raise ValueError(f"num_inference_steps must be an integer in [1, 1000]; got {n!r}")
        if self.t_index_list is not None and (self.strength is not None or self.steps is not None):
            raise ValueError("give either t_index_list or strength/steps, not both")
        if self.t_index_list is None:
            strength = 1.0 if self.strength is None else float(self.strength)
            return strength_to_t_index(strength, 1 if self.steps is None else self.steps, n)
        indices = tuple(int(i) for i in self.t_index_list)
        if not indices:
            raise ValueError("t_index_list must hold at least one index")
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"t_index_list entries must be in [0, {n - 1}] for num_inference_steps={n}; got {bad}"
            )
        if list(indices) != sorted(set(indices)):
            raise ValueError(f"t_index_list must be strictly increasing; got {list(indices)}")
        return indices

    def _check_sizes(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8; got {value!r}")
        if self.frame_buffer_size < 1:
            raise ValueError(f"frame_buffer_size must be at least 1; got {self.frame_buffer_size}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}; got {self.fit!r}")
        if self.prompt_blend not in ("linear", "slerp"):
            raise ValueError(f"prompt_blend must be 'linear' or 'slerp'; got {self.prompt_blend!r}")

    def _check_ranges(self) -> None:
        for name in ("feedback", "ema"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {value}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0; got {self.guidance_scale}")
        thr = self.similarity_threshold
        if thr is not None and not 0.0 <= thr <= 1.0:
            raise ValueError(f"similarity_threshold must be in [0, 1]; got {thr}")
        if self.similarity_max_skip < 0:
            raise ValueError(f"similarity_max_skip must be >= 0; got {self.similarity_max_skip}")
        self._check_control()
        scale = self.ip_adapter_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= IP_ADAPTER_SCALE_MAX:
            raise ValueError(f"ip_adapter_scale must be a number in [0, {IP_ADAPTER_SCALE_MAX:g}]; got {scale!r}")
        object.__setattr__(self, "ip_adapter_scale", float(scale))

    def _check_control(self) -> None:
        scales = _one_or_tuple(self.control_scale, "control_scale", "numbers")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 <= s <= CONTROL_SCALE_MAX
                   for s in scales):
            raise ValueError(f"control_scale must be in [0, {CONTROL_SCALE_MAX:g}]; got {self.control_scale!r} "
                             "(give one number, or one per ControlNet)")
        object.__setattr__(self, "control_scale", _as_given(self.control_scale, [float(s) for s in scales]))
        kinds = _one_or_tuple(self.control_preprocess, "control_preprocess", "names")
        if not all(kind in CONTROL_PREPROCESSES for kind in kinds):
            raise ValueError(f"control_preprocess must be one of {', '.join(CONTROL_PREPROCESSES)}; got "
                             f"{self.control_preprocess!r} (give one, or one per ControlNet)")
        object.__setattr__(self, "control_preprocess", _as_given(self.control_preprocess, kinds))
        given = self.canny_thresholds
        try:
            low, high = (float(v) for v in given)
        except (TypeError, ValueError):
            low, high = -1.0, -1.0
        if not 0.0 <= low <= high:
            raise ValueError(f"canny_thresholds must be two numbers with 0 <= low <= high; got {given!r}")
        object.__setattr__(self, "canny_thresholds", (low, high))

    @property
    def denoising_steps(self) -> int:
        assert self.t_index_list is not None
        return len(self.t_index_list)

    def control_scales(self, count: int) -> tuple[float, ...]:
        """The scale of each of `count` ControlNets; ValueError unless control_scale gives one or `count`."""
        return _per_controlnet(self.control_scale, count, "control_scale")

    def control_preprocesses(self, count: int) -> tuple[ControlPreprocess, ...]:
        """How frames become each of `count` ControlNets' control picture (ValueError as control_scales)."""
        return _per_controlnet(self.control_preprocess, count, "control_preprocess")

    @property
    def latency_frames(self) -> int:
        """Frames an input spends in flight before it leaves the stream batch (n - 1)."""
        return self.denoising_steps - 1 if self.use_denoising_batch else 0

    @property
    def uses_guidance(self) -> bool:
        """The reference applies guidance only for a scale above 1, whatever the mode."""
        return self.cfg_type is not CfgType.NONE and self.guidance_scale > 1.0

    def with_changes(self, **changes: Any) -> StreamConfig:
        if changes.get("strength") is not None or changes.get("steps") is not None:
            changes.setdefault("t_index_list", None)
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, config: StreamConfig | None = None, **settings: Any) -> StreamConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known settings are {sorted(names)}")
        base = config or cls()
        if not settings:
            return base
        return base.with_changes(**settings) if config else cls(**settings)


def _one_or_tuple(value: Any, name: str, what: str) -> list[Any]:
    """The values of a setting that takes one value or a sequence of them (not empty)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must be one value or a non-empty sequence of {what}; got {value!r}")
        return list(value)
    return [value]


def _as_given(value: Any, checked: list[Any]) -> Any:
    """A checked setting in its own shape: a single value stays single, a sequence becomes a tuple."""
    return tuple(checked) if isinstance(value, (list, tuple)) else checked[0]


def _per_controlnet(value: Any, count: int, name: str) -> tuple[Any, ...]:
    if not isinstance(value, tuple):
        return (value,) * count
    if len(value) != count:
        raise ValueError(f"{name} gives {len(value)} values for {count} ControlNet(s); give one value, or one per "
                         "ControlNet")
    return value
