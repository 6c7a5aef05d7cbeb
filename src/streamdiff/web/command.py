"""`streamdiff web`: serve the page, with the model loaded before the first page connects."""

from __future__ import annotations

import argparse
import importlib
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from streamdiff.app.optional import require
from streamdiff.app.remote_inputs import RemoteInputs, add_remote_options
from streamdiff.errors import UserError
from streamdiff.web.protocol import REMOTE_CONTROL_TYPES
from streamdiff.web.transport import IceServer, Transport, TransportMode

DESCRIPTION = """Serve a web page that stylizes the browser's camera, a shared screen or a video file live.
Open the printed address; the page asks for the camera. Browsers give pages the camera only over https
or on localhost: from other machines, serve with --ssl-certfile and --ssl-keyfile."""


def register(subparsers: Any) -> None:
    from streamdiff.app.camera import add_smoothing_options, add_transition_option
    from streamdiff.cli_options import add_engine_options

    p = subparsers.add_parser("web", help="a browser page as camera and screen (the same engine, served)",
                              description=DESCRIPTION)
    add_engine_options(p)
    p.set_defaults(compile_in_background=True)  # the page gets frames within seconds; the compiled speed follows
    g = p.add_argument_group("web page")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    g.add_argument("--prompts", default="gallery", metavar="FILE",
                   help="the prompts the page offers, after --prompt where given: a .txt/.yaml file (default: the "
                        "built-in gallery)")
    add_smoothing_options(g, keys=False)
    g.add_argument("--similarity-filter", nargs="?", type=float, const=0.98, default=None, metavar="THRESHOLD",
                   help="skip frames that barely changed (default threshold 0.98)")
    add_transition_option(g)
    g.add_argument("--quality", type=int, default=85, help="JPEG quality of the pictures sent back, 1..100")
    g.add_argument("--ssl-certfile", default=None, help="certificate for https, a PEM file (with --ssl-keyfile)")
    g.add_argument("--ssl-keyfile", default=None, help="the certificate's private key for https, a PEM file")
    g.add_argument("--transport", choices=[m.value for m in TransportMode], default="auto",
                   help="how pictures travel: webrtc (video tracks: a fraction of the bytes, for pages on other "
                        "machines), websocket (a JPEG per frame), or auto (default: WebRTC for pages opened from "
                        "other machines when aiortc is installed, the WebSocket on this one)")
    g.add_argument("--ice-server", action="append", default=[], metavar="[USER:CREDENTIAL@]URL",
                   help="a STUN or TURN server for WebRTC, such as stun:stun.example.org:3478 (repeatable; "
                        "default none: pages reach the server directly)")
    g.add_argument("--output", action="append", default=[], metavar="ndi[:NAME]",
                   help="also publish the stylized pictures as an NDI source on the network (ndi: named "
                        "streamdiff; ndi:NAME); repeatable")
    g.add_argument("--open", action="store_true", help="open the page in the default browser")
    g.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads when the model runs on the CPU (default: all cores but one)")
    add_remote_options(g)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for module in ("fastapi", "uvicorn", "websockets"):
        require(module, "the web page")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise UserError("https needs both --ssl-certfile and --ssl-keyfile")
    for option, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{option}: no such file: {path}")
    if args.ssl_certfile is not None:
        check_certificate(args.ssl_certfile, args.ssl_keyfile)
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in 1..100; got {args.quality}")
    senders = [_sender_name(output) for output in args.output]
    transport = choose_transport(TransportMode(args.transport), [IceServer.parse(s) for s in args.ice_server])
    listener = bind(args.host, args.port)  # before the model loads: a busy port fails at once
    remotes = None
    try:
        remotes = RemoteInputs.open(args, REMOTE_CONTROL_TYPES, map_opens_input=False)
        stream = _stream(args, transport, remotes.midi_map, senders)
    except BaseException:
        listener.close()
        if remotes is not None:
            remotes.close()
        raise
    url = _url(args, listener)
    print(f"streamdiff: serving {url} ({_pictures_by(transport)}; Ctrl-C stops)", file=sys.stderr, flush=True)
    if remotes.describe():
        print(remotes.describe(), file=sys.stderr, flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        remotes.start(stream.remote_change, lambda: len(stream.prompts.prompts))
        summary = serve(stream, listener, args.ssl_certfile, args.ssl_keyfile)
    finally:
        remotes.close()
    print(summary)
    return 0


class _KeyNeedsPassphrase(Exception):
    """The private key is encrypted: uvicorn asks for its passphrase when it loads the pair."""


def _no_passphrase() -> str:
    raise _KeyNeedsPassphrase


def check_certificate(certfile: str, keyfile: str) -> None:
    """Load the https pair as the server will, before anything else: files that are no PEM certificate and key
    fail here in one line, not once the page is announced."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _KeyNeedsPassphrase:
        return
    except ssl.SSLError as exc:
        reason = f" ({exc.reason.replace('_', ' ').lower()})" if exc.reason else ""
        raise UserError(f"--ssl-certfile {certfile} and --ssl-keyfile {keyfile} cannot be used{reason}: expected a "
                        "PEM certificate and its PEM private key") from None


def choose_transport(mode: TransportMode, ice_servers: list[IceServer]) -> Transport:
    """WebRTC where asked for (its library must be there) or where `auto` finds its library installed."""
    if mode is TransportMode.WEBRTC:
        require("aiortc", "--transport webrtc")
    webrtc = mode is not TransportMode.WEBSOCKET and _installed("aiortc")
    if ice_servers and not webrtc:
        raise UserError("--ice-server is for WebRTC, which is off here (--transport websocket, or aiortc is not "
                        "installed)")
    return Transport(mode, webrtc, tuple(ice_servers))


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _pictures_by(transport: Transport) -> str:
    if transport.webrtc:
        return ("pictures over WebRTC" if transport.mode is TransportMode.WEBRTC
                else "pictures over WebRTC from other machines, over the WebSocket from this one")
    if transport.mode is TransportMode.AUTO:
        return "pictures over the WebSocket; pip install aiortc for WebRTC"
    return "pictures over the WebSocket"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line reason why there is none."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535; got {port}")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host!r}: {exc.strerror}") from None
    listener = socket.socket(info[0], socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(info[4])
        listener.listen(64)
    except OSError as exc:
        listener.close()
        hint = "; pick another with --port" if exc.errno in (98, 48, 10048) else ""  # EADDRINUSE
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return listener


def _url(args: argparse.Namespace, listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{'https' if args.ssl_certfile else 'http'}://{shown}:{port}/"


def _sender_name(output: str) -> str:
    from streamdiff.app.ndi import is_ndi, sender_name

    if not is_ndi(output):
        raise UserError(f"the web page's --output publishes over NDI: ndi or ndi:NAME; got {output!r}")
    return sender_name(output)


def _stream(args: argparse.Namespace, transport: Transport, midi_map: Any, senders: list[str]) -> Any:
    from streamdiff.app.camera import live_engine, style_name
    from streamdiff.app.engine_io import EngineRunner
    from streamdiff.app.keys import Controls, engine_controls
    from streamdiff.app.midi_map import Translator
    from streamdiff.app.ndi import NdiSink
    from streamdiff.models.registry import DEFAULT_MODEL
    from streamdiff.web.bridge import WebStream
    from streamdiff.web.protocol import PromptBook

    controls = Controls(ema=args.ema, feedback=args.feedback, seed=args.seed)  # checked before the model loads
    pipe, prompts = live_engine(args)
    runner = EngineRunner(pipe, prompts, args.fit, args.transition_frames, style_name=style_name(args))
    return WebStream(runner, replace(controls, **engine_controls(pipe)),
                     PromptBook(runner.prompts),
                     model=args.model or DEFAULT_MODEL, quality=args.quality, transport=transport,
                     midi=Translator(midi_map), sinks=[NdiSink(name) for name in senders])


def make_server(stream: Any, certfile: str | None = None, keyfile: str | None = None) -> Any:
    """The uvicorn server of the page's app; it stops when the stream's inference thread fails."""
    import uvicorn

    from streamdiff.web.server import create_app

    peers = None
    if stream.transport.webrtc:
        from streamdiff.web.webrtc import Peers

        peers = Peers(stream, stream.transport)
    # uvicorn's sans-I/O websockets protocol replaces its older one (which now warns) where it exists.
    ws = "websockets-sansio" if "websockets-sansio" in uvicorn.config.WS_PROTOCOLS else "websockets"
    config = uvicorn.Config(create_app(stream, peers), log_level="warning", ws=ws,
                            ssl_certfile=certfile, ssl_keyfile=keyfile)
    server = uvicorn.Server(config)
    stream.on_failure = lambda: setattr(server, "should_exit", True)
    return server


def serve(stream: Any, listener: socket.socket, certfile: str | None = None, keyfile: str | None = None) -> str:
    """Run the server until Ctrl-C (or the engine fails); returns the one-line summary."""
    import time

    from streamdiff.app.runtime import WorkerError
    from streamdiff.errors import first_line

    server = make_server(stream, certfile, keyfile)
    start = time.perf_counter()
    stream.start()
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C again once it has shut down: the usual way to stop
        pass
    finally:
        stream.close()
        listener.close()
    if stream.failure is not None:
        raise WorkerError(f"the inference thread failed: {first_line(stream.failure)}") from stream.failure
    seconds = time.perf_counter() - start
    counts = stream.counts
    made = counts.stylized + counts.generated
    return (f"web: {counts.received} requests received, {counts.stylized} pictures stylized, {counts.generated} "
            f"made from text ({made / seconds if seconds > 0 else 0.0:.1f} fps), {counts.dropped} replaced unseen")
