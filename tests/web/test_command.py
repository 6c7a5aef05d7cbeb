"""`streamdiff web` as a user runs it: the real server process, a WebSocket page, and a real browser page."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
from browser import Browser
from cli_checks import one_line_error
from PIL import Image
from polling import wait_until

from streamdiff.cli import main
from streamdiff.stream import StreamPipeline
from streamdiff.web import protocol

pytestmark = pytest.mark.timeout(180)
TINY = ["--model", "tiny", "--render-size", "64"]


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)


def test_a_busy_port_is_a_one_line_error_before_the_model_loads(capsys, no_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["web", *TINY, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use; pick another with --port" in one_line_error(capsys)


def test_a_busy_osc_port_is_a_one_line_error_before_the_model_loads(capsys, no_model):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert main(["web", *TINY, "--port", "0", "--osc", str(port)]) == 2
    assert f"cannot listen for OSC on 127.0.0.1:{port}" in one_line_error(capsys)


@pytest.mark.parametrize("options, message", [
    (["--ssl-certfile", "cert.pem"], "https needs both --ssl-certfile and --ssl-keyfile"),
    (["--ssl-certfile", "missing-cert.pem", "--ssl-keyfile", "missing-key.pem"],
     "--ssl-certfile: no such file: missing-cert.pem"),
    (["--quality", "0"], "--quality must be in 1..100; got 0"),
    (["--port", "70000"], "--port must be in 0..65535; got 70000"),
    (["--host", "no-such-host.invalid"], "cannot listen on 'no-such-host.invalid'"),
    (["--osc", "ninety"], "--osc expects [HOST:]PORT, such as 9000 or 0.0.0.0:9000; got 'ninety'"),
    (["--ice-server", "stun.example.org"], "--ice-server expects [USERNAME:CREDENTIAL@]URL with a stun:, turn: or"),
    (["--transport", "websocket", "--ice-server", "stun:stun.example.org:3478"], "--ice-server is for WebRTC"),
])
def test_bad_server_options_are_one_line_errors(capsys, no_model, options, message):
    assert main(["web", *TINY, "--port", "0", *options]) == 2
    assert message in one_line_error(capsys)


def test_https_files_that_are_no_pem_pair_are_one_line_before_the_model_loads(tmp_path, capsys, no_model):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    assert main(["web", *TINY, "--port", "0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]) == 2
    err = one_line_error(capsys)
    assert f"--ssl-certfile {cert} and --ssl-keyfile {key} cannot be used" in err
    assert "expected a PEM certificate and its PEM private key" in err and "serving" not in err


def _pem_pair(folder, name, passphrase=None):
    """A self-signed certificate and its private key, as PEM files (the key encrypted with a passphrase)."""
    import datetime

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    cert, key_file = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return str(cert), str(key_file)


def test_a_pem_pair_passes_the_https_check_and_a_mismatched_one_is_named(tmp_path):
    from streamdiff.errors import UserError
    from streamdiff.web.command import check_certificate

    cert, key = _pem_pair(tmp_path, "one")
    other_cert, other_key = _pem_pair(tmp_path, "other")
    check_certificate(cert, key)
    check_certificate(*_pem_pair(tmp_path, "locked", passphrase=b"secret"))  # the passphrase is asked for later
    with pytest.raises(UserError, match="key values mismatch"):
        check_certificate(other_cert, key)


def test_smoothing_and_transition_options_outside_their_range_are_argument_errors(capsys, no_model):
    for options, message in ((["--ema", "1"], "argument --ema: expected a number in [0, 1)"),
                             (["--feedback", "1.5"], "argument --feedback: expected a number in [0, 1)"),
                             (["--transition-frames", "-1"], "argument --transition-frames: expected 0 or more")):
        with pytest.raises(SystemExit):
            main(["web", *TINY, "--port", "0", *options])
        assert message in one_line_error(capsys)


class Server:
    """`streamdiff web` in a process of its own, on a free port, started without waiting until it serves
    (`ready()` waits)."""

    def __init__(self, *options: str, osc_port: int | None = None) -> None:
        self.osc_port = osc_port
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": "*", "no_proxy": "*"}
        self.process = subprocess.Popen([sys.executable, "-m", "streamdiff.cli", "web", *TINY, "--port", "0", *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = ""

    def ready(self) -> Server:
        if not self.url:
            self.url = self._wait_for_address()
        return self

    def _wait_for_address(self) -> str:
        lines = []
        for line in self.process.stderr:  # the model loads first: tens of seconds on a busy machine
            lines.append(line)
            if "serving " in line:
                return line.split("serving ", 1)[1].split()[0]
        self.process.wait(10)
        raise AssertionError("the server ended before it served: " + "".join(lines))

    def state(self) -> dict:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + "api/state", timeout=10) as response:
            return json.load(response)

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a user stops it: the exit code and what it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=30)
        return self.process.returncode, out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


OSC = "<a free UDP port>"  # in a `server` marker's options: a port nothing listens on yet, kept as Server.osc_port


@dataclass(frozen=True)
class File:
    """In a `server` marker's options: a file the server reads at its start, written before it starts."""

    name: str
    content: str | bytes


