"""What travels over the page's WebSocket, and how each message is checked.

Binary, page -> server: a 4-byte big-endian sequence number, then one JPEG or PNG picture; the number alone
asks for a text-to-image frame (the page has no picture source then).
Binary, server -> page: the number of the newest picture the server took (every earlier one is answered
by it too: a picture replaced by a newer one before the engine took it is never stylized), the number of
the picture this output shows (an older one when the stream batch runs several steps), then the
stylized picture as JPEG. The page keeps at most a few pictures unanswered, so nothing queues up.
Text: JSON objects with a "type": "controls", "shown" and "midi" (a controller on the page's machine) from
the page; "state", "status", "error" and "page_controls" (what a page's MIDI asks of the page) from the server. A connection's first "state" names its "client" number, which a WebRTC offer quotes; with
WebRTC the pictures travel as video tracks instead (web/webrtc.py) and only text goes over the WebSocket.
A style picture (on a stream with an IP-Adapter) goes up on its own, as the JPEG or PNG body of
POST /api/style_image?client=N&name=FILE (web/server.py); the page hears of it as a "state" or an "error".
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np

from streamdiff.app.keys import Controls
from streamdiff.app.remote import CONTROL_TYPES as REMOTE_TYPES
from streamdiff.app.remote import ControlError, PromptBook, apply_changes

HEADER_IN = struct.Struct(">I")
HEADER_OUT = struct.Struct(">II")
MAX_FRAME_BYTES = 8 * 1024 * 1024
MAX_SIDE = 4096  # pixels; a picture is cropped to the render size anyway
# Controls the page may change, with the JSON type each takes (control_scale, all the ControlNets' scales, and
# control_scale_N, the N-th's, only on a stream with ControlNets; ip_adapter_scale only on one with an IP-Adapter).
# Blend, layout and pausing are the page's own; its style picture comes as an upload (POST /api/style_image).
CONTROL_TYPES: dict[str, type] = {name: REMOTE_TYPES[name] for name in
                                  ("prompt", "strength", "steps", "ema", "feedback", "seed", "mirror",
                                   "ip_adapter_scale", "control_scale")}
# What OSC and MIDI may change on the page's stream: the same, a prompt of the list by its index, the triggers
# of those controls, and a style picture by the path of its file on the server's machine.
REMOTE_CONTROL_TYPES: dict[str, type] = {
    **CONTROL_TYPES, "prompt_index": int, "style_image": REMOTE_TYPES["style_image"],
    **{name: REMOTE_TYPES[name] for name in ("next_prompt", "previous_prompt", "new_seed", "toggle_mirror")},
}


# What a page does itself, so that the server hands them back when the page's MIDI asks for them.
PAGE_CONTROLS: tuple[str, ...] = ("blend", "paused", "toggle_pause")


class ProtocolError(ValueError):
    """A message from the page that cannot be used; the text says what was expected. The connection stays."""


class UploadError(ProtocolError):
    """An upload the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def split_frame(data: bytes) -> tuple[int, bytes]:
    """A binary message from the page: (sequence number, picture bytes; none for a text-to-image frame)."""
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"a picture message may be at most {MAX_FRAME_BYTES // 2**20} MiB; got "
                            f"{len(data) / 2**20:.1f} MiB")
    if len(data) < HEADER_IN.size:
        raise ProtocolError(f"expected a {HEADER_IN.size}-byte sequence number, followed by a JPEG or PNG "
                            f"picture unless a text-to-image frame is asked for; got {len(data)} bytes")
    (sequence,) = HEADER_IN.unpack_from(data)
    return sequence, data[HEADER_IN.size:]


def pack_output(taken: int, shown: int, jpeg: bytes) -> bytes:
    return HEADER_OUT.pack(taken % 2**32, shown % 2**32) + jpeg


def decode_picture(data: bytes, role: str | None = None) -> np.ndarray:
    """JPEG or PNG bytes as an (H, W, 3) uint8 RGB array; errors name a picture other than a frame's by `role`
    ("style picture")."""
    from PIL import Image, UnidentifiedImageError

    noun, place = ("picture", f" after the {HEADER_IN.size}-byte sequence number") if role is None else (role, "")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format not in ("JPEG", "PNG"):
                raise ProtocolError(f"expected a JPEG or PNG {noun}; got {picture.format}")
            _check_side(*picture.size)
            return np.array(picture.convert("RGB"))  # writable: torch refuses to wrap read-only arrays
    except UnidentifiedImageError:
        raise ProtocolError(f"expected a JPEG or PNG {noun}{place}; its {len(data)} bytes are neither") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ProtocolError(f"cannot read the {noun}{place} ({exc})") from None


def decode_video(frame: Any) -> np.ndarray:
    """A decoded frame of the page's WebRTC track (PyAV) as an (H, W, 3) uint8 RGB array."""
    _check_side(frame.width, frame.height)
    return frame.to_ndarray(format="rgb24")


def _check_side(width: int, height: int) -> None:
    if max(width, height) > MAX_SIDE:
        raise ProtocolError(f"pictures may be at most {MAX_SIDE} pixels a side; got {width}x{height}")


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """An (H, W, 3) uint8 RGB array as JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def parse_text(text: str) -> dict[str, Any]:
    """A text message from the page: a JSON object with a string "type"."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"expected a JSON object; cannot parse it ({exc.msg} at character {exc.pos})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('expected a JSON object with a "type", such as {"type": "controls", "strength": 0.6}')
    return message


def apply_controls(controls: Controls, message: dict[str, Any], prompts: PromptBook) -> Controls:
    """The controls after a "controls" message; nothing changes unless every field is valid."""
    try:
        return apply_changes(controls, {k: v for k, v in message.items() if k != "type"}, prompts, CONTROL_TYPES)
    except ControlError as exc:
        raise ProtocolError(str(exc)) from None


def midi_bytes(message: dict[str, Any]) -> bytes:
    """A "midi" message's data: one channel message of 1 to 3 bytes (the page forwards no system messages)."""
    data = message.get("data")
    if (not isinstance(data, list) or not 1 <= len(data) <= 3
            or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in data)):
        raise ProtocolError('expected {"type": "midi", "data": [1 to 3 bytes, each 0-255]}; got '
                            f"{json.dumps(data)[:80]}")
    return bytes(data)
