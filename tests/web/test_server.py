"""The server with the tiny model behind it: pictures in and out, controls, bad input, a second page, failures.

The engine is the real tiny stream (64x64, two steps, CPU); the page is starlette's test client.
"""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from streamdiff.web import protocol
from streamdiff.web.server import TAKEN_OVER, create_app

pytestmark = pytest.mark.timeout(60)


def picture(seed: int, width: int = 80, height: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def frame(sequence: int, seed: int | None = None) -> bytes:
    return protocol.HEADER_IN.pack(sequence) + picture(sequence if seed is None else seed)


def next_picture(ws) -> bytes:
    """The next picture message from the server, skipping status reports; errors fail the test."""
    while True:
        message = ws.receive()
        if message.get("bytes") is not None:
            return message["bytes"]
        report = json.loads(message["text"])
        assert report["type"] in ("status", "state"), report


def next_output(ws) -> tuple[int, int, np.ndarray]:
    data = next_picture(ws)
    taken, shown = protocol.HEADER_OUT.unpack_from(data)
    return taken, shown, np.asarray(Image.open(io.BytesIO(data[8:])))


def next_text(ws, kind: str) -> dict:
    """The next text message of type `kind`, skipping any other."""
    while True:
        message = ws.receive()
        if message.get("text") is not None and json.loads(message["text"])["type"] == kind:
            return json.loads(message["text"])


def next_error(ws) -> dict:
    return next_text(ws, "error")


@pytest.fixture
def client(stream):
    with TestClient(create_app(stream)) as client:
        yield client


def test_each_picture_comes_back_stylized_at_the_render_size(client, stream, tiny_engine):
    latency = tiny_engine.config.latency_frames
    with client.websocket_connect("/ws") as ws:
        state = ws.receive_json()
        assert (state["type"], state["model"], state["width"], state["height"]) == ("state", "tiny", 64, 64)
        assert state["prompts"] == ["a watercolor", "ink wash"] and state["prompt"] == "a watercolor"
        outputs = []
        for sequence in range(1, 6):
            ws.send_bytes(frame(sequence))
            outputs.append(next_output(ws))
    for sequence, (taken, shown, image) in enumerate(outputs, start=1):
        assert taken == sequence and image.shape == (64, 64, 3)
        assert shown == max(1, sequence - latency)  # the stream batch shows the frame that entered `latency` calls ago
    assert outputs[-1][2].std() > 0
    assert (stream.counts.received, stream.counts.stylized) == (5, 5)


def test_the_status_says_how_long_the_server_held_the_pictures_its_outputs_show(client):
    assert client.get("/api/state").json()["server_ms"] is None  # nothing went through yet
    start = time.perf_counter()
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        for sequence in range(1, 6):
            ws.send_bytes(frame(sequence))
            next_output(ws)
    elapsed_ms = 1000 * (time.perf_counter() - start)
    server_ms = client.get("/api/state").json()["server_ms"]
    assert 0 < server_ms < elapsed_ms


def test_the_sequence_number_alone_gets_a_text_to_image_frame_of_the_prompt(client, stream, tiny_engine):
    latency = tiny_engine.config.latency_frames
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        outputs = []
        for sequence in range(1, 4):
            ws.send_bytes(protocol.HEADER_IN.pack(sequence))
            outputs.append(next_output(ws))
        ws.send_text(json.dumps({"type": "controls", "prompt": "ink wash"}))  # transition_frames=0: at once
        for sequence in range(4, 4 + latency + 1):
            ws.send_bytes(protocol.HEADER_IN.pack(sequence))
            outputs.append(next_output(ws))
    assert [taken for taken, _, _ in outputs] == list(range(1, 5 + latency))
    assert all(image.shape == (64, 64, 3) for _, _, image in outputs)
    # The same prompt and fixed noise draw the same picture; another prompt draws another.
    assert np.array_equal(outputs[latency][2], outputs[latency + 1][2])
    assert np.abs(outputs[-1][2].astype(int) - outputs[2][2].astype(int)).mean() > 1
    assert (stream.counts.generated, stream.counts.stylized) == (4 + latency, 0)


def test_the_model_runs_on_the_inference_thread_only(client, tiny_engine, monkeypatch):
    threads = []
    img2img = tiny_engine.img2img

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return img2img(*args, **kwargs)

    monkeypatch.setattr(tiny_engine, "img2img", recording)
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        for sequence in range(1, 4):
            ws.send_bytes(frame(sequence))
            next_output(ws)
    assert threads == ["streamdiff-web-inference"] * 3


def test_controls_reach_the_engine_before_its_next_frame(client, stream, tiny_engine):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(frame(1))
        next_output(ws)
        ws.send_text(json.dumps({"type": "controls", "prompt": "neon noir", "strength": 0.5, "ema": 0.2}))
        ws.send_bytes(frame(2))
        next_output(ws)
    assert tiny_engine.strength == pytest.approx(0.5)
    assert tiny_engine.config.ema == pytest.approx(0.2)
    assert stream.runner.prompt(stream.runner.applied) == "neon noir"
    state = client.get("/api/state").json()
    assert state["prompt"] == "neon noir" and state["prompts"][-1] == "neon noir"
    assert state["controls"]["strength"] == 0.5 and state["stylized"] == 2


def test_a_pages_steps_reach_the_engine_and_remote_changes_come_back(client, stream, tiny_engine):
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["controls"]["steps"] == 2  # the engine's own
        ws.send_bytes(frame(1))
        next_output(ws)
        ws.send_text(json.dumps({"type": "controls", "steps": 3}))
        ws.send_bytes(frame(2))
        next_output(ws)
        assert tiny_engine.config.denoising_steps == 3 and tiny_engine.strength == pytest.approx(0.6)
        stream.remote_change({"steps": 1})  # what an OSC message or a MIDI knob hands over
        assert next_text(ws, "state")["controls"]["steps"] == 1  # the page's slider follows
        ws.send_bytes(frame(3))
        next_output(ws)
        assert tiny_engine.config.denoising_steps == 1
        ws.send_text(json.dumps({"type": "controls", "steps": 5}))
        assert "steps must be in [1, 4]; got 5" in next_error(ws)["message"]
    assert stream.controls.steps == 1 and client.get("/api/state").json()["controls"]["steps"] == 1


def test_the_state_names_each_controlnet_and_its_scale(client, start_web_stream, controlnet_engine,
                                                      steered_engine):
    state = client.get("/api/state").json()
    assert state["controls"]["control_scales"] == [] and state["control_names"] == []  # no slider for one
    with TestClient(create_app(start_web_stream(controlnet_engine))) as steered:
        state = steered.get("/api/state").json()
        assert state["controls"]["control_scales"] == [0.8] and state["control_names"] == ["controlnet 1"]
    with TestClient(create_app(start_web_stream(steered_engine))) as steered:
        with steered.websocket_connect("/ws") as ws:
            state = ws.receive_json()
    assert state["controls"]["control_scales"] == [0.8, 0.4] and state["control_names"] == ["canny", "depth"]


def test_a_pages_control_scale_reaches_the_controlnet_and_remote_changes_come_back(start_web_stream,
                                                                                   controlnet_engine):
    stream = start_web_stream(controlnet_engine)
    with TestClient(create_app(stream)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(frame(1))
        next_output(ws)
        ws.send_text(json.dumps({"type": "controls", "control_scale": 1.25}))
        ws.send_bytes(frame(2))
        next_output(ws)
        assert controlnet_engine.control_scales == (1.25,)
        stream.remote_change({"control_scale_1": 0.4})  # what an OSC message or a MIDI knob hands over
        assert next_text(ws, "state")["controls"]["control_scales"] == [0.4]  # the page's slider follows
        ws.send_text(json.dumps({"type": "controls", "control_scale": 6}))
        assert "control_scale must be in [0, 5]; got 6" in next_error(ws)["message"]
    assert stream.controls.control_scales == (0.4,)


def test_each_controlnets_scale_follows_the_page_remotes_and_midi_and_a_missing_one_is_refused(start_web_stream,
                                                                                            steered_engine):
    from streamdiff.app.midi_map import Translator, parse_map

    stream = start_web_stream(steered_engine)
    stream.midi = Translator(parse_map({"controls": {7: "control_scale_1"}}))  # --midi-map's, for the page's MIDI
    with TestClient(create_app(stream)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "controls", "control_scale_2": 1.25}))
        ws.send_bytes(frame(1))
        next_output(ws)
        assert steered_engine.control_scales == (0.8, 1.25)
        stream.remote_change({"control_scale": 0.5})  # /streamdiff/control_scale 0.5: every ControlNet
        assert next_text(ws, "state")["controls"]["control_scales"] == [0.5, 0.5]
        ws.send_text(json.dumps({"type": "midi", "data": [0xB0, 7, 127]}))  # the first's knob all the way: 2
        assert next_text(ws, "state")["controls"]["control_scales"] == [2.0, 0.5]
        ws.send_text(json.dumps({"type": "controls", "strength": 0.9, "control_scale_3": 1.0}))
        assert next_error(ws)["message"] == ("control_scale_3: this stream has 2 ControlNets; expected control_scale_1, "
                                             "control_scale_2 (one, counted from 1) or control_scale (all)")
        ws.send_bytes(frame(2))
        next_output(ws)
    assert steered_engine.control_scales == (2.0, 0.5) and stream.controls.strength == 0.6