class ServerPool:
    """The server of every test that asks for one (`server`, with the options of its `server` marker), each
    started while the test before it runs: a start (seconds of imports and of building the model) then overlaps
    that test instead of adding to the run."""

    def __init__(self, tests: list[pytest.Item], folder) -> None:
        self.tests = [test for test in tests if "server" in getattr(test, "fixturenames", ())]
        self.folder = folder
        self.spares: dict[str, Server] = {}

    def _start(self, test: pytest.Item) -> Server:
        marker = test.get_closest_marker("server")
        options, osc_port = [], None
        for option in marker.args if marker else ():
            if option == OSC:
                osc_port = free_udp_port()
                option = str(osc_port)
            elif isinstance(option, File):
                path = self.folder / test.name / option.name
                path.parent.mkdir(exist_ok=True)
                (path.write_bytes if isinstance(option.content, bytes) else path.write_text)(option.content)
                option = str(path)
            options.append(option)
        return Server(*options, osc_port=osc_port)

    def take(self, test: pytest.Item) -> Server:
        server = self.spares.pop(test.nodeid, None) or self._start(test)
        following = self.tests[self.tests.index(test) + 1:] if test in self.tests else []
        if following and following[0].nodeid not in self.spares:
            self.spares[following[0].nodeid] = self._start(following[0])
        return server.ready()

    def close(self) -> None:
        for spare in self.spares.values():
            spare.kill()


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory):
    pool = ServerPool([test for test in request.session.items if test.module is request.module],
                      tmp_path_factory.mktemp("server-files"))
    yield pool
    pool.close()


@pytest.fixture
def server(servers, request):
    started = servers.take(request.node)
    yield started
    started.kill()


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), color, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


DUSK = png((200, 60, 120))  # a style picture


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_server_answers_a_page_and_stops_cleanly_on_ctrl_c(server):
    import asyncio

    import websockets

    async def page() -> list[tuple[int, tuple[int, ...]]]:
        address = server.url.replace("http://", "ws://") + "ws"
        answers = []
        async with websockets.connect(address, proxy=None) as ws:
            assert json.loads(await ws.recv())["type"] == "state"
            for sequence in range(1, 5):
                await ws.send(protocol.HEADER_IN.pack(sequence) + jpeg(sequence))
                while isinstance(message := await ws.recv(), str):
                    assert json.loads(message)["type"] == "status", message
                taken, _ = protocol.HEADER_OUT.unpack_from(message)
                answers.append((taken, np.asarray(Image.open(io.BytesIO(message[8:]))).shape))
        return answers

    assert asyncio.run(page()) == [(s, (64, 64, 3)) for s in range(1, 5)]
    assert server.state()["stylized"] == 4
    code, out = server.stop()
    assert code == 0 and out.startswith("web: 4 requests received, 4 pictures stylized, 0 made from text"), out


