"""How the page's pictures travel: JPEGs over its WebSocket, or video tracks over WebRTC.

Settings only (no WebRTC library here): the server's choice, the ICE servers pages and server use to find
a route to each other, and what the page is told of both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

# [USERNAME:CREDENTIAL@]URL, the URL as the browser's RTCIceServer takes it (stun:, turn: or turns:).
_ICE_SERVER = re.compile(r"^(?:(?P<username>[^:@]+):(?P<credential>[^@]*)@)?(?P<url>(?:stun|turns?):[^\s@]+)$")


class TransportMode(str, Enum):
    """`--transport`: AUTO offers WebRTC to pages opened from other machines (where a JPEG per frame in each
    direction weighs most) and keeps the WebSocket on the serving machine itself."""

    AUTO = "auto"
    WEBSOCKET = "websocket"
    WEBRTC = "webrtc"


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server, given as [USERNAME:CREDENTIAL@]URL, such as stun:stun.example.org:3478 or
    user:secret@turn:turn.example.org:3478."""

    url: str
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, text: str) -> IceServer:
        match = _ICE_SERVER.match(text.strip())
        if match is None:
            raise ValueError(f"--ice-server expects [USERNAME:CREDENTIAL@]URL with a stun:, turn: or turns: URL, "
                             f"such as stun:stun.example.org:3478; got {text!r}")
        return cls(match["url"], match["username"], match["credential"])

    def for_page(self) -> dict[str, str]:
        """As the browser's RTCIceServer takes it."""
        entry = {"urls": self.url}
        if self.username is not None:
            entry |= {"username": self.username, "credential": self.credential or ""}
        return entry


@dataclass(frozen=True)
class Transport:
    """The server's transports: WebRTC only when its library is installed and not switched off."""

    mode: TransportMode = TransportMode.WEBSOCKET
    webrtc: bool = False
    ice_servers: tuple[IceServer, ...] = ()

    def for_page(self) -> dict[str, Any]:
        return {"webrtc": self.webrtc, "prefer": self.mode.value,
                "ice_servers": [server.for_page() for server in self.ice_servers]}
