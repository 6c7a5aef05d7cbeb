"""Decoding ahead and encoding behind on threads of their own, for rendering a whole clip.

    decode thread --> call queue --> engine (calling thread) --> write queue --> encode thread
          |                                                          ^
          +------------------- audio packets ------------------------+

Unlike the camera app's latest-value slots, these are FIFO queues of a few items: a clip loses no frame,
and a thread that gets ahead waits for room. Only the encode thread touches the output container, so
video and audio are muxed by one thread, in the order they were handed over (FFmpeg interleaves them).
An exception on either thread is raised again on the calling thread; shutdown = stop, drain, join.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()


def read_ahead(items: Iterator[T], depth: int, name: str) -> Generator[T, None, None]:
    """The items of `items`, produced on a thread named `name` up to `depth` items ahead of the caller.

    An exception the producer raises is raised here, in order. Closing this generator early (the caller
    failed or stopped) stops the producer after the item it is on, and returns only once it has stopped:
    the caller may then close what the producer reads from (closing a container that a decoder still
    reads crashes the process).
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(items, handoff, stop), name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        _drain(handoff)  # a producer blocked on a full queue gets room, sees `stop` and ends
        thread.join()


def _produce(items: Iterator[Any], handoff: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in items:
            if not _offer(handoff, ("item", item), stop):
                return
        _offer(handoff, ("end", None), stop)
    except BaseException as exc:  # noqa: BLE001  handed to the consumer, which raises it on its own thread
        _offer(handoff, ("error", exc), stop)


def _offer(handoff: queue.Queue, entry: tuple[str, Any], stop: threading.Event) -> bool:
    """Put `entry`, unless the consumer has stopped (then nobody would take it: False).

    A put that began before the stop either finds room or is freed by the consumer's drain, which comes
    after the stop; so the producer never waits for ever.
    """
    if stop.is_set():
        return False
    handoff.put(entry)
    return True


def _drain(handoff: queue.Queue) -> None:
    while True:
        try:
            handoff.get_nowait()
        except queue.Empty:
            return


class WriteBehind:
    """Runs writes (a callable and its arguments) on a thread named `name`, in the order submitted.

    After a failed write the thread keeps taking (and dropping) submissions, so no submitter ever waits
    for room that will not come; the failure is raised on the next submit() or on finish().
    """

    def __init__(self, name: str, depth: int = 64) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=_write, args=(self._queue, self._errors), name=name, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        self._raise_failure()
        self._queue.put((write, args))

    def finish(self) -> None:
        """Return once every submitted write is done (the caller may then close what they write to);
        raise a write's failure."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._errors:
            raise self._errors[0]


def _write(writes: queue.Queue, errors: list[BaseException]) -> None:
    while (item := writes.get()) is not _END:
        if errors:
            continue
        write, args = item
        try:
            write(*args)
        except BaseException as exc:  # noqa: BLE001  raised again on the submitting thread
            errors.append(exc)