def wait_for(server: Server, condition, what: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    state = server.state()
    while not condition(state):
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}; the server's state: {state}"
        time.sleep(0.25)  # polling another process's state: there is no event to wait on
        state = server.state()
    return state


def test_a_browser_page_streams_its_camera_and_applies_settings_from_its_address(server, tmp_path):
    query = urllib.parse.urlencode({"prompt": "ink wash", "strength": 0.5, "ema": 0.2, "mirror": 1})
    browser = Browser(f"{server.url}?{query}", tmp_path / "profile")
    try:
        state = wait_for(server, lambda s: s["page"]["shown"] >= 10, "the page to show 10 stylized pictures")
    finally:
        browser.close()
    assert state["stylized"] >= state["page"]["shown"] and state["dropped"] <= state["received"]
    assert state["prompt"] == "ink wash"
    assert state["controls"]["strength"] == 0.5 and state["controls"]["ema"] == 0.2 and state["controls"]["mirror"]


def test_the_page_keys_and_prompt_box_change_the_stream(server, tmp_path):
    browser = Browser(f"{server.url}?strength=0.5", tmp_path / "profile")
    try:
        first = wait_for(server, lambda s: s["page"]["shown"] >= 3 and s["controls"]["strength"] == 0.5,
                         "the page to stream at strength 0.5")
        gallery = first["prompts"]
        for key in ("]", "]", "e", "m"):
            browser.press(key)
        wait_for(server, lambda s: s["controls"]["strength"] == pytest.approx(0.6) and s["controls"]["mirror"]
                 and s["controls"]["ema"] == pytest.approx(0.05), "] ] e m to reach the stream")
        browser.press("n")
        wait_for(server, lambda s: s["prompt"] == gallery[1], "n to choose the next prompt")
        browser.call("Runtime.evaluate", expression="document.getElementById('prompt').select()")
        browser.call("Input.insertText", text="a neon noir alley")
        browser.press("Enter", 13)
        state = wait_for(server, lambda s: s["prompt"] == "a neon noir alley", "the typed prompt to be applied")
        shown = state["page"]["shown"]
        wait_for(server, lambda s: s["page"]["shown"] >= shown + 3, "the page to go on showing pictures")
    finally:
        browser.close()


def test_a_stream_without_a_controlnet_or_an_ip_adapter_has_no_slider_or_keys_for_one(server, tmp_path):
    browser = Browser(f"{server.url}?strength=0.5&control_scale=0.6&control_scale_1=0.3&ip_adapter_scale=0.9",
                      tmp_path / "profile")
    try:
        wait_for(server, lambda s: s["page"]["shown"] >= 3 and s["controls"]["strength"] == 0.5,
                 "the page to stream at strength 0.5 (its control_scale and ip_adapter_scale left out)")
        for key in ("c", "x", "i", "u", "]"):
            browser.press(key)
        shown = wait_for(server, lambda s: s["controls"]["strength"] == pytest.approx(0.55),
                         "] to reach the stream")["page"]["shown"]
        # A refusal of c, x, i or u would come on the WebSocket ahead of these pictures, so it would be on the page now.
        state = wait_for(server, lambda s: s["page"]["shown"] >= shown + 5, "the page to go on showing pictures")
        hidden = browser.evaluate("$('control-scales').hidden && $('control-scales').children.length === 0")
        no_style = browser.evaluate("$('style-row').hidden")
        notice = browser.evaluate("$('notice').hidden")
    finally:
        browser.close()
    assert hidden and no_style and notice  # c, x, i and u sent nothing to refuse
    assert state["controls"]["control_scales"] == [] and state["controls"]["ip_adapter_scale"] is None


