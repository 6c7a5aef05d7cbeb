"""Timing loops and the meters around them: latency percentiles, peak GPU memory, GPU energy (NVML)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..devices import synchronize

logger = logging.getLogger("streamdiff.bench")


@dataclass(frozen=True)
class Latency:
    """Wall-clock seconds per call, host input to host output, summarised in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    calls: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            raise ValueError("no timed calls to summarise")
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p10, median, p90 = np.percentile(ms, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), float(ms.mean()), len(ms))

    def fps(self, frames_per_call: int = 1) -> float:
        return 1000.0 * frames_per_call / self.median_ms

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyMeter:
    """GPU energy through NVML's total-energy counter (Volta and newer); reads None where unavailable."""

    def __init__(self, device: torch.device):
        self._handle = None
        self._nvml: Any = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._nvml = pynvml
        except Exception as exc:  # no library, no driver support: energy is simply not reported
            logger.info("GPU energy not available: %s", exc)
            self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read_joules(self) -> float | None:
        if self._handle is None:
            return None
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0


@dataclass(frozen=True)
class Measurement:
    latency: Latency
    joules: float | None  # over the timed calls
    seconds: float  # wall time of the timed calls

    def joules_per_frame(self, frames_per_call: int) -> float | None:
        if self.joules is None:
            return None
        return self.joules / (self.latency.calls * frames_per_call)


def time_calls(call: Callable[[Any], Any], inputs: Sequence[Any], *, warmup: int, calls: int,
               device: torch.device, meter: EnergyMeter | None = None, min_seconds: float = 0.0,
               wait_each: bool = True) -> Measurement:
    """Run `call` on the inputs in turn: `warmup` untimed calls, then at least `calls` timed ones (and more
    until `min_seconds` have passed, at most 20 times as many: energy counters need time), one clock each.

    Every call returns its frame on the host (or is synchronised), so each sample is a whole frame's latency.
    wait_each=False leaves the device running after each call (pipelined frames, where a call returns one
    frame and leaves the next one in flight): each sample is then the interval between returned frames.
    """
    for i in range(warmup):
        call(inputs[i % len(inputs)])
    synchronize(device)
    samples = []
    energy_start = meter.read_joules() if meter else None
    begin = time.perf_counter()
    i = 0
    while i < calls or (time.perf_counter() - begin < min_seconds and i < 20 * calls):
        start = time.perf_counter()
        call(inputs[i % len(inputs)])
        if wait_each:
            synchronize(device)
        samples.append(time.perf_counter() - start)
        i += 1
    wall = time.perf_counter() - begin
    energy_end = meter.read_joules() if meter else None
    joules = None if energy_start is None or energy_end is None else energy_end - energy_start
    return Measurement(Latency.of(samples), joules, wall)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