def test_a_stream_without_a_controlnet_refuses_a_pages_control_scale_and_changes_nothing(client, stream):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "controls", "strength": 0.9, "control_scale": 0.6}))
        message = next_error(ws)["message"]
        ws.send_text(json.dumps({"type": "controls", "control_scale_1": 0.6}))
        second = next_error(ws)["message"]
    assert message == "control_scale steers a ControlNet, and this stream has none (start it with --controlnet)"
    assert second == "control_scale_1 steers a ControlNet, and this stream has none (start it with --controlnet)"
    assert stream.controls.strength == 0.6 and stream.controls.control_scales == ()


def test_bad_messages_get_an_error_and_the_page_goes_on(client, stream):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(protocol.HEADER_IN.pack(1) + b"definitely not a jpeg")
        assert "expected a JPEG or PNG picture" in next_error(ws)["message"]
        ws.send_bytes(b"\x01")
        assert "4-byte sequence number" in next_error(ws)["message"]
        ws.send_text(json.dumps({"type": "controls", "strength": 7}))
        assert "strength must be in (0, 1]" in next_error(ws)["message"]
        ws.send_text(json.dumps({"type": "dance"}))
        assert 'unknown message type \'dance\'; expected "controls", "shown" or "midi"' in next_error(ws)["message"]
        ws.send_text("not json")
        assert "expected a JSON object" in next_error(ws)["message"]
        ws.send_bytes(frame(2))
        taken, _, image = next_output(ws)
    assert taken == 2 and image.shape == (64, 64, 3)
    assert stream.controls.strength != 7 and stream.failure is None


