"""Compiling a running accelerated stream's modules without stopping it: the switch to a background
compilation (background.py) once it is ready, and compiled code for a step count the stream moves to.

A new count (set_steps) changes the shape of every module call. Compiled with static shapes, its first frame
would compile on the frame thread (tens of seconds on a first start). Where the stream compiled in the
background from the start, a new count instead runs uncompiled steps at once (captured CUDA graphs on a GPU)
while a worker compiles the modules' calls recorded at that count, and switches between two frames when the
worker is done. Compiled forwards keep every shape they compiled, so going back to a count is immediate. A count
set while a worker compiles is applied once it is done: its first frames would run the modules at shapes other
than the worker's, which must wait for the whole compilation, while the frames at the old count go on.

Upgrades is a part of AcceleratedStream kept in a module of its own, as DeviceSteps is of StreamPipeline.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..errors import first_line
from . import compile as compiling
from .background import BackgroundCompile, CallRecorder, NewCountPlan
from .graphs import Capture

if TYPE_CHECKING:
    from .runner import AcceleratedStream

logger = logging.getLogger("streamdiff.backends")


class Upgrades:
    """AcceleratedStream's background compilation and step-count changes (see the module's docstring)."""

    def upgrade_when_ready(self: AcceleratedStream, upgrade: BackgroundCompile, capture: Capture, mode: str) -> None:
        """Switch to `upgrade`'s compiled modules (and `capture`, `mode`) at the first call after it finished.

        Until then the stream runs as it is, its eager calls holding the trace lock (see background.py). The
        upgrade compiles the calls of the stream's current number of steps."""
        self._upgrade = (upgrade, capture, mode, self.pipe.config.denoising_steps)

    def compile_new_counts_in_background(self: AcceleratedStream, plan: NewCountPlan) -> None:
        """From now on, a step count the compiled modules do not hold yet (set_steps) runs uncompiled steps at
        once and switches to compiled ones when a background compilation built them (see NewCountPlan)."""
        self._new_counts = plan

    @torch.no_grad()
    def set_steps(self: AcceleratedStream, steps: int) -> None:
        """StreamPipeline.set_steps; the new count's steps are captured at its first frames.

        Where new counts compile in the background (compile_new_counts_in_background), a count not compiled
        yet runs uncompiled steps until its compiled code is ready; a count compiled before switches back to
        compiled steps at once. Otherwise, with compiled modules, its first frame compiles it (seconds).

        While a compilation runs beside the stream (upgrading), the count is checked now (ValueError as the
        pipeline's) and changes at the first frame after the compiled code is installed: a new count's first
        frames would run the modules at shapes other than the compiler's, which must not change while it works;
        the stream's frames go on at the old count meanwhile instead of waiting for the whole compilation."""
        self._settle()
        if self._upgrade is not None:
            self._defer_steps(steps)
            return
        self._deferred_steps = None
        old = self.pipe.config.denoising_steps
        self.pipe.set_steps(steps)
        plan = self._new_counts
        if steps == old or self._capture is None:
            return
        if plan is None:
            self._progress(f"{self.mode}: {steps} step(s) per frame: building its step at the next frames")
        elif steps in plan.counts:
            self._use_compiled(plan)
        else:
            self._use_uncompiled(plan)
            self._progress(f"{self.mode}: {steps} step(s) per frame: uncompiled steps now; compiling them in the "
                           f"background, then switching to {plan.compiled[1]}")

    @property
    def pending_steps(self: AcceleratedStream) -> int | None:
        """A number of steps set while a compilation runs, not applied yet (see set_steps), or None."""
        return self._deferred_steps

    def _defer_steps(self: AcceleratedStream, steps: int) -> None:
        now = self.pipe.config.denoising_steps
        self._deferred_steps = None if self.pipe.schedule_for(steps) is None else steps
        if self._deferred_steps is not None:
            self._progress(f"{self.mode}: {steps} step(s) per frame once the compilation under way is done; "
                           f"{now} until then")

    @property
    def upgrade(self: AcceleratedStream) -> BackgroundCompile | None:
        """The background compilation the stream will switch to, or None (none started, or switched)."""
        return self._upgrade[0] if self._upgrade is not None else None

    @property
    def upgrading(self: AcceleratedStream) -> bool:
        """Whether a background compilation has yet to be switched to."""
        return self._upgrade is not None

    def _beside_compiler(self: AcceleratedStream) -> contextlib.AbstractContextManager[Any]:
        """What work that runs modules at the shapes being compiled holds (eager frames, runner.CHANGES, a prompt
        transition's refresh): the trace lock, while a compilation runs beside the stream (background.py)."""
        return self.trace_lock if self._upgrade is not None else contextlib.nullcontext()

    def _reshaping(self: AcceleratedStream) -> contextlib.AbstractContextManager[Any]:
        """What work that may change the modules' shapes or state holds (prepare, pipeline methods not in
        runner.CHANGES): the eager lock, which the worker holds for the whole compilation."""
        return self.eager_lock if self._upgrade is not None else contextlib.nullcontext()

    def _maybe_upgrade(self: AcceleratedStream) -> None:
        """Install a finished background compilation between two frames (its steps are captured again), then
        apply a number of steps set meanwhile."""
        if self._upgrade is None or not self._upgrade[0].done.is_set():
            return
        self._finish_upgrade()
        steps, self._deferred_steps = self._deferred_steps, None
        if steps is None:
            return
        try:
            self.set_steps(steps)
        except ValueError as exc:  # the strength changed since, and leaves no room for them
            logger.warning("kept %d step(s) per frame: %s", self.pipe.config.denoising_steps, first_line(exc))

    def _finish_upgrade(self: AcceleratedStream) -> None:
        upgrade, capture, mode, count = self._upgrade
        self._upgrade = None
        plan = self._new_counts
        if upgrade.error is not None:
            logger.warning("compiling in the background failed (%s); staying with %s", first_line(upgrade.error),
                           self.mode)
            self._new_counts = None  # later counts would fail alike
            return
        if plan is not None:
            plan.counts.add(count)
        self._progress(f"{mode}: compiled {count} step(s) per frame in the background in {upgrade.seconds:.1f} s; "
                       "switching to the compiled step")
        self._install(upgrade.install, capture, mode)

    def _install(self: AcceleratedStream, install: Callable[[], None], capture: Capture | None, mode: str) -> None:
        """Change the modules' code (install) and the steps' capture between two frames."""
        self._settle()
        if self.pipe.device.type == "cuda":
            torch.cuda.synchronize(self.pipe.device)  # no replay of the steps about to be dropped is still running
        install()
        self.set_capture(capture, mode)

    def _leave_compiled(self: AcceleratedStream, error: Exception, step: str) -> bool:
        """After capturing a step of background-compiled modules failed: run them uncompiled, as before the
        switch, and compile no later counts (they would fail alike). False where the stream is not running
        such modules: the failure is then the caller's."""
        plan = self._new_counts
        if plan is None or self.mode != plan.compiled[1] or plan.uncompiled[1] == plan.compiled[1]:
            return False
        logger.warning("capturing the compiled step (%s) failed (%s); staying with %s", step, first_line(error),
                       plan.uncompiled[1])
        self._new_counts = None
        self._stop_recording()
        self._install(functools.partial(compiling.uncompile, plan.parts), *plan.uncompiled)
        return True

    def _use_compiled(self: AcceleratedStream, plan: NewCountPlan) -> None:
        """Back to the compiled modules (they hold the stream's count), dropping a recording under way."""
        self._stop_recording()
        if self.mode != plan.compiled[1]:
            self._install(functools.partial(compiling.compile_in_place, plan.parts, plan.preset), *plan.compiled)

    def _use_uncompiled(self: AcceleratedStream, plan: NewCountPlan) -> None:
        """Run the modules uncompiled and record their first calls at the stream's count, to compile them."""
        self._install(functools.partial(compiling.uncompile, plan.parts), *plan.uncompiled)
        self._stop_recording()
        self._recorder = CallRecorder(plan.parts).__enter__()

    def _stop_recording(self: AcceleratedStream) -> None:
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None

    def _compile_recorded(self: AcceleratedStream) -> None:
        """After a frame that captured a step: once every module's call at the new count is recorded, compile
        them on a thread of their own. Not before the capture: no step is captured while the thread compiles, and
        a replayed step calls no module."""
        recorder, plan = self._recorder, self._new_counts
        if recorder is None or plan is None or set(plan.parts) - set(recorder.calls):
            return
        self._stop_recording()
        upgrade = BackgroundCompile(plan.parts, recorder.calls, plan.preset, self.eager_lock, self.trace_lock)
        self.upgrade_when_ready(upgrade, *plan.compiled)
        upgrade.start()


def holding(lock: contextlib.AbstractContextManager[Any], method: Callable[..., Any]) -> Callable[..., Any]:
    """method, called with lock held: one of the locks a compilation on another thread takes (background.py)."""

    @functools.wraps(method)
    def held(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return held
