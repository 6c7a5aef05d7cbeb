"""NDI video over the local network (ndi-python, whose wheels carry the NDI runtime): a sink that publishes
the output as an NDI source for Resolume, TouchDesigner, OBS or vMix, and a source that receives one.

NDI names a source "MACHINE (NAME)" and finds sources by mDNS (Avahi on Linux). Where that does not reach
(another subnet, a container), `ndi://HOST:PORT` connects to a sender's address directly, or NDI's own
configuration (`ndi-config.v1.json` with extra IPs, in NDI_CONFIG_DIR) widens the search.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from streamdiff.app.optional import require
from streamdiff.app.slots import LatestSlot, RateMeter
from streamdiff.errors import UserError

DEFAULT_NAME = "streamdiff"
FIND_SECONDS = 5.0
# A live source that delivers no picture for this long is reported lost (the runtime then reconnects).
LOST_SECONDS = 5.0
_SLICE_MS = 250
SPEC_FORMS = "ndi, ndi:NAME or ndi://HOST:PORT"


@functools.cache
def ndi_library() -> ModuleType:
    """The NDI bindings, initialised once for the process."""
    ndi = require("NDIlib", "NDI video (Python 3.11 or newer)")
    if not ndi.initialize():
        raise UserError("the NDI runtime does not start on this machine (it needs a CPU with SSE4.2)")
    return ndi


def is_ndi(spec: str) -> bool:
    return spec.strip().lower() == "ndi" or spec.strip().lower().startswith("ndi:")


@dataclass(frozen=True)
class NdiSpec:
    """What an `ndi...` value names: a source by (part of) its name, or a sender's address."""

    name: str | None = None
    address: str | None = None


def parse_spec(spec: str) -> NdiSpec:
    """`ndi` (the only source / the default sender name), `ndi:NAME`, or `ndi://HOST:PORT`."""
    text = spec.strip()
    if not is_ndi(text):
        raise ValueError(f"an NDI source or output is written {SPEC_FORMS}; got {spec!r}")
    rest = text[4:] if len(text) > 3 else ""
    if rest.startswith("//"):
        host, _, port = rest[2:].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"an NDI address is written ndi://HOST:PORT (the sender's port, 5961 for a "
                             f"machine's first sender); got {spec!r}")
        return NdiSpec(address=f"{host}:{port}")
    if len(text) > 3 and not rest.strip():
        raise ValueError(f"an NDI name is missing after 'ndi:'; write {SPEC_FORMS}")
    return NdiSpec(name=rest.strip() or None)


def sender_name(spec: str) -> str:
    """The name an `--output ndi[:NAME]` publishes under (NDI prefixes the machine's name)."""
    parsed = parse_spec(spec)
    if parsed.address is not None:
        raise ValueError(f"an NDI output takes a name, not an address: --output ndi:NAME; got {spec!r}")
    return parsed.name or DEFAULT_NAME


class NdiSink:
    """Publishes every picture as one NDI video frame; the receivers pace themselves on its frame rate.

    NDI's compression takes milliseconds a picture on a CPU core, so a thread of its own sends: `write`
    only makes the BGRX copy, and a sender still busy when newer pictures arrive sends the newest of them."""

    order = "bgr"
    monitor = False

    def __init__(self, name: str = DEFAULT_NAME, fps: float = 30.0) -> None:
        ndi = ndi_library()
        settings = ndi.SendCreate()
        settings.ndi_name = name
        # The app paces its output itself; NDI's clock would block the sender to its own rate.
        settings.clock_video = False
        self._cv2 = require("cv2", "NDI video")
        self._ndi, self._sender = ndi, ndi.send_create(settings)
        if self._sender is None:
            raise UserError(f"cannot create the NDI sender {name!r}")
        self.source_name: str = ndi.send_get_source_name(self._sender).ndi_name
        self._pictures: LatestSlot[np.ndarray] = LatestSlot()
        self._stop = threading.Event()
        self.sent = RateMeter()
        self._thread = threading.Thread(
            target=send_worker, name="streamdiff-ndi", daemon=True,
            args=(ndi, self._sender, (round(fps * 1000), 1000), self._pictures, self.sent, self._stop))
        self._thread.start()

    def write(self, image: np.ndarray) -> None:
        # (H, W, 4) BGRX, owned by the sender from here. OpenCV's conversion: numpy's strided copy into
        # the first three channels took 13 ms at 1280x720 (0.75 ms here).
        self._pictures.put(self._cv2.cvtColor(image, self._cv2.COLOR_BGR2BGRA))

    def read_key(self) -> str | None:
        return None

    def close(self) -> None:
        if self._sender is None:
            return
        self._stop.set()
        self._pictures.wake()
        self._thread.join(timeout=5.0)
        self._ndi.send_destroy(self._sender)
        self._sender = None


