"""The page's messages: picture framing, picture decoding and the controls a page may change."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from streamdiff.app.keys import Controls
from streamdiff.web import protocol
from streamdiff.web.protocol import PromptBook, ProtocolError, apply_controls


def encoded(width: int = 40, height: int = 24, format: str = "JPEG") -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format=format)
    return buffer.getvalue()


def test_a_frame_is_a_sequence_number_then_the_picture():
    picture = encoded()
    sequence, payload = protocol.split_frame(protocol.HEADER_IN.pack(70000) + picture)
    assert (sequence, payload) == (70000, picture)
    output = protocol.pack_output(2**32 + 5, 3, b"jpeg")
    assert protocol.HEADER_OUT.unpack_from(output) == (5, 3) and output[8:] == b"jpeg"


def test_the_sequence_number_alone_asks_for_a_text_to_image_frame():
    assert protocol.split_frame(protocol.HEADER_IN.pack(9)) == (9, b"")


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00\x01", "followed by a JPEG or PNG picture unless a text-to-image frame is asked for; got 3 bytes"),
    (b"\x00" * (protocol.MAX_FRAME_BYTES + 1), "at most 8 MiB"),
])
def test_a_frame_without_a_picture_or_too_large_is_refused(data, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.split_frame(data)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_jpeg_and_png_decode_to_rgb_arrays(format):
    image = protocol.decode_picture(encoded(40, 24, format))
    assert image.shape == (24, 40, 3) and image.dtype == np.uint8


def test_the_jpeg_sent_back_decodes_to_the_same_size():
    image = np.full((32, 48, 3), 200, np.uint8)
    back = protocol.decode_picture(protocol.encode_jpeg(image, 90))
    assert back.shape == image.shape and abs(int(back.mean()) - 200) <= 2


@pytest.mark.parametrize("data, message", [
    (b"not a picture at all", "expected a JPEG or PNG picture after the 4-byte sequence number"),
    (encoded(format="GIF"), "expected a JPEG or PNG picture; got GIF"),
    (encoded(format="JPEG")[:200], "cannot read the picture"),
])
def test_other_bytes_are_refused_with_what_was_expected(data, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_picture(data)


@pytest.mark.parametrize("data, message", [
    (b"not a picture at all", "expected a JPEG or PNG style picture; its 20 bytes are neither"),
    (encoded(format="GIF"), "expected a JPEG or PNG style picture; got GIF"),
    (encoded(format="JPEG")[:200], r"cannot read the style picture \("),
])
def test_a_style_picture_is_decoded_as_a_frame_is_and_named_in_its_errors(data, message):
    assert protocol.decode_picture(encoded(40, 24, "PNG"), "style picture").shape == (24, 40, 3)
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_picture(data, "style picture")


def test_a_picture_larger_than_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_SIDE", 32)
    with pytest.raises(ProtocolError, match="at most 32 pixels a side; got 40x24"):
        protocol.decode_picture(encoded(40, 24))


@pytest.mark.parametrize("text, message", [
    ("{nope", "expected a JSON object; cannot parse it"),
    ("[1, 2]", 'expected a JSON object with a "type"'),
    ('{"strength": 0.5}', 'expected a JSON object with a "type"'),
])
def test_text_must_be_a_json_object_with_a_type(text, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_text(text)


def test_controls_change_only_what_the_message_names():
    book = PromptBook(["first", "second"])
    before = Controls(strength=0.8, ema=0.1, feedback=0.3, seed=4)
    after = apply_controls(before, {"strength": 0.5, "ema": 0.25, "mirror": True}, book)
    assert (after.strength, after.ema, after.mirror) == (0.5, 0.25, True)
    assert (after.feedback, after.seed, after.prompt_index) == (0.3, 4, 0)
    assert apply_controls(before, {"steps": 3}, book) == replace(before, steps=3)
    steered = Controls(control_scales=(1.0,))  # a stream with a ControlNet
    assert apply_controls(steered, {"control_scale": 1.5}, book) == Controls(control_scales=(1.5,))
    two = Controls(control_scales=(1.0, 0.5))  # with two: one, or all of them
    assert apply_controls(two, {"control_scale_2": 0.3}, book) == Controls(control_scales=(1.0, 0.3))
    assert apply_controls(two, {"control_scale": 0.7}, book) == Controls(control_scales=(0.7, 0.7))


def test_a_page_sets_the_style_scale_but_names_no_picture_file():
    book = PromptBook(["first"])
    styled = Controls(ip_adapter_scale=0.6)  # a stream with an IP-Adapter
    assert apply_controls(styled, {"ip_adapter_scale": 1.5}, book) == Controls(ip_adapter_scale=1.5)
    with pytest.raises(ProtocolError, match=r"ip_adapter_scale: this stream has no IP-Adapter"):
        apply_controls(Controls(), {"ip_adapter_scale": 0.5}, book)
    with pytest.raises(ProtocolError, match="unknown control style_image"):  # a path on the server: OSC only
        apply_controls(styled, {"style_image": "/etc/hostname"}, book)
    assert protocol.REMOTE_CONTROL_TYPES["style_image"] is str and "style_image" not in protocol.CONTROL_TYPES


def test_a_new_prompt_joins_the_book_once_and_a_known_one_is_found():
    book = PromptBook(["first", "second"])
    controls = apply_controls(Controls(), {"prompt": "neon noir"}, book)
    assert book.prompts == ["first", "second", "neon noir"] and controls.prompt_index == 2
    assert apply_controls(controls, {"prompt": "second"}, book).prompt_index == 1
    assert apply_controls(controls, {"prompt": "neon noir"}, book).prompt_index == 2
    assert len(book.prompts) == 3


@pytest.mark.parametrize("message, error", [
    ({"speed": 2}, "unknown control speed; expected some of prompt, strength, steps, ema, feedback, seed, mirror"),
    ({"strength": "high"}, 'strength must be a finite number; got "high"'),
    ({"strength": True}, "strength must be a finite number; got true"),
    ({"ema": float("nan")}, "ema must be a finite number"),
    ({"seed": 1.5}, "seed must be a whole number; got 1.5"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*63 - 1\]"),
    ({"mirror": 1}, "mirror must be true or false; got 1"),
    ({"prompt": 7}, "prompt must be a string; got 7"),
    ({"prompt": "x" * 1001}, "prompt may be at most 1000 characters; got 1001"),
    ({"strength": 1.5}, r"strength must be in \(0, 1\]; got 1.5"),
    ({"ema": 1.0, "strength": 0.5}, r"ema and feedback must be in \[0, 1\)"),
    ({"control_scale": 0.5, "strength": 0.5}, r"control_scale steers a ControlNet, and this stream has none"),
    ({"control_scale_1": 0.5, "strength": 0.5}, r"control_scale_1 steers a ControlNet, and this stream has none"),
    ({"control_scale_one": 0.5}, r"unknown control control_scale_one; expected some of .*, control_scale, "
                                 r"control_scale_N$"),
    ({"steps": 5, "strength": 0.5}, r"steps must be in \[1, 4\]; got 5"),
    ({"steps": "2"}, 'steps must be a whole number; got "2"'),
])
def test_bad_controls_say_what_was_expected_and_change_nothing(message, error):
    book = PromptBook(["first"])
    before = Controls(strength=0.8)
    with pytest.raises(ProtocolError, match=error):
        apply_controls(before, {"prompt": "never added", **message} if "prompt" not in message else message, book)
    assert book.prompts == ["first"] and before == Controls(strength=0.8)

