"""Live controls over OSC (Open Sound Control): what TouchDesigner, Resolume, Max/MSP, Ableton or a phone's
control surface send. `/streamdiff/strength 0.6` (or `/strength 0.6`) changes one control; the listener runs on a
thread of its own and hands each change to the app, which applies it where it applies keys. A trigger
(`/streamdiff/next_prompt`) acts on a message with no argument or a nonzero one: a button sends 1 when
pressed and 0 when let go."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from streamdiff.app.optional import require
from streamdiff.app.remote import (
    ControlError,
    RefusalLog,
    Submit,
    Trigger,
    control_type,
    offered,
)
from streamdiff.errors import UserError

logger = logging.getLogger(__name__)

PREFIX = "/streamdiff"


def osc_change(address: str, args: Sequence[Any], allowed: Mapping[str, type]) -> dict[str, Any]:
    """One OSC message as a change {control: value} (none for a button let go); ControlError names what was
    expected."""
    name = address[len(PREFIX):] if address.startswith(PREFIX + "/") else address
    name = name.strip("/")
    kind = control_type(name, allowed)
    if kind is None:
        raise ControlError(f"unknown OSC address {address}; expected {PREFIX}/ (or /) followed by one of "
                           f"{offered(allowed)}")
    if kind is Trigger:
        return _press(address, name, args)
    if len(args) != 1:
        raise ControlError(f"{address} takes one argument; got {len(args)}")
    return {name: _as(kind, args[0])}


def _press(address: str, name: str, args: Sequence[Any]) -> dict[str, Any]:
    if len(args) > 1 or (args and not isinstance(args[0], (bool, int, float))):
        raise ControlError(f"{address} takes no argument or one number (nonzero: pressed); got {list(args)!r}")
    return {name: True} if not args or args[0] else {}


def _as(kind: type, value: Any) -> Any:
    """Controllers send what they have: TouchDesigner's channels and most MIDI bridges send every value as a
    float, toggles as 0 or 1. Anything else is left for the app's own check to refuse."""
    if kind is bool and isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_address(text: str) -> tuple[str, int]:
    """--osc's value, [HOST:]PORT, as (host, port); the host defaults to this machine only."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"--osc expects [HOST:]PORT, such as 9000 or 0.0.0.0:9000; got {text!r}")
    return host or "127.0.0.1", number


def add_osc_option(group: Any) -> None:
    group.add_argument("--osc", default=None, metavar="[HOST:]PORT",
                       help=f"listen for OSC control messages ({PREFIX}/strength 0.6, {PREFIX}/prompt \"...\") on "
                            "this UDP port; HOST 0.0.0.0 lets other machines send (default: this machine only)")


def open_listener(spec: str | None, allowed: Mapping[str, type]) -> OscListener | None:
    """--osc's listener, bound now (before the model loads, so that a busy port fails at once), or None."""
    if spec is None:
        return None
    try:
        host, port = parse_address(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return OscListener(allowed, port, host)


class OscListener:
    """Listens on a UDP port (bound at once, so a busy port fails early); once started, each valid message goes
    to `submit`, which may refuse it with a ValueError. A refusal is logged once until a different one comes:
    a fader sends tens of messages a second."""

    def __init__(self, allowed: Mapping[str, type], port: int, host: str = "127.0.0.1"):
        require("pythonosc", "OSC control")
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import BlockingOSCUDPServer

        self._submit: Submit | None = None
        self._allowed = allowed
        self._refusals = RefusalLog(logger, "OSC")
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._handle)
        try:
            self._server = BlockingOSCUDPServer((host, port), dispatcher)
        except OSError as exc:
            raise UserError(f"cannot listen for OSC on {host}:{port} ({exc.strerror or exc}); pick another port "
                            "with --osc") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="streamdiff-osc", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self, submit: Submit) -> OscListener:
        self._submit = submit
        self._thread.start()
        logger.info("listening for OSC on port %d (%s/<control>)", self.port, PREFIX)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()

    def _handle(self, address: str, *args: Any) -> None:
        try:
            assert self._submit is not None  # the server runs only after start()
            change = osc_change(address, args, self._allowed)
            if change:
                self._submit(change)
        except ValueError as exc:
            self._refusals.note(exc)