def test_a_newer_page_takes_the_stream_and_the_older_one_is_told(client, stream):
    with client.websocket_connect("/ws") as first:
        first.receive_json()
        first.send_bytes(frame(1))
        next_output(first)
        with client.websocket_connect("/ws") as second:
            second.receive_json()
            error = next_error(first)
            assert error["fatal"] and "another page took over the stream" in error["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    first.receive_json()  # status reports until the close, which raises
            assert closed.value.code == TAKEN_OVER
            second.send_bytes(frame(1, seed=5))
            taken, _, image = next_output(second)
    assert taken == 1 and image.shape == (64, 64, 3)


def test_viewers_get_every_output_the_driving_page_gets(client, stream):
    with client.websocket_connect("/ws/view") as viewer:
        assert viewer.receive_json()["type"] == "state"
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            for sequence in range(1, 4):
                ws.send_bytes(frame(sequence))
                assert next_picture(viewer) == next_picture(ws)
            assert client.get("/api/state").json()["viewers"] == 1
            viewer.send_text("viewers send nothing; this is ignored")
            ws.send_bytes(frame(4))
            assert next_picture(viewer) == next_picture(ws)
    assert client.get("/view").status_code == 200


def test_the_page_reports_what_it_showed(client):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "shown", "count": 12, "fps": 29.5}))
        ws.send_text(json.dumps({"type": "shown", "count": "many"}))
        assert '"count": <whole number>' in next_error(ws)["message"]
    assert client.get("/api/state").json()["page"] == {"shown": 12, "fps": 29.5}


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    for name in ("app.js", "webrtc.js", "transport.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/missing.js").status_code == 404


def test_an_engine_failure_tells_the_page_and_stops_the_server(client, stream, tiny_engine, monkeypatch):
    stopped = threading.Event()
    stream.on_failure = stopped.set

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(tiny_engine, "img2img", failing)
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(frame(1))
        error = next_error(ws)
    assert error["fatal"] and error["message"] == "the engine failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert stopped.wait(5.0) and isinstance(stream.failure, RuntimeError)