def free_udp_port() -> int:
    """A UDP port nothing listens on now, for the server's --osc."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SLIDER_LABELS = ("[...document.querySelectorAll('#control-scales label')]"
                 ".map((label) => `${label.firstChild.textContent.trim()} ${label.querySelector('input').value}`)")


@pytest.mark.server("--controlnet", "canny,depth", "--control-scale", "0.8,0.4",
                    "--midi-map", File("map.yaml", "controls: {7: control_scale_2}\n"), "--osc", OSC)
def test_each_controlnet_has_a_named_slider_that_follows_the_address_keys_osc_and_midi(server, tmp_path):
    from pythonosc.udp_client import SimpleUDPClient

    browser = Browser("about:blank", tmp_path / "profile")
    scales = "[$('control_scale_1').value, $('control_scale_2').value]"
    try:
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=FAKE_MIDI)
        browser.call("Page.navigate", url=server.url)
        wait_for(server, lambda s: s["page"]["shown"] >= 1, "the page to stream")
        assert browser.evaluate(SLIDER_LABELS) == ["ControlNet canny 0.8", "ControlNet depth 0.4"]  # the engine's
        assert browser.evaluate("!$('control-scales').hidden")
        # A newer page takes the stream over; it has no third ControlNet, so control_scale_3 is left out.
        browser.call("Page.navigate", url=server.url + "?control_scale=0.7&control_scale_2=0.3&control_scale_3=0.9")
        wait_for(server, lambda s: s["page"]["shown"] >= 3 and s["controls"]["control_scales"] == [0.7, 0.3],
                 "the address's scales to reach the stream")
        assert browser.evaluate(scales) == ["0.7", "0.3"] and browser.evaluate("$('notice').hidden")
        for key in ("c", "c", "x"):
            browser.press(key)
        wait_for(server, lambda s: s["controls"]["control_scales"] == pytest.approx([0.8, 0.4]),
                 "c c x to move both scales")
        browser.run("$('control_scale_2').value = '1.25'; $('control_scale_2').dispatchEvent(new Event('input'))")
        wait_for(server, lambda s: s["controls"]["control_scales"] == pytest.approx([0.8, 1.25]),
                 "the dragged depth slider to reach the stream")
        SimpleUDPClient("127.0.0.1", server.osc_port).send_message("/streamdiff/control_scale_1", 1.5)
        wait_until(lambda: browser.evaluate(scales) == ["1.5", "1.25"], "the canny slider to follow OSC", 30.0)
        browser.run("$('midi').click()")
        wait_until(lambda: browser.evaluate("midi.inputs.length") == 1, "the page to listen to the pads", 30.0)
        browser.run("testPads.onmidimessage({ data: new Uint8Array([0xB0, 7, 127]) })")  # depth's knob all the way
        wait_until(lambda: browser.evaluate(scales) == ["1.5", "2"], "the depth slider to follow the knob", 30.0)
        assert server.state()["controls"]["control_scales"] == [1.5, 2.0]
    finally:
        browser.close()


@pytest.mark.server("--ip-adapter", "base", "--midi-map", File("map.yaml", "controls: {9: ip_adapter_scale}\n"),
                    "--osc", OSC)
def test_the_style_slider_and_picture_follow_the_address_keys_osc_and_midi_and_a_file_goes_up(server, tmp_path):
    from pythonosc.udp_client import SimpleUDPClient

    picture = tmp_path / "dusk.png"
    picture.write_bytes(DUSK)
    browser = Browser("about:blank", tmp_path / "profile")
    slider, name = "$('ip_adapter_scale').value", "$('style-name').textContent"
    try:
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=FAKE_MIDI)
        browser.call("Page.navigate", url=server.url)
        state = wait_for(server, lambda s: s["page"]["shown"] >= 1, "the page to stream")
        assert state["controls"]["ip_adapter_scale"] == 0.6 and state["style_image"] is None  # the engine's
        assert browser.evaluate("!$('style-row').hidden") and browser.evaluate(slider) == "0.6"
        assert browser.evaluate(name).startswith("no picture yet")
        browser.call("Page.navigate", url=server.url + "?ip_adapter_scale=1.2")  # a newer page takes the stream over
        wait_for(server, lambda s: s["page"]["shown"] >= 3 and s["controls"]["ip_adapter_scale"] == 1.2,
                 "the address's scale to reach the stream")
        assert browser.evaluate(slider) == "1.2"
        for key in ("i", "i", "u", "u", "u"):
            browser.press(key)
        wait_for(server, lambda s: s["controls"]["ip_adapter_scale"] == pytest.approx(1.1), "i i u u u to reach it")
        browser.run("$('ip_adapter_scale').value = '1.75'; $('ip_adapter_scale').dispatchEvent(new Event('input'))")
        wait_for(server, lambda s: s["controls"]["ip_adapter_scale"] == 1.75, "the dragged slider to reach the stream")
        SimpleUDPClient("127.0.0.1", server.osc_port).send_message("/streamdiff/ip_adapter_scale", 0.5)
        wait_until(lambda: browser.evaluate(slider) == "0.5", "the slider to follow OSC", 30.0)
        browser.run("$('midi').click()")
        wait_until(lambda: browser.evaluate("midi.inputs.length") == 1, "the page to listen to the pads", 30.0)
        browser.run("testPads.onmidimessage({ data: new Uint8Array([0xB0, 9, 127]) })")  # the style knob all the way
        wait_until(lambda: browser.evaluate(slider) == "2", "the slider to follow the knob", 30.0)
        document = browser.call("DOM.getDocument")["root"]["nodeId"]
        chooser = browser.call("DOM.querySelector", nodeId=document, selector="#style-file")["nodeId"]
        browser.call("DOM.setFileInputFiles", files=[str(picture)], nodeId=chooser)
        state = wait_for(server, lambda s: s["style_image"] == "dusk.png", "the chosen picture to steer the stream")
        wait_until(lambda: browser.evaluate(name) == "in use: dusk.png", "the page to name the picture", 30.0)
        shown = state["page"]["shown"]
        wait_for(server, lambda s: s["page"]["shown"] >= shown + 3, "the page to go on showing pictures")
        assert browser.evaluate("$('notice').hidden") and server.state()["controls"]["ip_adapter_scale"] == 2.0
    finally:
        browser.close()


@pytest.mark.server("--style-image", File("dusk.png", DUSK), "--ip-adapter-scale", "0.8")  # the base adapter
def test_the_style_picture_and_scale_of_the_command_line_are_the_pages_start(server):
    state = server.state()
    assert state["style_image"] == "dusk.png" and state["controls"]["ip_adapter_scale"] == 0.8


def test_a_page_without_a_picture_source_streams_text_to_image(server, tmp_path):
    browser = Browser(f"{server.url}?source=text&prompt=a%20lighthouse", tmp_path / "profile")
    try:
        state = wait_for(server, lambda s: s["page"]["shown"] >= 10, "the page to show 10 text-to-image frames")
    finally:
        browser.close()
    assert state["generated"] >= state["page"]["shown"] and state["stylized"] == 0
    assert state["prompt"] == "a lighthouse"


def test_the_view_page_shows_what_a_driving_page_gets(server, tmp_path):
    from websockets.sync.client import connect

    browser = Browser(server.url + "view", tmp_path / "profile")
    try:
        wait_for(server, lambda s: s["viewers"] == 1, "the view page to connect")
        with connect(server.url.replace("http://", "ws://") + "ws", proxy=None) as page:
            for sequence in range(1, 6):
                page.send(protocol.HEADER_IN.pack(sequence) + jpeg(sequence))
                while isinstance(page.recv(timeout=60), str):
                    pass  # reports; the picture comes next
        deadline = time.monotonic() + 30
        while (shown := browser.call("Runtime.evaluate", expression="viewer.shown", returnByValue=True)
               ["result"]["value"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # another process's page: there is no event to wait on
    finally:
        browser.close()
    assert shown >= 3


@pytest.mark.server("--transport", "webrtc")
def test_a_page_sends_its_camera_and_gets_the_output_over_webrtc(server, tmp_path):
    browser = Browser(server.url, tmp_path / "profile")
    try:
        state = wait_for(server, lambda s: s["page"]["shown"] >= 10, "the page to show 10 frames of the track")
        live, width, status = (browser.evaluate("rtc.live"), browser.evaluate("$('output-video').videoWidth"),
                               browser.evaluate("$('status').textContent"))
    finally:
        browser.close()
    assert live and width == 64 and "WebRTC" in status, status
    assert re.search(r"server \d+ ms · network round trip \d+ ms", status), status
    assert state["stylized"] >= state["page"]["shown"] and state["transport"]["prefer"] == "webrtc"


@pytest.mark.server("--transport", "webrtc")
def test_a_page_whose_webrtc_offer_is_refused_goes_on_over_the_websocket(server, tmp_path):
    import base64

    browser = Browser("about:blank", tmp_path / "profile")
    try:
        browser.call("Fetch.enable", patterns=[{"urlPattern": "*/api/webrtc/offer"}])
        browser.call("Page.navigate", url=server.url)
        offer = browser.event("Fetch.requestPaused")
        browser.call("Fetch.fulfillRequest", requestId=offer["requestId"], responseCode=503,
                     body=base64.b64encode(b'{"error": "refused for the test"}').decode())
        state = wait_for(server, lambda s: s["page"]["shown"] >= 5,
                         "the page to show 5 frames over the WebSocket")
        failed, notice = browser.evaluate("rtc.failed"), browser.evaluate("$('notice').textContent")
    finally:
        browser.close()
    assert failed and notice.startswith("WebRTC did not start (refused for the test): pictures go over the "
                                        "WebSocket instead"), notice
    assert state["stylized"] >= 5


@pytest.mark.server("--transport", "webrtc")
def test_the_view_page_watches_over_webrtc(server, tmp_path):
    from websockets.sync.client import connect

    browser = Browser(server.url + "view", tmp_path / "profile")
    try:
        wait_for(server, lambda s: s["viewers"] == 1, "the view page to connect")
        deadline = time.monotonic() + 60
        with connect(server.url.replace("http://", "ws://") + "ws", proxy=None) as page:
            sequence = 0
            while browser.evaluate("viewer.shown") < 3:
                assert time.monotonic() < deadline, "the view page showed fewer than 3 frames in 60 s"
                sequence += 1
                page.send(protocol.HEADER_IN.pack(sequence) + jpeg(sequence))
                while isinstance(page.recv(timeout=60), str):
                    pass  # reports; the picture comes next
        transport = browser.evaluate("viewer.transport")
    finally:
        browser.close()
    assert transport == "webrtc"


def webm(path, frames: int = 90) -> str:
    """A VP8 clip of a square crossing a grey field, which Chromium plays."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for k in range(frames):
            image = np.full((120, 160, 3), 90, np.uint8)
            image[40:80, (2 * k) % 120:][:, :40] = 230
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


