"""Waiting in tests for state another thread or process changes, where there is no event to wait on."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.01) -> None:
    """Poll `condition` every `interval` s until it holds; fail, naming `what`, after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(interval)
