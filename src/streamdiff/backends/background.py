"""Compiling a running stream's modules on a thread of its own: stylized frames at once, the compiled speed later.

torch.compile of the UNet takes ~30-50 s on a first start and ~9-10 s from its on-disk cache, while CUDA
graphs over the eager kernels are captured in ~2 s (benchmarks/startup_probe.py). A live app can show
frames from those graphs at once while a worker thread compiles each module on copies of the inputs its
first call saw; between two frames the stream then installs the compiled code and captures its steps
again (AcceleratedStream.upgrade_when_ready).

The worker calls the modules itself, at the shapes of the calls it recorded. Other threads may run them too, as
follows. While torch.compile traces, PyTorch's FX tracers patch torch.nn.Module.__call__ for the whole process,
so a module called from another thread then fails: the worker holds `trace_lock` only inside those patch windows
(at most seconds of a compilation that takes tens of seconds; none when the compiled code comes from the on-disk
cache), and the stream holds it around every call that runs modules at those shapes (its eager frames, a change
of prompt, strength or style picture, a prompt transition's refresh). So the first frame of a restarted stream
and a prompt typed while the UNet compiles go through at once, not at the end. Work that changes the modules'
shapes (prepare) holds `lock` instead, which the worker holds for the whole compilation; a new number of steps
waits for it without holding up the frames (upgrades.py). The conditioning cache's switch is per thread, so the
worker's traced calls and the frames' read the stored projections independently. No new CUDA graph is captured
meanwhile (call_graph.hold_captures, and the stream's own steps): a capture forbids the worker's device
synchronisations. Other code of the program must not call the modules until the switch.

While the worker runs, the interpreter's switch interval is shortened (SWITCH_INTERVAL): tracing and
code generation keep the worker in Python for long stretches, and a frame thread that gives up the
interpreter lock around each device wait would otherwise wait up to 5 ms (Python's default) to get it
back, several times a frame.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx._symbolic_trace as fx_tracing
from torch import Tensor, nn

from . import call_graph
from . import compile as compiling
from .conditioning import ConditioningCache
from .graphs import capturing

logger = logging.getLogger("streamdiff.backends")

SWITCH_INTERVAL = 0.0005  # seconds; restored to what it was when the worker ends
THREAD_NAME = "streamdiff-compile"  # each worker's thread

TraceLock = contextlib.AbstractContextManager[Any]  # a threading.RLock: see held_while_tracing


@dataclass
class RecordedCall:
    """A module's first call: copies of its tensor arguments, and whether the UNet read the stored conditioning."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    conditioned: bool


class CallRecorder:
    """Records the first eager call of each module (not calls inside a CUDA graph capture) while active."""

    def __init__(self, parts: dict[str, nn.Module]):
        self.parts = parts
        self.calls: dict[str, RecordedCall] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> CallRecorder:
        for name, module in self.parts.items():
            self._hooks.append(module.register_forward_pre_hook(self._hook(name, module), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        def record(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in self.calls or capturing():
                return
            self.calls[name] = RecordedCall(_copied(args), _copied(kwargs), ConditioningCache.reading(module))

        return record


def _copied(value: Any) -> Any:
    """value with every tensor in it cloned (same strides), so the stream may change its own."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copied(v) for v in value)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


class BackgroundCompile:
    """Compiles `parts` on a named daemon thread by calling each compiled forward once with its recorded call."""

    def __init__(self, parts: dict[str, nn.Module], calls: dict[str, RecordedCall], preset: str,
                 lock: threading.Lock, trace_lock: TraceLock):
        missing = sorted(set(parts) - set(calls))
        if missing:
            raise ValueError(f"no recorded call for {', '.join(missing)}: run a frame while recording first")
        compiling.check_preset(preset)
        self.parts, self.calls, self.preset, self.lock, self.trace_lock = parts, calls, preset, lock, trace_lock
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker finished (or timeout); whether it did."""
        return self.done.wait(timeout)

    def install(self) -> None:
        """Make the compiled forwards the modules' own (on the stream's thread, between frames)."""
        compiling.compile_in_place(self.parts, self.preset)

    def _run(self) -> None:
        start = time.perf_counter()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            side = torch.cuda.Stream() if torch.cuda.is_available() else None
            # Grad mode is per thread: the stream's frames run without autograd, and the guards see it.
            with torch.no_grad(), torch.cuda.stream(side) if side is not None else contextlib.nullcontext(), \
                    held_while_tracing(self.trace_lock), call_graph.hold_captures():
                for name, module in self.parts.items():
                    self._compile_one(module, self.calls[name])
                if side is not None:
                    side.synchronize()
        except BaseException as exc:  # noqa: BLE001 - reported to the stream, which keeps its uncompiled steps
            self.error = exc
        finally:
            sys.setswitchinterval(interval)
            self.seconds = time.perf_counter() - start
            self.done.set()

    def _compile_one(self, module: nn.Module, call: RecordedCall) -> None:
        forward = compiling.compiled_forward(module, self.preset)
        conditioned = ConditioningCache.of(module).active() if call.conditioned else contextlib.nullcontext()
        with self.lock, conditioned:
            forward(*call.args, **call.kwargs)


def running() -> bool:
    """Whether a worker is compiling now, on any stream."""
    return any(thread.name == THREAD_NAME and thread.is_alive() for thread in threading.enumerate())


# The trace locks of the workers running now (held_while_tracing). Re-entrant: a tracer nested in another
# patches again, on a thread that holds them already.
_tracing_locks: list[TraceLock] = []


@contextlib.contextmanager
def held_while_tracing(lock: TraceLock) -> Iterator[None]:
    """Within: `lock` is held whenever an FX tracer of any thread patches torch.nn.Module.__call__ for the whole
    process (the tracer's `_new_patcher` block, torch 2.11-2.13); where this torch has no such function, for the
    whole block."""
    if not _lock_fx_patching():
        with lock:
            yield
        return
    _tracing_locks.append(lock)
    try:
        yield
    finally:
        _tracing_locks.remove(lock)


def _lock_fx_patching() -> bool:
    """Wrap the FX tracer's patcher, once, so that it holds the workers' trace locks; whether it could."""
    patcher = getattr(fx_tracing, "_new_patcher", None)
    if patcher is None:
        return False
    if getattr(patcher, "_streamdiff_locking", False):
        return True

    @contextlib.contextmanager
    def locking() -> Iterator[Any]:
        with contextlib.ExitStack() as held:
            for lock in list(_tracing_locks):
                held.enter_context(lock)
            with patcher() as patching:
                yield patching

    locking._streamdiff_locking = True  # type: ignore[attr-defined]
    fx_tracing._new_patcher = locking  # left in place: it holds no lock where no worker runs
    return True


@dataclass
class NewCountPlan:
    """How a stream whose modules compile in the background gets compiled code for a step count it switches to
    (set_steps): uncompiled steps at once, recording the modules' first calls at the new count, then a
    BackgroundCompile of those, switched to as the first one was. Compiled forwards keep every shape they
    compiled, so a count compiled once is switched back to at once."""

    parts: dict[str, nn.Module]
    preset: str
    compiled: tuple[Any, str]  # the capture and mode of compiled steps (e.g. CUDA graphs, "max")
    uncompiled: tuple[Any, str]  # those of the steps run while a count compiles (e.g. CUDA graphs, "graphs")
    counts: set[int]  # the step counts the compiled forwards hold