@pytest.mark.server("--transport", "webrtc")
def test_a_video_file_chosen_on_the_page_goes_up_as_a_webrtc_track(server, tmp_path):
    clip = webm(tmp_path / "clip.webm")
    browser = Browser(server.url, tmp_path / "profile")
    try:
        wait_for(server, lambda s: s["page"]["shown"] >= 3, "the camera to stream over WebRTC")
        document = browser.call("DOM.getDocument")["root"]["nodeId"]
        chooser = browser.call("DOM.querySelector", nodeId=document, selector="#file")["nodeId"]
        browser.call("DOM.setFileInputFiles", files=[clip], nodeId=chooser)
        deadline = time.monotonic() + 60
        while not browser.evaluate("rtc.live && rtc.source === page.source && $('camera').src.startsWith('blob:')"):
            assert time.monotonic() < deadline, "the file did not become the WebRTC source within 60 s"
            time.sleep(0.2)  # another process's page: there is no event to wait on
        shown = server.state()["page"]["shown"]
        wait_for(server, lambda s: s["page"]["shown"] >= shown + 5, "the file's frames to come back")
        video_width = browser.evaluate("rtc.track.getSettings().width")
    finally:
        browser.close()
    assert video_width is not None and video_width <= 160  # the clip's own track, not the 640x480 camera's