def send_worker(ndi: ModuleType, sender: Any, rate: tuple[int, int], pictures: LatestSlot[np.ndarray],
                sent: RateMeter, stop: threading.Event) -> None:
    """Send the newest BGRX picture whenever there is a newer one than the last sent, until `stop`."""
    for _, _, pixels in pictures.newer(stop):
        frame = ndi.VideoFrameV2()
        frame.data = pixels
        frame.FourCC = ndi.FOURCC_VIDEO_TYPE_BGRX
        frame.frame_rate_N, frame.frame_rate_D = rate
        ndi.send_send_video_v2(sender, frame)
        sent.tick()


class NdiSource:
    """Receives an NDI source's video as BGR pictures; audio and metadata are dropped."""

    order = "bgr"
    live = True

    def __init__(self, spec: str, find_seconds: float = FIND_SECONDS, lost_seconds: float = LOST_SECONDS) -> None:
        ndi = ndi_library()
        wanted = parse_spec(spec)
        if wanted.address is not None:
            source = ndi.Source()
            source.url_address = wanted.address
            self.name = f"NDI {wanted.address}"
        else:
            source = find_source(wanted.name, find_seconds)
            self.name = f"NDI {source.ndi_name}"
        settings = ndi.RecvCreateV3()
        settings.color_format = ndi.RECV_COLOR_FORMAT_BGRX_BGRA
        settings.bandwidth = ndi.RECV_BANDWIDTH_HIGHEST
        settings.allow_video_fields = False
        settings.source_to_connect_to = source
        self._cv2 = require("cv2", "NDI video")
        self._ndi, self._receiver = ndi, ndi.recv_create_v3(settings)
        if self._receiver is None:
            raise UserError(f"cannot receive from {self.name}")
        self.fps: float | None = None
        self._lost_seconds = lost_seconds

    def read(self) -> np.ndarray | None:
        deadline = time.monotonic() + self._lost_seconds
        while time.monotonic() < deadline:
            kind, video, audio, metadata = self._ndi.recv_capture_v2(self._receiver, _SLICE_MS)
            if kind == self._ndi.FRAME_TYPE_VIDEO:
                return self._take(video)
            if kind == self._ndi.FRAME_TYPE_AUDIO:
                self._ndi.recv_free_audio_v2(self._receiver, audio)
            elif kind == self._ndi.FRAME_TYPE_METADATA:
                self._ndi.recv_free_metadata(self._receiver, metadata)
            elif kind == self._ndi.FRAME_TYPE_ERROR:
                return None
        return None

    def _take(self, video: Any) -> np.ndarray:
        try:
            if video.frame_rate_D:
                self.fps = video.frame_rate_N / video.frame_rate_D
            return self._cv2.cvtColor(video.data, self._cv2.COLOR_BGRA2BGR)
        finally:
            self._ndi.recv_free_video_v2(self._receiver, video)

    def close(self) -> None:
        if self._receiver is not None:
            self._ndi.recv_destroy(self._receiver)
            self._receiver = None


def find_source(name: str | None, wait_seconds: float = FIND_SECONDS) -> Any:
    """The source called `name` (its full name, the part in brackets, or a part of either, ignoring case);
    with no name, the only source there is. Waits up to `wait_seconds` for it to be announced."""
    found = _search(lambda sources: len(_matches(name, sources)) == 1, wait_seconds)
    matches = _matches(name, found)
    if len(matches) == 1:
        return matches[0]
    seen = ", ".join(repr(s.ndi_name) for s in found) or "none"
    if not matches:
        what = f"no NDI source named {name!r}" if name else "no NDI source"
        raise UserError(f"{what} found in {wait_seconds:g} s; sources seen: {seen} (NDI finds sources by mDNS, "
                        "Avahi on Linux; across subnets give the sender's address: ndi://HOST:PORT)")
    raise UserError(f"{len(matches)} NDI sources match {name or 'ndi'}: {seen}; name one with ndi:NAME")


def _search(done: Any, wait_seconds: float) -> list[Any]:
    ndi = ndi_library()
    finder = ndi.find_create_v2()
    if finder is None:
        raise UserError("cannot start NDI's source search")
    try:
        deadline = time.monotonic() + wait_seconds
        sources = list(ndi.find_get_current_sources(finder))
        while not done(sources) and (left := deadline - time.monotonic()) > 0:
            ndi.find_wait_for_sources(finder, max(1, int(min(left, 0.5) * 1000)))
            sources = list(ndi.find_get_current_sources(finder))
        return sources
    finally:
        ndi.find_destroy(finder)


def _matches(name: str | None, sources: list[Any]) -> list[Any]:
    if name is None:
        return sources
    wanted = name.lower()
    for test in (lambda full: full == wanted, lambda full: _short(full) == wanted, lambda full: wanted in full):
        chosen = [s for s in sources if test(s.ndi_name.lower())]
        if chosen:
            return chosen
    return []


def _short(full: str) -> str:
    """'machine (name)' -> 'name'."""
    return full[full.find("(") + 1 : -1] if full.endswith(")") and "(" in full else full
