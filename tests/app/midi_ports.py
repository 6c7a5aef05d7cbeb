"""Real MIDI ports in tests: waiting until a controller's messages reach an input."""

from __future__ import annotations

import queue
import time

import mido


def connect(controller, port, timeout: float = 10.0) -> None:
    """Wait until what `controller` sends reaches `port`: JACK connects ports at its next cycles, and a
    message sent before then is lost. Probes are clock ticks, which no map or learning step takes."""
    arrived: queue.SimpleQueue = queue.SimpleQueue()
    port.callback = arrived.put
    deadline = time.monotonic() + timeout
    try:
        while True:
            controller.send(mido.Message("clock"))
            try:
                arrived.get(timeout=0.2)
                return
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{port.name} got nothing from {controller.name} in {timeout:g} s") from None
    finally:
        port.callback = None
