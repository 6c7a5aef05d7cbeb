"""Read-ahead and write-behind threads: order kept, failures raised on the caller's thread, no thread left."""

from __future__ import annotations

import threading

import pytest

from streamdiff.app.clip_threads import WriteBehind, read_ahead

pytestmark = pytest.mark.timeout(30)


def alive(name: str) -> bool:
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


def test_read_ahead_gives_every_item_in_order_from_its_own_thread():
    producers = []

    def items():
        for k in range(50):
            producers.append(threading.current_thread().name)
            yield k

    assert list(read_ahead(items(), 3, "test-reader")) == list(range(50))
    assert set(producers) == {"test-reader"}
    assert not alive("test-reader")


def test_read_ahead_raises_the_producers_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("frame 3 is corrupt")

    seen = []
    with pytest.raises(ValueError, match="frame 3 is corrupt"):
        seen.extend(read_ahead(items(), 2, "test-reader"))
    assert seen == [1, 2]
    assert not alive("test-reader")


def test_closing_read_ahead_early_stops_the_producer_within_its_depth():
    produced = []

    def items():
        for k in range(1000):
            produced.append(k)
            yield k

    reader = read_ahead(items(), 2, "test-reader")
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()
    assert not alive("test-reader")
    # 3 taken, at most 2 waiting in the queue, one more in the producer's hand when it saw the stop.
    assert len(produced) <= 3 + 2 + 2


def test_write_behind_runs_writes_in_order_on_its_thread():
    done: list[tuple[int, str]] = []
    writer = WriteBehind("test-writer", depth=2)
    for k in range(40):
        writer.submit(lambda k: done.append((k, threading.current_thread().name)), k)
    writer.finish()
    assert done == [(k, "test-writer") for k in range(40)]
    assert not alive("test-writer")


def test_a_failed_write_is_raised_to_the_submitter_who_never_waits_for_ever():
    written = []

    def write(k):
        if k == 3:
            raise OSError("disk full")
        written.append(k)

    writer = WriteBehind("test-writer", depth=1)
    with pytest.raises(OSError, match="disk full"):
        for k in range(200):  # a depth-1 queue: without draining after the failure, this would block
            writer.submit(write, k)
    with pytest.raises(OSError, match="disk full"):
        writer.finish()
    assert written == [0, 1, 2]
    assert not alive("test-writer")
