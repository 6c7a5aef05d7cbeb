"""CUDA graph capture of one whole stream step, and the static buffers it reads and writes.

A graph records the kernels of one call and replays them with no Python and no launch overhead. It
reads and writes fixed addresses: the input frames go into a static buffer before each replay, the
stream's state is updated in place, and the output lands in a tensor the capture allocated.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

StepFn = Callable[[], "Tensor | None"]


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream: work done now would be recorded into it
    (False without CUDA, where PyTorch's own test raises instead of answering)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class Replayable(Protocol):
    def replay(self) -> None: ...


class Capture(Protocol):
    """Records `step` once; returns the replayable record and the output tensor every replay rewrites."""

    def __call__(self, step: StepFn, state: Sequence[Tensor]) -> tuple[Replayable, Tensor | None]: ...


class DirectCall:
    """No graph: each replay runs the step again and copies its result into the first call's output."""

    def __init__(self, step: StepFn):
        self.step = step
        self.out: Tensor | None = None

    def replay(self) -> None:
        result = self.step()
        if self.out is not None and result is not None:
            self.out.copy_(result)

    @classmethod
    def deferred(cls, step: StepFn, state: Sequence[Tensor]) -> tuple[DirectCall, None]:
        """A Capture that runs nothing now: each replay runs the step, whose result is not kept."""
        return cls(step), None

    @classmethod
    def capture(cls, step: StepFn, state: Sequence[Tensor]) -> tuple[DirectCall, Tensor | None]:
        """The same contract as CudaGraphCapture, for devices without graphs (and for the CPU tests)."""
        call = cls(step)
        with preserved(state):
            call.out = step()
        return call, call.out


class CudaGraphCapture:
    """Capture on CUDA after warm-up calls on a side stream; the stream's state is left as it was."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self._pool: Any = None  # shared by this stream's graphs (they never run concurrently) while one lives
        self._graphs: weakref.WeakSet[torch.cuda.CUDAGraph] = weakref.WeakSet()

    @property
    def pool(self) -> Any:
        """The memory pool of the next graph. A pool lives as long as a graph captured into it: once a stream
        dropped them all (prepared again, another step count), PyTorch lets it go, and capturing into its old
        handle fails an internal assertion of the caching allocator, so the next graph starts a new pool."""
        if self._pool is None or not self._graphs:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def __call__(self, step: StepFn, state: Sequence[Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor | None]:
        with preserved(state):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):  # compiles, autotunes and allocates outside the capture
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = step()
            self._graphs.add(graph)
        return graph, out


@contextlib.contextmanager
def preserved(tensors: Sequence[Tensor]) -> Iterator[None]:
    """The tensors hold the same values afterwards (warm-up calls must not advance the stream)."""
    saved = [t.clone() for t in tensors]
    try:
        yield
    finally:
        for tensor, value in zip(tensors, saved):
            tensor.copy_(value)


@dataclass
class FrameBuffers:
    """Static input and output of one step shape: device buffers, and pinned host copies on CUDA.

    The output has two host slots, so that one frame's pictures can travel back while the previous
    frame's are still being read (pipelined frames): each download takes the slot the last one did not.
    """

    device_in: Tensor | None  # uint8 (F, h, w, 3) or float (F, 3, h, w); None for txt2img
    host_in: Tensor | None  # pinned twin of device_in for uint8 frames from the host
    host_out: tuple[Tensor, Tensor] | None  # pinned (F, H, W, 3) uint8 slots, filled after replays
    done: tuple[torch.cuda.Event, torch.cuda.Event] | None  # recorded after each slot's copy back
    uploaded: torch.cuda.Event | None  # recorded after the upload: host_in is free again once it completes
    _last_slot: int = 1

    @classmethod
    def allocate(cls, example: Tensor | None, out_shape: tuple[int, ...] | None, device: torch.device) -> FrameBuffers:
        pinned = device.type == "cuda"
        device_in = None if example is None else torch.empty_like(example, device=device)
        host_in = None
        if pinned and example is not None and example.dtype == torch.uint8:
            host_in = torch.empty(example.shape, dtype=torch.uint8, pin_memory=True)
        host_out = None
        if out_shape is not None:
            host_out = tuple(torch.empty(out_shape, dtype=torch.uint8, pin_memory=pinned) for _ in range(2))
        done = (torch.cuda.Event(), torch.cuda.Event()) if pinned else None
        return cls(device_in, host_in, host_out, done, torch.cuda.Event() if pinned else None)

    def load(self, frames: np.ndarray | Tensor) -> None:
        """Copy new frames in: numpy through the pinned buffer (non-blocking upload), tensors directly."""
        assert self.device_in is not None
        if isinstance(frames, np.ndarray):
            if self.host_in is None:
                self.device_in.copy_(torch.from_numpy(np.ascontiguousarray(frames)))
                return
            assert self.uploaded is not None
            self.uploaded.synchronize()  # the last upload has long finished unless no output was fetched since
            np.copyto(self.host_in.numpy(), frames)
            self.device_in.copy_(self.host_in, non_blocking=True)
            self.uploaded.record()
        else:
            self.device_in.copy_(frames, non_blocking=True)

    def download(self, out: Tensor) -> int:
        """Start copying a replay's uint8 output to the host slot the last download did not use; its slot."""
        assert self.host_out is not None
        slot = self._last_slot = 1 - self._last_slot
        self.host_out[slot].copy_(out, non_blocking=self.done is not None)
        if self.done is not None:
            self.done[slot].record()
        return slot

    def collect(self, slot: int) -> np.ndarray:
        """A download's pictures once they have arrived, as the caller's own array (the slot is reused)."""
        assert self.host_out is not None
        if self.done is not None:
            self.done[slot].synchronize()
        return self.host_out[slot].numpy().copy()

    def fetch(self, out: Tensor) -> np.ndarray:
        """The replay's uint8 output on the host: a non-blocking download, then one wait for it."""
        return self.collect(self.download(out))
