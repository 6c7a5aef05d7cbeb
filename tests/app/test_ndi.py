"""NDI in and out over this machine's loopback: the sink's pictures arrive at a source found by name or
by address, with their colours; bad names and addresses are one-line errors; the camera app runs on NDI.

mDNS does not reach inside a container, so NDI's own configuration points its search at 127.0.0.1 (what a
user does for a sender on another subnet). All NDI tests live in this file: the runtime reads that
configuration once, when the process first starts it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest
from cli_checks import one_line_error

from streamdiff.app import ndi as ndi_io
from streamdiff.app.sources import open_source
from streamdiff.cli import main
from streamdiff.errors import UserError

pytest.importorskip("NDIlib")

TINY = ["--model", "tiny", "--render-size", "64", "--display-size", "64"]


@pytest.fixture(scope="module", autouse=True)
def _loopback_search(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ndi-config")
    (folder / "ndi-config.v1.json").write_text(json.dumps({"ndi": {"networks": {"ips": "127.0.0.1"}}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NDI_CONFIG_DIR", str(folder))
        ndi_io.ndi_library.cache_clear()
        yield
    ndi_io.ndi_library.cache_clear()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _picture(height: int = 96, width: int = 128) -> np.ndarray:
    """BGR: a horizontal ramp in blue, a vertical one in green, and a pure red block."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    picture[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    picture[16:48, 16:48] = (0, 0, 255)
    return picture


