"""One benchmark case: which model, task and stream settings, run how (acceleration) on which clip."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

from ..config import CfgType, ControlPreprocess, StreamConfig
from .clips import CLIPS

TASKS: tuple[str, ...] = ("img2img", "txt2img")


@dataclass(frozen=True)
class Scenario:
    model: str = "sd-turbo"
    task: str = "img2img"
    steps: int = 1
    cfg: str = "none"
    guidance: float = 1.4  # used by the cfg modes (guidance applies above 1)
    frame_buffer_size: int = 1
    resolution: int = 512
    accel: str = "auto"
    taesd: bool = True
    codec_fusion: bool = True  # TAESD's convolutions fused where it pays (codec_fusion.ops_for)
    upsample_fold: bool = True  # the UNet's upsampling layers as transposed convolutions (accelerated modes)
    batched: bool = True  # the stream batch; False runs the steps one after another
    similarity: float | None = None  # similarity filter threshold, None: off
    clip: str = "moving"
    label: str = ""
    compare: bool = True  # time the baselines (BenchOptions.compare) for this case's workload
    pipelined: bool = False  # img2img_pipelined: each frame launched before the previous one is waited for
    controlnet: str | tuple[str, ...] | None = None  # a ControlNet kind, folder or hub id (or several); None: none
    control_scale: float | tuple[float, ...] = 1.0  # how strongly it steers (one for all, or one each)
    control_preprocess: ControlPreprocess | tuple[ControlPreprocess, ...] | None = None  # None: each one's own
    canny_thresholds: tuple[float, float] | None = None  # Canny's hysteresis thresholds; None: the engine's
    depth_estimator: str | None = None  # the Depth Anything size (or folder, hub id) for depth; None: small
    ip_adapter: str | None = None  # an IP-Adapter kind or weight file, steering by a generated style picture

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        CfgType.parse(self.cfg)
        if self.clip not in CLIPS:
            raise ValueError(f"clip must be one of {', '.join(CLIPS)}; got {self.clip!r}")
        for name in ("steps", "frame_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.pipelined and self.task != "img2img":
            raise ValueError(f"pipelined frames are img2img frames; got task {self.task!r}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8; got {self.resolution}")
        StreamConfig(**(self.settings() | self._control_settings()))  # checked here: it would fail every case

    def settings(self) -> dict[str, Any]:
        """StreamConfig settings of this case (the schedule: `steps` evenly spaced from pure noise)."""
        return {
            "width": self.resolution, "height": self.resolution, "steps": self.steps, "strength": 1.0,
            "frame_buffer_size": self.frame_buffer_size, "cfg_type": self.cfg, "guidance_scale": self.guidance,
            "use_denoising_batch": self.batched, "similarity_threshold": self.similarity,
            **(self._control_settings() if self.controlnet is not None else {}),
        }

    def _control_settings(self) -> dict[str, Any]:
        given = {"control_preprocess": self.control_preprocess, "canny_thresholds": self.canny_thresholds}
        return {"control_scale": self.control_scale, **{k: v for k, v in given.items() if v is not None}}

    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.model, self.task, f"{self.steps}step", f"{self.resolution}px", f"accel-{self.accel}"]
        if self.frame_buffer_size > 1:
            parts.append(f"fbs{self.frame_buffer_size}")
        if self.cfg != "none":
            parts.append(f"cfg-{self.cfg}")
        if not self.batched:
            parts.append("sequential")
        if not self.taesd:
            parts.append("full-vae")
        elif not self.codec_fusion:
            parts.append("unfused-codec")
        if not self.upsample_fold:
            parts.append("unfolded-upsampling")
        if self.similarity is not None:
            parts.append(f"ssf{self.similarity:g}-{self.clip}")
        if self.pipelined:
            parts.append("pipelined")
        if self.controlnet is not None:
            scale = "" if self.control_scale == 1 else f"@{_listed(self.control_scale)}"
            parts.append(f"controlnet-{'+'.join(self.controlnets())}{scale}")
        if self.control_preprocess is not None:
            parts.append(f"preprocess-{_listed(self.control_preprocess)}")
        if self.canny_thresholds is not None:
            parts.append("canny-{:g}-{:g}".format(*self.canny_thresholds))
        if self.depth_estimator is not None:
            parts.append(f"depth-estimator-{self.depth_estimator}")
        if self.ip_adapter is not None:
            parts.append(f"ip-adapter-{self.ip_adapter}")
        return " ".join(parts)

    def controlnets(self) -> tuple[str, ...]:
        """The ControlNets steering this case, in order; () for none."""
        return (self.controlnet,) if isinstance(self.controlnet, str) else tuple(self.controlnet or ())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> Scenario:
        return replace(self, **changes)


def grid(base: Scenario, **axes: Iterable[Any]) -> list[Scenario]:
    """Every combination of the given field values over `base`, in order."""
    names = list(axes)
    return [base.with_changes(**dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def _listed(value: Any) -> str:
    """A setting for a case's name: one value, or one per ControlNet joined by commas."""
    values = value if isinstance(value, tuple) else (value,)
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