# Web MIDI as the browser gives it, with one controller whose messages the test plays (headless Chromium has
# no MIDI devices of its own).
@pytest.mark.server("--osc", OSC)
def test_the_steps_slider_starts_at_the_engines_count_and_follows_the_address_keys_and_osc(server, tmp_path):
    from pythonosc.udp_client import SimpleUDPClient

    browser = Browser(server.url, tmp_path / "profile")
    slider = "$('steps').value"
    try:
        wait_for(server, lambda s: s["page"]["shown"] >= 1, "the page to stream")
        assert browser.evaluate(slider) == "2" and server.state()["controls"]["steps"] == 2  # the model's two steps
        browser.call("Page.navigate", url=server.url + "?steps=3")  # a newer page takes the stream over
        wait_for(server, lambda s: s["page"]["shown"] >= 3 and s["controls"]["steps"] == 3,
                 "the address's steps to reach the stream")
        assert browser.evaluate(slider) == "3"
        browser.press("1")
        wait_for(server, lambda s: s["controls"]["steps"] == 1, "the 1 key to reach the stream")
        shown_count = "$('steps').parentElement.querySelector('output').textContent"
        assert browser.evaluate(f"{slider} + ' ' + {shown_count}") == "1 1"
        browser.run("$('steps').value = '4'; $('steps').dispatchEvent(new Event('input'))")
        shown = wait_for(server, lambda s: s["controls"]["steps"] == 4, "the dragged slider to reach the stream")
        wait_for(server, lambda s: s["page"]["shown"] >= shown["page"]["shown"] + 3, "the page to go on at 4 steps")
        SimpleUDPClient("127.0.0.1", server.osc_port).send_message("/streamdiff/steps", 2)
        wait_for(server, lambda s: s["controls"]["steps"] == 2, "the OSC message to reach the stream")
        wait_until(lambda: browser.evaluate(slider) == "2", "the page's slider to follow the OSC message", 30.0)
    finally:
        browser.close()