def test_midi_from_the_page_is_mapped_like_the_servers_input(client, stream):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "midi", "data": [0xB0, 1, 127]}))  # knob 1: strength all the way
        ws.send_text(json.dumps({"type": "midi", "data": [0x90, 45, 100]}))  # pad: next prompt
        state = next_text(ws, "state")
        assert state["controls"]["strength"] == 1.0
        assert next_text(ws, "state")["prompt"] == "ink wash"
        ws.send_text(json.dumps({"type": "midi", "data": [0xB0, 4, 127]}))  # camera blend: the page's own
        assert next_text(ws, "page_controls") == {"type": "page_controls", "blend": 1.0}
        ws.send_text(json.dumps({"type": "midi", "data": [0x90, 48, 100]}))
        assert next_text(ws, "page_controls") == {"type": "page_controls", "toggle_pause": True}
        ws.send_text(json.dumps({"type": "midi", "data": [0xC0, 5]}))  # program 5: no sixth prompt
        assert "prompt_index must be in [0, 1]; got 5" in next_error(ws)["message"]
        ws.send_text(json.dumps({"type": "midi", "data": [300]}))
        assert 'expected {"type": "midi", "data": [1 to 3 bytes, each 0-255]}; got [300]' in next_error(ws)["message"]
        ws.send_text(json.dumps({"type": "midi", "data": [0x40, 1]}))  # no status byte
        assert "not a MIDI message: [64, 1]" in next_error(ws)["message"]
    assert stream.controls.strength == 1.0 and stream.controls.prompt_index == 1


def png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def frames_until_style(ws, name: str, first: int, timeout: float = 20.0) -> int:
    """Send frames from `first` on, each read back, until the page hears that the style picture `name` is in use:
    the inference thread takes it before the first frame after its own thread prepared it. The frame that took it."""
    deadline = time.monotonic() + timeout
    sequence = first
    while True:
        assert time.monotonic() < deadline, f"waited {timeout:g} s for a frame to take {name}"
        ws.send_bytes(frame(sequence))
        in_use = False
        while True:  # the state comes as the engine takes the picture, before the frame's output
            message = ws.receive()
            if message.get("bytes") is not None:
                if protocol.HEADER_OUT.unpack_from(message["bytes"])[0] == sequence:
                    break
                continue
            report = json.loads(message["text"])
            assert report["type"] in ("status", "state"), report
            in_use = in_use or report.get("style_image") == name
        if in_use:
            return sequence
        sequence += 1


def test_the_state_carries_the_style_scale_and_the_picture_in_use(client, start_web_stream, styled_engine):
    state = client.get("/api/state").json()
    assert state["controls"]["ip_adapter_scale"] is None and state["style_image"] is None  # no adapter: no slider
    with TestClient(create_app(start_web_stream(styled_engine))) as styled, styled.websocket_connect("/ws") as ws:
        state = ws.receive_json()
    assert state["controls"]["ip_adapter_scale"] == 0.6 and state["style_image"] is None


