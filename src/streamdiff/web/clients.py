"""Who is connected to the page's stream and what they sent: a page or viewer (Client), a picture as it
arrived (Picture), and the stream's counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Output for a page: encoded picture bytes, a JSON-ready dict, or CLOSE (end that page's connection).
CLOSE = object()
Deliver = Callable[[Any], None]


@dataclass(frozen=True)
class Client:
    """One connected page; `deliver` hands it an output from any thread."""

    id: int
    deliver: Deliver


@dataclass(frozen=True)
class Picture:
    """A picture from the page as it arrived (the inference thread decodes it); no data: a text-to-image frame.
    From a WebRTC track: `video` is the decoded frame (PyAV) and `answer` takes the output picture."""

    client: int
    sequence: int
    data: bytes
    time: float
    video: Any = None
    answer: Callable[[np.ndarray], None] | None = None


@dataclass
class Counts:
    """Pictures received from pages, stylized, replaced unseen, made from text alone, and shown by the page."""

    received: int = 0
    stylized: int = 0
    generated: int = 0
    dropped: int = 0
    page_shown: int = 0
    page_fps: float = 0.0