FAKE_MIDI = """
window.testPads = { name: "Test pads", onmidimessage: null };
Object.defineProperty(navigator, "requestMIDIAccess", { value: async () => ({
  inputs: new Map([["pads", window.testPads]]), onstatechange: null }) });
"""


# The server has no MIDI system: the map alone opens no input of its own.
@pytest.mark.server("--midi-map", File("map.yaml", "controls: {1: {control: strength, min: 0.2, max: 0.6}, 4: blend}\n"
                                                   "notes: {60: toggle_mirror}\n"))
def test_a_midi_controller_on_the_pages_machine_drives_the_stream_through_the_servers_map(server, tmp_path):
    browser = Browser("about:blank", tmp_path / "profile")
    try:
        browser.call("Page.enable")  # without it, the script below is not kept for the next document
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=FAKE_MIDI)
        browser.call("Page.navigate", url=server.url)
        wait_for(server, lambda s: s["page"]["shown"] >= 3, "the page to stream")
        browser.run("$('midi').click()")
        wait_until(lambda: browser.evaluate("midi.inputs.length") == 1, "the page to listen to the pads", 30.0)
        for data in ([0xB0, 1, 127], [0x90, 60, 100], [0x80, 60, 0], [0xB0, 4, 127], [0xF8]):
            browser.run(f"testPads.onmidimessage({{ data: new Uint8Array({data}) }})")
        wait_for(server, lambda s: s["controls"]["strength"] == 0.6 and s["controls"]["mirror"],
                 "the knob and the pad to reach the stream")
        wait_until(lambda: browser.evaluate("$('blend').value") == "1", "the blend knob to move the page's slider",
                   30.0)
        status, mirrored = browser.evaluate("$('status').textContent"), browser.evaluate("page.mirror")
    finally:
        browser.close()
    assert "MIDI Test pads" in status and mirrored, status