def test_a_pages_style_picture_is_decoded_on_its_own_thread_and_encoded_on_the_inference_thread(
        start_web_stream, styled_engine, monkeypatch):
    from streamdiff.ip_adapter import StylePixels
    from streamdiff.web import bridge

    threads, handed, decoded, made = [], [], [], []
    set_style_image, style_pixels, decode_picture = (styled_engine.set_style_image, styled_engine.style_pixels,
                                                     bridge.decode_picture)

    def recording(picture):
        threads.append(threading.current_thread().name)
        handed.append(picture)
        set_style_image(picture)

    def decoding(data, role=None):
        if role == "style picture":  # the page's frames are decoded too, on the inference thread
            decoded.append(threading.current_thread().name)
        return decode_picture(data, role)

    def making(picture):
        made.append(threading.current_thread().name)
        return style_pixels(picture)

    monkeypatch.setattr(styled_engine, "set_style_image", recording)
    monkeypatch.setattr(styled_engine, "style_pixels", making)
    monkeypatch.setattr(bridge, "decode_picture", decoding)
    stream = start_web_stream(styled_engine)
    with TestClient(create_app(stream)) as client, client.websocket_connect("/ws") as ws:
        page = ws.receive_json()["client"]
        ws.send_text(json.dumps({"type": "controls", "ip_adapter_scale": 1.25}))
        ws.send_bytes(frame(1))
        next_output(ws)
        assert styled_engine.ip_adapter_scale == 1.25
        sent = client.post(f"/api/style_image?client={page}&name=dusk.png", content=png((200, 60, 120)),
                           headers={"Content-Type": "image/png"})
        assert (sent.status_code, sent.json()) == (202, {"accepted": True})
        assert not styled_engine.has_style_image  # handed over: the inference thread takes it once it is ready
        taken = frames_until_style(ws, "dusk.png", 2)
        assert styled_engine.has_style_image and stream.state()["style_image"] == "dusk.png"
        stream.remote_change({"ip_adapter_scale": 0.4})  # what an OSC message or a MIDI knob hands over
        assert next_text(ws, "state")["controls"]["ip_adapter_scale"] == 0.4  # the page's slider follows
        ws.send_text(json.dumps({"type": "controls", "ip_adapter_scale": 6}))
        assert "ip_adapter_scale must be in [0, 5]; got 6" in next_error(ws)["message"]
        ws.send_text(json.dumps({"type": "controls", "style_image": "/etc/hostname"}))  # a page names no server file
        assert next_error(ws)["message"].startswith("unknown control style_image; expected some of prompt")
        ws.send_bytes(frame(taken + 1))
        assert next_output(ws)[0] == taken + 1
    assert threads == ["streamdiff-web-inference"] and styled_engine.ip_adapter_scale == 0.4
    assert decoded == made == ["streamdiff-style"] and isinstance(handed[0], StylePixels)


def test_a_style_picture_the_stream_cannot_use_is_refused_and_changes_nothing(start_web_stream, styled_engine,
                                                                             stream, monkeypatch):
    import streamdiff.web.server as server

    with TestClient(create_app(stream)) as client, client.websocket_connect("/ws") as ws:
        page = ws.receive_json()["client"]
        refused = client.post(f"/api/style_image?client={page}", content=png((1, 2, 3)))
    assert refused.status_code == 409 and refused.json()["error"] == (
        "style picture: this stream has no IP-Adapter (start it with --ip-adapter or --style-image)")
    styled = start_web_stream(styled_engine)
    with TestClient(create_app(styled)) as client, client.websocket_connect("/ws") as ws:
        page = ws.receive_json()["client"]
        sent = client.post(f"/api/style_image?client={page}&name=notes.png", content=b"not a picture at all")
        assert sent.status_code == 202  # its bytes are looked at on the style picture's thread, no frame needed
        assert next_error(ws)["message"] == "expected a JPEG or PNG style picture; its 20 bytes are neither"
        for query, body, status, error in [
            ("", png((1, 2, 3)), 400, "expected ?client=N, the number the page's connection was given"),
            (f"?client={page + 1}", png((1, 2, 3)), 409, "this page does not drive the stream"),
            (f"?client={page}", b"", 400, "expected a JPEG or PNG style picture as the request's body; got none"),
        ]:
            refused = client.post(f"/api/style_image{query}", content=body)
            assert refused.status_code == status and refused.json()["error"].startswith(error)
        monkeypatch.setattr(server, "MAX_FRAME_BYTES", 100)
        too_large = client.post(f"/api/style_image?client={page}", content=png((1, 2, 3), size=200))
        assert too_large.status_code == 413 and too_large.json()["error"].startswith("a style picture may be at most")
        ws.send_bytes(frame(1))
        next_output(ws)
    assert not styled_engine.has_style_image and styled.state()["style_image"] is None


def test_an_osc_style_picture_reaches_the_engine_and_the_driving_page_hears_of_it(start_web_stream, styled_engine,
                                                                                 tmp_path):
    from streamdiff.app.remote import ControlError

    path = tmp_path / "dusk.png"
    path.write_bytes(png((200, 60, 120)))
    stream = start_web_stream(styled_engine)
    with TestClient(create_app(stream)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        with pytest.raises(ControlError, match="style picture not found: .*missing.png"):
            stream.remote_change({"style_image": str(tmp_path / "missing.png")})  # /streamdiff/style_image PATH
        stream.remote_change({"style_image": str(path)})
        assert next_text(ws, "state")["style_image"] is None  # the change arrived; the picture waits for a frame
        frames_until_style(ws, "dusk.png", 1)
        assert client.get("/api/state").json()["style_image"] == "dusk.png"
    assert styled_engine.has_style_image
