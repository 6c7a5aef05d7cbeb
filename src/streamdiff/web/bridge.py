r"""The engine behind the page: an inference thread of its own, fed through latest-value slots.

Handlers on the event loop only put pictures and controls into slots and take outputs from a queue, so
the model never runs on the event loop and a slow frame never holds up the page's other messages. One
page drives the stream at a time: a newer page takes it over (a reload opens a new connection before the
old one is gone), and the older page is told so and closed. Any number of viewers (the output alone, for a
streaming program's browser source or a projector) and the sinks (NDI) get every output too.

    page --WebSocket--> submit() --> pictures slot --> inference thread --> deliver() --> page
                        change() --> controls slot --^      (decode, engine, JPEG)
    page --WebRTC track--> submit_video() --^                         \--> answer() --> page's track
    page --POST /api/style_image--> submit_style() --> runner.styles --^   (CLIP encode)
                                                   (its own thread: decode, CLIP preprocessing)

A picture from a WebRTC track is answered on the page's track (web/webrtc.py), unencoded; so are viewers
that watch over WebRTC. A JPEG is made only for those on a WebSocket.
"""

from __future__ import annotations

import functools
import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamdiff.app.engine_io import AiFrame, EngineRunner
from streamdiff.app.frames import Frame, convert_order
from streamdiff.app.keys import Controls
from streamdiff.app.midi_map import DEFAULT_MAP, Translator
from streamdiff.app.optional import require
from streamdiff.app.remote import ControlError, apply_changes, control_type, no_ip_adapter
from streamdiff.app.slots import LatestSlot, RateMeter
from streamdiff.app.style import StylePicture, log_outcome, split_style
from streamdiff.errors import first_line
from streamdiff.web.clients import CLOSE, Client, Counts, Deliver, Picture
from streamdiff.web.protocol import (
    PAGE_CONTROLS,
    REMOTE_CONTROL_TYPES,
    PromptBook,
    ProtocolError,
    UploadError,
    apply_controls,
    decode_picture,
    decode_video,
    encode_jpeg,
    midi_bytes,
    pack_output,
    split_frame,
)
from streamdiff.web.transport import Transport

logger = logging.getLogger(__name__)

MAX_NAME_CHARS = 100  # of a style picture's file name, as the page and the overlay show it