def _receive(sink: ndi_io.NdiSink, source: ndi_io.NdiSource, picture: np.ndarray, seconds: float = 10.0):
    """Send until the receiver, which connects in the background, gets a frame."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sink.write(picture)
        received = source.read()
        if received is not None:
            return received
    raise AssertionError("no NDI frame arrived")


def test_spec_forms_and_their_errors():
    assert ndi_io.parse_spec("ndi") == ndi_io.NdiSpec()
    assert ndi_io.parse_spec(" NDI:Resolume Out ") == ndi_io.NdiSpec(name="Resolume Out")
    assert ndi_io.parse_spec("ndi://10.0.0.5:5961") == ndi_io.NdiSpec(address="10.0.0.5:5961")
    assert ndi_io.sender_name("ndi") == "streamdiff" and ndi_io.sender_name("ndi:stage left") == "stage left"
    for bad, words in [("ndi:", "name is missing"), ("ndi://host", "ndi://HOST:PORT"),
                       ("ndi://host:99999", "ndi://HOST:PORT"), ("camera", "ndi:NAME")]:
        with pytest.raises(ValueError, match=words):
            ndi_io.parse_spec(bad)
    with pytest.raises(ValueError, match="takes a name, not an address"):
        ndi_io.sender_name("ndi://10.0.0.5:5961")


def test_a_picture_arrives_by_name_and_by_address_with_its_colours():
    name = _unique("colours")
    picture = _picture()
    sink = ndi_io.NdiSink(name, fps=25.0)
    try:
        assert sink.source_name.endswith(f"({name})")
        by_name = open_source(f"ndi:{name}")
        try:
            assert by_name.name == f"NDI {sink.source_name}" and by_name.order == "bgr" and by_name.live
            received = _receive(sink, by_name, picture)
            assert by_name.fps == pytest.approx(25.0)
        finally:
            by_name.close()
        # NDI compresses (SpeedHQ): close, not equal; the red block stays red, the ramps keep their direction.
        assert received.shape == picture.shape and received.dtype == np.uint8
        assert np.abs(received.astype(int) - picture).mean() < 6
        assert (received[20:44, 20:44, 2] > 200).all() and (received[20:44, 20:44, :2] < 50).all()
        assert received[60, 120, 0] > received[60, 60, 0] + 100 and received[90, 60, 1] > received[50, 60, 1] + 100

        address = ndi_io.find_source(name).url_address
        by_address = open_source(f"ndi://{address}")
        try:
            assert by_address.name == f"NDI {address}"
            assert np.abs(_receive(sink, by_address, picture).astype(int) - picture).mean() < 6
        finally:
            by_address.close()
    finally:
        sink.close()


def test_a_thread_of_its_own_sends_the_newest_picture_and_close_ends_it(monkeypatch):
    """While the sender is busy with one picture, of the ones written meanwhile only the newest goes out."""
    library = ndi_io.ndi_library()
    real_send = library.send_send_video_v2
    sent: list[tuple[str, int]] = []
    first_sent, release = threading.Event(), threading.Event()

    def recording_send(sender, frame):
        sent.append((threading.current_thread().name, int(frame.data[0, 0, 0])))
        first_sent.set()
        assert release.wait(10)
        real_send(sender, frame)

    monkeypatch.setattr(library, "send_send_video_v2", recording_send)
    sink = ndi_io.NdiSink(_unique("newest"))
    try:
        for level in (10, 20, 30, 40):
            sink.write(np.full((8, 8, 3), level, np.uint8))
            if level == 10:
                assert first_sent.wait(10)
        release.set()
        deadline = time.monotonic() + 10
        while sink.sent.count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        release.set()
        sink.close()
    assert sent == [("streamdiff-ndi", 10), ("streamdiff-ndi", 40)]
    assert not any(t.name == "streamdiff-ndi" for t in threading.enumerate())


def test_a_source_that_stops_is_reported_lost():
    name = _unique("lost")
    sink = ndi_io.NdiSink(name)
    source = ndi_io.NdiSource(f"ndi:{name}", lost_seconds=0.5)
    try:
        _receive(sink, source, _picture())
        sink.close()
        started = time.monotonic()
        while source.read() is not None:  # a frame or two may still be queued
            assert time.monotonic() - started < 5
    finally:
        sink.close()
        source.close()


def test_an_unknown_or_ambiguous_name_lists_the_sources_seen():
    prefix = _unique("twin")
    sinks = [ndi_io.NdiSink(f"{prefix}-{side}") for side in ("left", "right")]
    try:
        with pytest.raises(UserError, match=r"no NDI source named 'nowhere' found in 0.5 s; sources seen: .*"
                                            rf"\({prefix}-left\).*ndi://HOST:PORT"):
            ndi_io.NdiSource("ndi:nowhere", find_seconds=0.5)
        with pytest.raises(UserError, match=rf"2 NDI sources match {prefix}: .*name one with ndi:NAME"):
            ndi_io.NdiSource(f"ndi:{prefix}", find_seconds=1.0)
        # A full name or the part in brackets picks one, ignoring case.
        picked = ndi_io.find_source(f"{prefix}-RIGHT")
        assert picked.ndi_name == sinks[1].source_name
    finally:
        for sink in sinks:
            sink.close()


def test_without_the_bindings_the_hint_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "NDIlib", None)
    ndi_io.ndi_library.cache_clear()
    try:
        with pytest.raises(UserError, match=r"ndi-python: pip install 'streamdiff\[ndi\]'"):
            ndi_io.NdiSink("nothing")
    finally:
        monkeypatch.undo()
        ndi_io.ndi_library.cache_clear()


def test_the_camera_app_stylizes_an_ndi_source_and_publishes_the_result(capsys):
    feed, result = _unique("feed"), _unique("styled")
    feeder = ndi_io.NdiSink(feed, fps=30.0)
    stop = threading.Event()

    def keep_feeding() -> None:
        while not stop.is_set():
            feeder.write(_picture())
            time.sleep(1 / 30)

    feeding = threading.Thread(target=keep_feeding, name="ndi-feed")
    feeding.start()
    codes: list[int] = []
    app = threading.Thread(target=lambda: codes.append(main(
        ["camera", *TINY, "--camera", f"ndi:{feed}", "--output", f"ndi:{result}", "--duration", "6"])))
    try:
        app.start()
        output = ndi_io.NdiSource(f"ndi:{result}", find_seconds=20.0)
        try:
            styled = None
            deadline = time.monotonic() + 20
            while styled is None and time.monotonic() < deadline:
                styled = output.read()
        finally:
            output.close()
        app.join(30)
    finally:
        stop.set()
        feeding.join()
        feeder.close()
    assert codes == [0]
    assert styled is not None and styled.shape == (64, 64, 3) and styled.std() > 0
    out = capsys.readouterr().out
    assert "frames captured" in out and "stylized" in out


def test_bad_ndi_values_are_one_line_errors(capsys):
    assert main(["camera", *TINY, "--camera", "ndi://nohost", "--output", "none"]) == 2
    assert "ndi://HOST:PORT" in one_line_error(capsys)
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "ndi://10.0.0.5:5961"]) == 2
    assert "--output ndi:NAME" in one_line_error(capsys)


def test_the_web_page_stream_publishes_every_output_over_ndi_and_closes_it(tiny_engine):
    from streamdiff.app.engine_io import EngineRunner
    from streamdiff.app.keys import Controls, engine_controls
    from streamdiff.web.bridge import WebStream
    from streamdiff.web.protocol import HEADER_IN, PromptBook

    name = _unique("web")
    runner = EngineRunner(tiny_engine, ["a watercolor"], transition_frames=0)
    sink = ndi_io.NdiSink(name)
    web = WebStream(runner, Controls(seed=1, **engine_controls(tiny_engine)), PromptBook(runner.prompts), sinks=[sink])
    web.start()
    try:
        page = web.connect(lambda message: None)
        output = ndi_io.NdiSource(f"ndi:{name}", lost_seconds=0.5)
        try:
            made, deadline = None, time.monotonic() + 20
            while made is None and time.monotonic() < deadline:
                web.submit(page, HEADER_IN.pack(web.counts.received))  # no picture: a text-to-image frame
                made = output.read()
        finally:
            output.close()
    finally:
        assert web.close(timeout=5.0)
    assert made is not None and made.shape == (64, 64, 3) and made.std() > 0 and web.counts.generated >= 1
    assert sink.sent.count >= 1 and not any(t.name == "streamdiff-ndi" for t in threading.enumerate())


def test_the_web_command_opens_its_ndi_outputs_and_refuses_other_ones(monkeypatch, capsys):
    from streamdiff.web import command

    published: list[list[str]] = []

    def serve_nothing(stream, listener, *args):
        published.append([sink.source_name for sink in stream.sinks])
        stream.close()
        listener.close()
        return "web: served nothing"

    monkeypatch.setattr(command, "serve", serve_nothing)
    names = [_unique("page"), _unique("page")]
    assert main(["web", *TINY[:2], "--port", "0", "--transport", "websocket",
                 "--output", f"ndi:{names[0]}", "--output", f"ndi:{names[1]}"]) == 0
    assert [[n.rsplit("(", 1)[1] for n in sent] for sent in published] == [[f"{names[0]})", f"{names[1]})"]]
    capsys.readouterr()
    assert main(["web", *TINY[:2], "--port", "0", "--output", "out.mp4"]) == 2
    assert "publishes over NDI: ndi or ndi:NAME" in one_line_error(capsys)
