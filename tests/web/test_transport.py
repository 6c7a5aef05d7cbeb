"""The transport settings: ICE servers as the command line takes them, and what the page is told."""

from __future__ import annotations

import pytest

from streamdiff.errors import UserError
from streamdiff.web.command import choose_transport
from streamdiff.web.transport import IceServer, Transport, TransportMode


@pytest.mark.parametrize("text, server", [
    ("stun:stun.example.org:3478", IceServer("stun:stun.example.org:3478")),
    ("alice:s3cret:x@turn:turn.example.org:3478?transport=tcp",
     IceServer("turn:turn.example.org:3478?transport=tcp", "alice", "s3cret:x")),
    (" turns:relay.example.org:443 ", IceServer("turns:relay.example.org:443")),
])
def test_ice_servers_are_read_with_their_credentials(text, server):
    assert IceServer.parse(text) == server


@pytest.mark.parametrize("text", ["stun.example.org:3478", "http://example.org", "alice@turn:host:3478", "stun:"])
def test_an_ice_server_that_is_not_a_stun_or_turn_url_is_refused_with_an_example(text):
    with pytest.raises(ValueError, match=r"--ice-server expects \[USERNAME:CREDENTIAL@\]URL .* got"):
        IceServer.parse(text)


def test_the_page_is_told_the_transports_and_the_ice_servers_in_the_browsers_form():
    transport = Transport(TransportMode.AUTO, True, (IceServer("stun:a:1"), IceServer("turn:b:2", "u", "p")))
    assert transport.for_page() == {"webrtc": True, "prefer": "auto", "ice_servers": [
        {"urls": "stun:a:1"}, {"urls": "turn:b:2", "username": "u", "credential": "p"}]}


def test_auto_offers_webrtc_only_where_its_library_is_installed(monkeypatch):
    assert choose_transport(TransportMode.AUTO, []).webrtc
    assert not choose_transport(TransportMode.WEBSOCKET, []).webrtc
    monkeypatch.setitem(__import__("sys").modules, "aiortc", None)  # as if aiortc were not installed
    assert not choose_transport(TransportMode.AUTO, []).webrtc
    with pytest.raises(UserError, match=r"--transport webrtc needs aiortc: pip install 'streamdiff\[web\]'"):
        choose_transport(TransportMode.WEBRTC, [])
    with pytest.raises(UserError, match="--ice-server is for WebRTC, which is off here"):
        choose_transport(TransportMode.AUTO, [IceServer("stun:a:1")])