@dataclass
class WebStream:
    """The stream a page drives: start() the inference thread, then connect() pages and submit() pictures."""

    runner: EngineRunner
    controls: Controls
    prompts: PromptBook
    model: str = ""
    quality: int = 85
    transport: Transport = field(default_factory=Transport)
    on_failure: Callable[[], None] = lambda: None  # the server stops when the inference thread fails
    midi: Translator = field(default_factory=lambda: Translator(DEFAULT_MAP))  # for MIDI from the page
    sinks: list[Any] = field(default_factory=list)  # every output goes to these too (NDI); closed by close()
    pictures: LatestSlot[Picture] = field(default_factory=LatestSlot)
    applied: LatestSlot[Controls] = field(default_factory=LatestSlot)
    stop: threading.Event = field(default_factory=threading.Event)
    rate: RateMeter = field(default_factory=RateMeter)
    counts: Counts = field(default_factory=Counts)
    failure: BaseException | None = None
    _current: Client | None = None
    _viewers: dict[int, Client] = field(default_factory=dict)
    _video_viewers: dict[int, Client] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100; got {self.quality}")
        self.applied.put(self.controls)

    def start(self) -> None:
        self._thread = threading.Thread(target=_guarded_worker, args=(self,), name="streamdiff-web-inference",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the inference thread and the style picture's; True when they ended within `timeout` seconds."""
        deadline = time.perf_counter() + timeout
        self.stop.set()
        self.pictures.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        styles_stopped = self.runner.close(max(0.0, deadline - time.perf_counter()))
        for sink in self.sinks:
            sink.close()
        return styles_stopped and (self._thread is None or not self._thread.is_alive())

    def connect(self, deliver: Deliver) -> Client:
        """A new page drives the stream from now on; the page before it is told and closed."""
        client = Client(next(self._ids), deliver)
        with self._lock:
            previous, self._current = self._current, client
        if previous is not None:
            previous.deliver({"type": "error", "fatal": True,
                              "message": "another page took over the stream; reload to take it back"})
            previous.deliver(CLOSE)
        return client

    def disconnect(self, client: Client) -> None:
        with self._lock:
            if self._current is client:
                self._current = None

    def watch(self, deliver: Deliver) -> Client:
        """A viewer: it gets every output from now on (`deliver` should keep only the newest)."""
        client = Client(next(self._ids), deliver)
        with self._lock:
            self._viewers[client.id] = client
        return client

    def watch_video(self, offer: Callable[[np.ndarray], None]) -> Client:
        """A viewer over WebRTC: `offer` gets every output picture, unencoded, from now on."""
        client = Client(next(self._ids), offer)
        with self._lock:
            self._video_viewers[client.id] = client
        return client

    def unwatch(self, client: Client) -> None:
        with self._lock:
            self._viewers.pop(client.id, None)
            self._video_viewers.pop(client.id, None)

    def video_viewers(self) -> list[Client]:
        with self._lock:
            return list(self._video_viewers.values())

    def viewers(self) -> list[Client]:
        with self._lock:
            return list(self._viewers.values())

    def driver(self) -> Client | None:
        """The page driving the stream now, if any."""
        with self._lock:
            return self._current

    def current(self, client_id: int) -> Client | None:
        """The page with this id while it drives the stream; None once another took over or it left."""
        current = self.driver()
        return current if current is not None and current.id == client_id else None

    def submit(self, client: Client, data: bytes) -> None:
        """A binary message from a page: its picture replaces any the engine has not taken yet."""
        sequence, payload = split_frame(data)
        if self.current(client.id) is None:
            return  # a page that was taken over: its last pictures no longer count
        self.counts.received += 1
        self.pictures.put(Picture(client.id, sequence, payload, time.perf_counter()))

    def submit_video(self, client: Client, frame: Any, answer: Callable[[np.ndarray], None]) -> None:
        """A frame of the page's WebRTC track (PyAV): it replaces any the engine has not taken yet; `answer`
        gets its output."""
        if self.current(client.id) is None:
            return
        self.counts.received += 1  # numbers the track's frames too: a page sends either track frames or pictures
        self.pictures.put(Picture(client.id, self.counts.received, b"", time.perf_counter(), frame, answer))

    def change(self, client: Client, message: dict[str, Any]) -> None:
        """A "controls" message: the inference thread applies the new controls before its next frame."""
        if self.current(client.id) is None:
            return
        with self._lock:
            self.controls = apply_controls(self.controls, message, self.prompts)
            self.applied.put(self.controls)

    def remote_change(self, change: dict[str, Any]) -> None:
        """A control change from another thread (OSC, MIDI): applied before the next frame; the driving page gets the
        new state, so that its sliders and prompt follow. A style picture in it (a file on this machine) is read
        now, and the page hears of it once the engine uses it."""
        picture, controls = split_style(change, self.controls)  # outside the lock: it reads a file
        with self._lock:
            self.controls = apply_changes(self.controls, controls, self.prompts, REMOTE_CONTROL_TYPES)
            self.applied.put(self.controls)
        if picture is not None:
            self.runner.styles.put(replace(picture, done=functools.partial(self._style_done, None)))
        driver = self.driver()
        if driver is not None:
            driver.deliver(self.state())

    def submit_style(self, client_id: int, data: bytes, name: str) -> None:
        """A style picture the page uploaded (POST /api/style_image): the style inbox's thread decodes and
        preprocesses it, and the inference thread hands it to the engine before its next frame after that; the page
        then gets the new state, or an error saying why it cannot be used. UploadError, and nothing changes, for a
        page that does not drive the stream or a stream without an IP-Adapter."""
        client = self.current(client_id)
        if client is None:
            raise UploadError("this page does not drive the stream (another page took over, or it reconnected); "
                              "reload it", status=409)
        if self.controls.ip_adapter_scale is None:
            raise UploadError(str(no_ip_adapter("style picture")), status=409)
        if not data:
            raise UploadError("expected a JPEG or PNG style picture as the request's body; got none")
        label = Path(name).name[:MAX_NAME_CHARS] or "uploaded picture"
        self.runner.styles.put(StylePicture(label, functools.partial(decode_picture, data, "style picture"),
                                            functools.partial(self._style_done, client)))

    def _style_done(self, sender: Client | None, problem: str | None) -> None:
        """The word on a style picture (from the style inbox's thread for one that cannot be read, else from the
        inference thread): its sender (a page; None: OSC, which hears through the log) learns why one cannot be
        used; the driving page gets the state naming one in use."""
        if problem is not None:
            if sender is None:
                log_outcome(problem)
            else:
                sender.deliver({"type": "error", "message": problem})
            return
        driver = self.driver()
        if driver is not None:
            driver.deliver(self.state())

    def page_midi(self, client: Client, message: dict[str, Any]) -> None:
        """A "midi" message: a controller on the page's machine, mapped like --midi's input. The stream's
        share is applied like OSC's; the page gets back what it does itself (blend, pause)."""
        data = midi_bytes(message)
        if self.current(client.id) is None:
            return
        mido = require("mido", "MIDI from the page")
        try:
            parsed = mido.Message.from_bytes(data)
        except ValueError as exc:
            raise ProtocolError(f"not a MIDI message: {list(data)} ({exc})") from None
        change = self.midi.change(parsed, len(self.prompts.prompts)) or {}
        shared = {name: value for name, value in change.items()
                  if control_type(name, REMOTE_CONTROL_TYPES) is not None}
        own = {name: value for name, value in change.items() if name in PAGE_CONTROLS}
        if shared:
            try:
                self.remote_change(shared)
            except ControlError as exc:
                raise ProtocolError(str(exc)) from None
        if own:
            client.deliver({"type": "page_controls", **own})

    def page_report(self, message: dict[str, Any]) -> None:
        """A "shown" message: how many outputs the page has put on screen, and at what rate."""
        count, fps = message.get("count"), message.get("fps", 0.0)
        if not isinstance(count, int) or isinstance(count, bool) or not isinstance(fps, (int, float)):
            raise ProtocolError('expected {"type": "shown", "count": <whole number>, "fps": <number>}')
        self.counts.page_shown, self.counts.page_fps = count, float(fps)

    def status(self) -> dict[str, Any]:
        timings = self.runner.timings
        return {
            "type": "status", "ai_fps": round(self.rate.rate(), 2), "accel": getattr(self.runner.engine, "mode", None),
            "received": self.counts.received, "stylized": self.counts.stylized, "generated": self.counts.generated,
            "dropped": self.counts.dropped, "viewers": len(self.viewers()) + len(self.video_viewers()),
            "step_ms": round(sum(timings.mean_ms(p) for p in ("preprocess", "engine", "postprocess")), 2),
            "server_ms": self.server_ms(),
        }

    def note_output(self, output: AiFrame) -> None:
        """An output leaves: how long since the input it shows arrived (the inference thread calls this)."""
        with self._lock:
            self._server_seconds.append(time.perf_counter() - output.source_time)

    def server_ms(self) -> float | None:
        """The median time, over the last 30 outputs, from an input's arrival at the server to its output
        leaving: the server's share of the latency a page sees (the rest is the network and the page)."""
        with self._lock:
            seconds = list(self._server_seconds)
        return round(1000 * statistics.median(seconds), 1) if seconds else None

    def state(self) -> dict[str, Any]:
        """What a page needs to draw its controls, and the counts (GET /api/state returns it too)."""
        controls = self.controls
        return {
            "type": "state", "model": self.model, "width": self.runner.width, "height": self.runner.height,
            "prompts": list(self.prompts.prompts), "prompt": self.runner.prompt(controls),
            "controls": {"strength": controls.strength, "steps": controls.steps, "ema": controls.ema,
                         "feedback": controls.feedback, "seed": controls.seed, "mirror": controls.mirror,
                         "control_scales": list(controls.control_scales),  # one slider each; none: no ControlNet
                         "ip_adapter_scale": controls.ip_adapter_scale},  # None: no IP-Adapter, and no slider
            "control_names": list(self.runner.control_names),  # the sliders' labels, in the same order
            "style_image": self.runner.styles.current,  # the name of the style picture in use; None before one
            "page": {"shown": self.counts.page_shown, "fps": self.counts.page_fps},
            "transport": self.transport.for_page(),
            **{key: value for key, value in self.status().items() if key != "type"},
        }


def inference_worker(stream: WebStream) -> None:
    """Always take the newest picture; apply changed controls between frames; answer the page it came from."""
    for _, skipped, picture in stream.pictures.newer(stream.stop):
        stream.counts.dropped += skipped
        client = stream.current(picture.client)
        if client is None:
            continue
        try:
            output = _run(stream, picture)
        except ProtocolError as exc:
            client.deliver({"type": "error", "message": str(exc)})
            continue
        stream.rate.tick()
        _hand_over(stream, client, picture, output)
        stream.note_output(output)


def _hand_over(stream: WebStream, client: Client, picture: Picture, output: AiFrame) -> None:
    """The output to the page (on its WebRTC track, or as a JPEG on its WebSocket), to every viewer (on
    its track, or as a JPEG) and to the sinks."""
    receivers = stream.viewers()
    if picture.answer is not None:
        picture.answer(output.image)
    else:
        receivers.insert(0, client)
    for viewer in stream.video_viewers():
        viewer.deliver(output.image)
    for sink in stream.sinks:
        sink.write(convert_order(output.image, output.order, sink.order))
    if receivers:  # a WebRTC page with no viewers: no JPEG to make
        message = pack_output(picture.sequence, output.source_index, encode_jpeg(output.image, stream.quality))
        for receiver in receivers:
            receiver.deliver(message)


def _run(stream: WebStream, picture: Picture) -> AiFrame:
    """The engine's output for one request: the picture stylized, or a text-to-image frame for no picture."""
    image = (decode_video(picture.video) if picture.video is not None
             else decode_picture(picture.data) if picture.data else None)
    _, controls = stream.applied.peek()
    stream.runner.apply(controls)
    if image is None:
        stream.counts.generated += 1
        return stream.runner.generate(picture.sequence, picture.time)
    stream.counts.stylized += 1
    return stream.runner.step(Frame(image, "rgb", picture.sequence, picture.time), controls.mirror)


def _guarded_worker(stream: WebStream) -> None:
    try:
        inference_worker(stream)
    except BaseException as exc:  # noqa: BLE001  the page and the server must learn of every failure
        stream.failure = exc
        logger.error("the inference thread failed: %s", first_line(exc))
        current = stream.driver()
        if current is not None:
            current.deliver({"type": "error", "fatal": True, "message": f"the engine failed: {first_line(exc)}"})
        stream.on_failure()
