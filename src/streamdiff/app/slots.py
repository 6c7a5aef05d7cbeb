"""Latest-value slots and rate meters: how the app's threads hand pictures to each other.

A slot holds one value. A writer never waits for a reader: a new value replaces the old one, so a
slow consumer sees only the newest picture and stale ones are dropped instead of queueing up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """One value with a version number that grows by one on every put."""

    def __init__(self, value: T | None = None) -> None:
        self._changed = threading.Condition()
        self._value = value
        self._version = 0 if value is None else 1

    def put(self, value: T) -> int:
        with self._changed:
            self._value = value
            self._version += 1
            self._changed.notify_all()
            return self._version

    def peek(self) -> tuple[int, T | None]:
        """The current version and value, without waiting."""
        with self._changed:
            return self._version, self._value

    def wait_newer(self, seen: int, timeout: float) -> tuple[int, T | None]:
        """Wait until the version passes `seen` (or `timeout` seconds pass); then peek."""
        with self._changed:
            self._changed.wait_for(lambda: self._version > seen, timeout=timeout)
            return self._version, self._value

    def newer(self, stop: threading.Event, poll: float = 0.5) -> Iterator[tuple[int, int, T]]:
        """(version, skipped, value) for every value newer than the last one taken, until `stop` is set: how a
        worker thread takes the newest value, `skipped` counting those replaced before it looked. Waits at most
        `poll` s at a time, so that a stop is seen."""
        seen = 0
        while not stop.is_set():
            version, value = self.wait_newer(seen, timeout=poll)
            if version == seen or value is None:
                continue
            skipped, seen = version - seen - 1, version
            yield version, skipped, value

    def wake(self) -> None:
        """Wake waiting readers without a new value (shutdown uses it so no one waits out a timeout)."""
        with self._changed:
            self._changed.notify_all()


class RateMeter:
    """Events per second over a sliding window of recent event times; readable from any thread."""

    def __init__(self, window: int = 30, clock=time.perf_counter) -> None:
        self._times: list[float] = []
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self.count = 0

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            self._times.append(now)
            if len(self._times) > self._window:
                del self._times[0]
            self.count += 1

    def rate(self) -> float:
        """Recent rate in events per second; 0 before two events, or once the events have stalled."""
        with self._lock:
            times = list(self._times)
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        # Stalled: nothing for three mean intervals (and at least a second) means "not running now".
        if span <= 0 or self._clock() - times[-1] > max(1.0, 3.0 * span / (len(times) - 1)):
            return 0.0
        return (len(times) - 1) / span
