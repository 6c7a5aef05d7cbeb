"""A StreamPipeline whose warm frames run as one device step each: a replayed CUDA graph, or a direct call.

The first frame of a stream (and the first of each new input shape) runs the ordinary way: it checks
the input, fills the stream batch and leaves a warm state; the step for that shape is captured then,
and later frames of that shape replay it. Anything the fast path does not cover (other input kinds,
flush) goes to the pipeline itself, which shares the state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import images
from ..device_steps import DeviceCarry
from ..errors import UserError
from ..stream import StreamPipeline
from . import call_graph
from .background import BackgroundCompile, CallRecorder, NewCountPlan
from .graphs import Capture, DirectCall, FrameBuffers
from .similarity_check import SimilarityCheck
from .step_cache import Step, StepCache, StepKey
from .upgrades import Upgrades, holding

logger = logging.getLogger("streamdiff.backends")


class GpuMemoryError(UserError):
    """The GPU ran out of memory for this stream's shape."""


@dataclass
class _Pending:
    """A pipelined frame: its step replayed, its pictures on their way to a host slot."""

    buffers: FrameBuffers
    slot: int
    result: np.ndarray | None = None

    def collect(self) -> np.ndarray:
        if self.result is None:
            self.result = images.host_output(self.buffers.collect(self.slot), "np")
        return self.result


# The pipeline's live changes that leave the compiled modules' shapes as they are (they run the text and image
# encoders and the conditioning's refresh): while a compilation runs beside the stream they wait only while it
# traces (background.py), not for the whole of it, so a prompt typed at start-up applies within seconds.
CHANGES = frozenset({"update_prompt", "set_strength", "set_t_index_list", "set_style_image", "set_ip_adapter_scale"})
# The pipeline's settings that only rewrite values the step reads (feedback, EMA, the fixed noise, a ControlNet's
# scale, the similarity filter, a new stream): they run no module, so they take neither lock and return at once
# while a compilation runs, as the camera's and the page's live controls must.
SETTINGS = frozenset({"set_temporal", "set_seed", "set_control_scale", "set_similarity_filter", "reset"})


