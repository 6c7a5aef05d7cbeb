"""The style picture of a stream with an IP-Adapter, changed live: a picture asked for on any thread (an OSC
message's file, a page's upload) waits in a latest-value slot; the inbox's own preparer thread loads the newest
(decodes an upload) and makes its CLIP pixels with the engine's `style_pixels`, the host half, which runs no model;
the inference thread hands the engine those pixels between two frames, and the engine runs its image encoder on
them there (`set_style_image`, the device half). So neither a listener thread nor the event loop decodes or runs a
model, and the inference thread spends no frame time on decoding and resizing a large photo."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamdiff.app.keys import Controls
from streamdiff.app.remote import ControlError, no_ip_adapter
from streamdiff.app.slots import LatestSlot
from streamdiff.errors import first_line
from streamdiff.images import read_picture

if TYPE_CHECKING:
    from streamdiff.ip_adapter import StylePixels

logger = logging.getLogger(__name__)

STYLE_IMAGE = "style_image"  # the remote control that names a picture file on the machine running streamdiff


def log_outcome(problem: str | None) -> None:
    """What a picture from OSC hears: a picture the engine cannot use is logged; one in use needs no line."""
    if problem is not None:
        logger.warning("style picture: %s", problem)


@dataclass(frozen=True)
class StylePicture:
    """A style picture on its way to the engine. `load` makes it as the engine's style_pixels takes it, on the
    inbox's preparer thread (a ValueError or OSError says why it cannot); `done` then hears None once the engine
    uses it (on the inference thread), or why it could not (on whichever thread found out; the stream keeps the
    picture it had). A picture overtaken by a newer one before it reached the engine hears nothing, unless it
    could not be read."""

    name: str  # what the overlay and the page show: the file's name
    load: Callable[[], Any]
    done: Callable[[str | None], None] = log_outcome


@dataclass(frozen=True)
class PreparedStyle:
    """A style picture ready for the engine: its CLIP pixels, for set_style_image."""

    picture: StylePicture
    pixels: StylePixels


class StyleInbox:
    """The newest style picture asked for (any thread puts one), prepared on a thread of the inbox's own (started
    by the first put) and taken ready by the inference thread; and the name of the one in use, which only the
    inference thread writes. `prepare` is the engine's style_pixels; close() stops the preparer."""

    def __init__(self, prepare: Callable[[Any], StylePixels], current: str | None = None) -> None:
        self._prepare = prepare
        self._asked: LatestSlot[StylePicture] = LatestSlot()
        self._ready: LatestSlot[PreparedStyle | BaseException] = LatestSlot()
        self._taken = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()  # two threads may put the first picture at once
        self.current = current  # None: no picture yet, and the adapter has no effect

    def put(self, picture: StylePicture) -> None:
        """Replaces a picture the preparer has not started on yet; one it is preparing is dropped once ready."""
        self._asked.put(picture)
        with self._starting:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=_guarded_preparer,
                                                args=(self._asked, self._ready, self._prepare, self._stop),
                                                name="streamdiff-style", daemon=True)
                self._thread.start()

    def take(self) -> PreparedStyle | None:
        """The picture prepared since the last take, if any (the inference thread's side). A failure of the
        preparer other than a picture it cannot use is raised here, so that the app stops as it would have had
        the inference thread prepared the picture itself."""
        version, prepared = self._ready.peek()
        if version == self._taken:
            return None
        self._taken = version
        if isinstance(prepared, BaseException):
            raise RuntimeError(f"the style picture thread failed: {first_line(prepared)}") from prepared
        return prepared

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the preparer (a picture it is preparing is dropped); True when it ended within `timeout` s."""
        self._stop.set()
        self._asked.wake()
        with self._starting:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()


def prepare_worker(asked: LatestSlot[StylePicture], ready: LatestSlot[PreparedStyle | BaseException],
                   prepare: Callable[[Any], StylePixels], stop: threading.Event) -> None:
    """Always take the newest picture asked for: load it and make its pixels. A picture the engine cannot use
    tells its sender why; one overtaken by a newer picture while it was being prepared is dropped, so a large
    photo that takes long never replaces a quicker picture asked for after it (this one thread prepares the
    pictures in the order they were asked for)."""
    for version, _, picture in asked.newer(stop):
        try:
            pixels = prepare(picture.load())
        except (OSError, ValueError) as exc:
            picture.done(str(exc) or first_line(exc))
            continue
        if asked.peek()[0] == version and not stop.is_set():
            ready.put(PreparedStyle(picture, pixels))


def _guarded_preparer(asked: LatestSlot[StylePicture], ready: LatestSlot[PreparedStyle | BaseException],
                      prepare: Callable[[Any], StylePixels], stop: threading.Event) -> None:
    try:
        prepare_worker(asked, ready, prepare, stop)
    except BaseException as exc:  # noqa: BLE001  handed to the inference thread, which fails the app with it
        ready.put(exc)


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
