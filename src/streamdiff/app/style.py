"""The style picture of a stream with an IP-Adapter, changed live: a picture asked for on any thread (an OSC
message's file, a page's upload) waits in a latest-value slot, and the inference thread hands the newest to the
engine between two frames. The engine encodes it there with CLIP, the heavy part, so no listener thread or event
loop ever runs a model."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamdiff.app.keys import Controls
from streamdiff.app.remote import ControlError, no_ip_adapter
from streamdiff.app.slots import LatestSlot
from streamdiff.images import read_picture

logger = logging.getLogger(__name__)

STYLE_IMAGE = "style_image"  # the remote control that names a picture file on the machine running streamdiff


def log_outcome(problem: str | None) -> None:
    """What a picture from OSC hears: a picture the engine cannot use is logged; one in use needs no line."""
    if problem is not None:
        logger.warning("style picture: %s", problem)


@dataclass(frozen=True)
class StylePicture:
    """A style picture on its way to the engine. `load` makes it as set_style_image takes it, on the inference
    thread (a ValueError or OSError says why it cannot); `done` then hears None once the engine uses it, or why
    it could not (the stream keeps the picture it had)."""

    name: str  # what the overlay and the page show: the file's name
    load: Callable[[], Any]
    done: Callable[[str | None], None] = log_outcome


class StyleInbox:
    """The newest style picture asked for (any thread puts one), taken by the inference thread, and the name of
    the one in use, which only the inference thread writes."""

    def __init__(self, current: str | None = None) -> None:
        self._slot: LatestSlot[StylePicture] = LatestSlot()
        self._taken = 0
        self.current = current  # None: no picture yet, and the adapter has no effect

    def put(self, picture: StylePicture) -> None:
        """Replaces a picture the inference thread has not taken yet."""
        self._slot.put(picture)

    def take(self) -> StylePicture | None:
        """The picture asked for since the last take, if any (the inference thread's side)."""
        version, picture = self._slot.peek()
        if version == self._taken:
            return None
        self._taken = version
        return picture


def picture_file(path: Any) -> StylePicture:
    """The picture file an OSC message names, read now, on the listener's thread: a bad path is refused at once
    (ControlError, one line) and changes nothing."""
    if not isinstance(path, str) or not path.strip():
        raise ControlError(f"{STYLE_IMAGE} must be the path of a picture file; got {json.dumps(path, default=repr)}")
    try:
        picture = read_picture(path, "style picture")
    except (OSError, ValueError) as exc:
        raise ControlError(str(exc)) from None
    return StylePicture(Path(path).name, lambda: picture)


def split_style(change: Mapping[str, Any], controls: Controls) -> tuple[StylePicture | None, dict[str, Any]]:
    """A remote change as its style picture (read now; ControlError for a bad path or a stream without an
    IP-Adapter) and the controls it changes, which the caller checks before it hands the picture on."""
    rest = dict(change)
    if STYLE_IMAGE not in rest:
        return None, rest
    path = rest.pop(STYLE_IMAGE)
    if controls.ip_adapter_scale is None:
        raise no_ip_adapter(STYLE_IMAGE)
    return picture_file(path), rest