class AcceleratedStream(Upgrades):
    """The StreamPipeline API (img2img, txt2img, flush, live controls) over a faster execution of warm frames."""

    def __init__(self, pipe: StreamPipeline, capture: Capture | None, *, mode: str = "none", max_shapes: int = 4,
                 progress: Callable[[str], None] | None = None):
        self.pipe = pipe
        self.mode = mode
        self._capture = capture  # None: every call goes to the pipeline as it is
        self._progress = progress or logger.info
        self._steps = StepCache(max_shapes, self._progress)
        self._carry: DeviceCarry | None = None
        self._pending: _Pending | None = None  # a pipelined frame whose pictures nobody has waited for yet
        self._upgrade: tuple[BackgroundCompile, Capture, str, int] | None = None  # compiling on its own thread
        self._new_counts: NewCountPlan | None = None  # set where new step counts compile in the background
        self._recorder: CallRecorder | None = None  # recording a new count's first calls, for its compilation
        self._deferred_steps: int | None = None  # set_steps while upgrading: applied once it is done
        # While an upgrade compiles: held around work that may change the modules' shapes (_reshaping) ...
        self.eager_lock = threading.Lock()
        # ... and around eager frames and the live changes' work (_beside_compiler), while the compiler traces.
        self.trace_lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        if name == "pipe":
            raise AttributeError(name)
        value = getattr(self.pipe, name)
        if callable(value) and name not in SETTINGS and self.__dict__.get("_upgrade") is not None:
            return holding(self._beside_compiler() if name in CHANGES else self._reshaping(), value)
        return value

    # ----- the StreamPipeline API ----------------------------------------------------------------

    def style_pixels(self, picture: Any) -> Any:
        """The pipeline's, without either lock: preprocessing a style picture runs no module, so another
        thread may do it while this one runs frames."""
        return self.pipe.style_pixels(picture)

    def prepare(self, *args: Any, **kwargs: Any) -> None:
        with self._reshaping():  # new shapes, and the text encoder and the conditioning run modules
            self.pipe.prepare(*args, **kwargs)
        self._steps.clear()

    @torch.no_grad()
    def img2img(self, image: Any, output_type: images.ImageKind | None = None) -> Any:
        self._settle()
        self._maybe_upgrade()
        frames, kind = self._fast_input(image)
        if frames is None or self._capture is None or not self.pipe.warm or not _known_kind(output_type):
            with self._beside_compiler():
                return self._guarded(self.pipe.img2img, image, output_type)
        key = StepKey("img2img", tuple(frames.shape), _dtype_of(frames), (output_type or kind) != "pt")
        step = self._lookup(key)
        if step is None:
            with self._beside_compiler():
                result = self._guarded(self.pipe.img2img, image, output_type)  # checks the shape, warms the stream
                self._build(key, frames)
            self._compile_recorded()
            return result
        return self._guarded(self._run, step, frames, kind, output_type or kind)

    @property
    def pipelines_frames(self) -> bool:
        """Whether img2img_pipelined overlaps frames: it does wherever steps are captured."""
        return self._capture is not None

    @torch.no_grad()
    def img2img_pipelined(self, frames: Iterable[Any]) -> Iterator[Any]:
        """img2img(frame, output_type="np") for each frame in turn: the same pictures, in order.

        Each warm numpy frame is launched on the device before the previous frame's pictures are waited for,
        so the host's copies and calls overlap the device's work: more frames per second, one frame more
        in flight. Live controls changed while iterating apply from the next frame launched (the one after
        the frame just returned). Frames the captured step does not cover, and streams with the similarity
        filter on (it reads a number back before each frame), run one at a time as img2img runs them.
        """
        pending: _Pending | None = None
        try:
            for image in frames:
                launched = self._guarded(self._launch, image)
                previous, pending = pending, launched
                self._pending = launched
                if previous is not None:
                    yield previous.collect()
                if launched is None:
                    yield self.img2img(image, output_type="np")
            if pending is not None:
                yield pending.collect()
        finally:
            self._pending = None

    @torch.no_grad()
    def txt2img(self, output_type: images.ImageKind = "pil") -> Any:
        self._settle()
        self._maybe_upgrade()
        if self._capture is None or not self.pipe.warm or not _known_kind(output_type):
            with self._beside_compiler():
                return self._guarded(self.pipe.txt2img, output_type)
        key = StepKey("txt2img", (), None, output_type != "pt")
        step = self._lookup(key)
        if step is None:
            with self._beside_compiler():
                result = self._guarded(self.pipe.txt2img, output_type)
                self._build(key, None)
            self._compile_recorded()
            return result
        return self._guarded(self._run, step, None, None, output_type)

    def flush(self, output_type: images.ImageKind | None = None) -> list[Any]:
        with self._beside_compiler():
            return self._guarded(self.pipe.flush, output_type)

    def build(self, input_size: tuple[int, int] | None = None, *, txt2img: bool = False) -> float:
        """Compile and capture now, for frames of input_size (width, height; default the render size).

        Runs a few frames of a fixed random picture, then restarts the stream. Returns the seconds taken.
        """
        start = time.perf_counter()
        if self._capture is not None:
            self.warm(input_size, txt2img=txt2img)
        return time.perf_counter() - start

    def warm(self, input_size: tuple[int, int] | None = None, *, txt2img: bool = False) -> None:
        """Run two frames of a fixed random picture (and of text, with txt2img), then restart the stream: what
        a stream builds at its first calls of a shape (captured steps, converted parts) is built now."""
        cfg = self.pipe.config
        width, height = input_size or (cfg.width, cfg.height)
        dummy = np.random.default_rng(0).integers(0, 256, (cfg.frame_buffer_size, height, width, 3), np.uint8)
        for _ in range(2):  # the first call warms the stream, the second captures its shape
            self.img2img(dummy, output_type="np")
            if txt2img:
                self.txt2img(output_type="np")
        self.pipe.reset()
        if cfg.similarity_threshold is not None:  # the dummy frames drew from its generator: start it afresh
            self.pipe.set_similarity_filter(cfg.similarity_threshold, cfg.similarity_max_skip)

    def set_capture(self, capture: Capture | None, mode: str) -> None:
        """Change how steps are captured (e.g. after a failed compilation); drops the captured steps."""
        self._capture, self.mode = capture, mode
        self._steps.clear()

    @property
    def step_capture(self) -> Capture | None:
        """How the steps are captured now (None: frames go to the pipeline as it is)."""
        return self._capture

    @property
    def captured(self) -> list[str]:
        """The step shapes ready to replay, described."""
        return self._steps.described()

    # ----- internals ------------------------------------------------------------------------------

    def _fast_input(self, image: Any) -> tuple[np.ndarray | Tensor | None, images.ImageKind | None]:
        """The input as uint8 (F, h, w, 3) numpy or float (F, 3, h, w) tensor frames; None where the ordinary
        path must answer (wrong kind, count or layout: it raises the usual error)."""
        try:
            kind = images.kind_of(image)
        except ValueError:
            return None, None
        if kind == "pt":
            frames: Any = images.to_uint8_tensor(image)  # checks dtype, shape and the [0, 1] range
        elif kind == "pil":
            pictures = image if isinstance(image, (list, tuple)) else [image]
            frames = np.stack([np.asarray(p.convert("RGB")) for p in pictures])
        else:
            frames = image[None] if image.ndim == 3 else image
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                return None, kind
        if frames.shape[0] != self.pipe.config.frame_buffer_size:
            return None, kind
        return frames, kind

    def _lookup(self, key: StepKey) -> Step | None:
        """The captured step for key; None when it must be built (or stays on the ordinary path)."""
        return self._steps.lookup(key, tuple(t.data_ptr() for t in self.pipe.step_buffers()))

    def _build(self, key: StepKey, frames: np.ndarray | Tensor | None) -> None:
        pipe = self.pipe
        # Not while a compilation runs beside any stream: a CUDA graph capture forbids its device synchronisations;
        # this stream's own switch to the compiled modules captures the steps again anyway.
        if key in self._steps or not pipe.warm or self._capture is None or call_graph.captures_held():
            return
        self._steps.make_room()
        start = time.perf_counter()
        carry = self._carry = self._carry or pipe.new_carry()
        example = frames
        if isinstance(frames, np.ndarray):
            example = torch.empty(frames.shape, dtype=torch.uint8)
        cfg = pipe.config
        out_shape = (cfg.frame_buffer_size, cfg.height, cfg.width, 3) if key.uint8 else None
        buffers = FrameBuffers.allocate(example, out_shape, pipe.device)
        if frames is not None:
            buffers.load(frames)
        pipe.attach_carry(carry)
        step = functools.partial(pipe.device_step, buffers.device_in, carry, key.uint8)
        state = (*pipe.step_buffers(), carry.previous_x0, carry.previous_output, carry.last_latent)
        try:
            record, out = self._capture(step, state)
            check = None
            if buffers.device_in is not None and pipe.similarity_filter is not None:
                check = self._capture_check(buffers)
        except torch.cuda.OutOfMemoryError:
            self._steps.keep_uncaptured(key)
            logger.warning("out of GPU memory while capturing the %s step: these frames run uncaptured", key.describe())
            return
        except Exception as error:
            if not self._leave_compiled(error, key.describe()):
                raise
            self._build(key, frames)
            return
        self._steps.add(key, Step(buffers, record, out, check))
        self._progress(f"{self.mode}: captured the {key.describe()} step in {time.perf_counter() - start:.1f} s")

    def _replay(self, step: Step, frames: Any, kind: images.ImageKind | None) -> bool:
        """Load the frames and replay the step, with the stream's bookkeeping around it; no wait for the
        device. False: the similarity filter skipped the frame (nothing was replayed)."""
        pipe, carry = self.pipe, self._carry
        assert carry is not None
        pipe.attach_carry(carry)
        flt = pipe.similarity_filter
        if frames is not None:
            step.buffers.load(frames)
        # A direct call runs the modules' code, and conditioning again during a prompt transition that of a prompt
        # change; a CUDA graph's replay runs none.
        modules = isinstance(step.record, DirectCall) or pipe.prompt_changing
        with self._beside_compiler() if modules else contextlib.nullcontext():
            if frames is None or flt is None:
                proceed = pipe.begin_device_frame(kind)
            else:
                check = self._check_for(step)
                proceed = pipe.begin_device_frame(kind, cosine=check.measure(flt))
                if proceed:
                    check.remember(flt)
            if proceed:
                step.record.replay()
        if proceed:
            pipe.end_device_frame(carry, img2img=frames is not None)
        return proceed

    def _launch(self, image: Any) -> _Pending | None:
        """Replay a warm uint8 numpy frame's captured step and start its download; None where img2img must
        answer instead (nothing was done then)."""
        self._maybe_upgrade()
        if (not isinstance(image, np.ndarray) or self._capture is None or not self.pipe.warm
                or self.pipe.similarity_filter is not None):
            return None
        frames, kind = self._fast_input(image)
        if frames is None:
            return None
        step = self._lookup(StepKey("img2img", tuple(frames.shape), torch.uint8, True))
        if step is None or step.out is None:
            return None
        self._replay(step, frames, kind)
        return _Pending(step.buffers, step.buffers.download(step.out))

    def _settle(self) -> None:
        """Wait for a pipelined frame's pictures before another call reuses the buffers they arrive in."""
        if self._pending is not None:
            self._pending.collect()

    def _run(self, step: Step, frames: Any, kind: images.ImageKind | None, out_kind: images.ImageKind) -> Any:
        carry = self._carry
        assert carry is not None
        if not self._replay(step, frames, kind):
            return images.to_output(carry.previous_output, out_kind)
        if out_kind == "pt":
            return carry.previous_output.to(torch.float32, copy=True)
        assert step.out is not None
        return images.host_output(step.buffers.fetch(step.out), out_kind)

    def _check_for(self, step: Step) -> SimilarityCheck:
        """The step's similarity check; one captured while the filter was off gets its check at its first filtered
        frame. While a compilation holds captures (a capture would forbid its device synchronisations), the check
        runs its kernels at each frame instead, and is captured at the first filtered frame after the hold."""
        check, held = step.check, call_graph.captures_held()
        if check is None or not (check.captured or held):
            step.check = check = self._capture_check(step.buffers, held)
        return check

    def _capture_check(self, buffers: FrameBuffers, held: bool = False) -> SimilarityCheck:
        """The similarity check over a step's input buffer: captured with the step when the filter is on, or at the
        first filtered frame of a step captured while it was off; while captures are held, one that captures
        nothing and runs its kernels at each replay."""
        assert self._capture is not None and buffers.device_in is not None
        capture = DirectCall.deferred if held else self._capture
        return SimilarityCheck.capture(self.pipe, buffers.device_in, capture, captured=not held)

    def _guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run a frame; running out of GPU memory becomes a message that says what to change."""
        try:
            return call(*args)
        except torch.cuda.OutOfMemoryError:
            self._steps.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            cfg = self.pipe.config
            raise GpuMemoryError(
                f"out of GPU memory for a {cfg.width}x{cfg.height} stream with frame_buffer_size "
                f"{cfg.frame_buffer_size} and {cfg.denoising_steps} step(s): lower one of them, use the TAESD "
                "codec, or close other programs using the GPU"
            ) from None


def _known_kind(output_type: Any) -> bool:
    return output_type is None or output_type in images.KINDS


def _dtype_of(frames: np.ndarray | Tensor) -> torch.dtype:
    return torch.uint8 if isinstance(frames, np.ndarray) else frames.dtype
