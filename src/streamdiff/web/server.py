"""The FastAPI app: the page and its files, the stream's state as JSON, the page's WebSocket, the answer to a
page's WebRTC offer, and the page's style picture."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from streamdiff.web.bridge import WebStream
from streamdiff.web.clients import CLOSE, Client
from streamdiff.web.protocol import MAX_FRAME_BYTES, ProtocolError, UploadError, parse_text

STATIC = Path(__file__).parent / "static"
STATUS_INTERVAL = 0.5  # seconds between status messages to the page
TAKEN_OVER = 4001  # WebSocket close code for a page another page took the stream from


def create_app(stream: WebStream, peers: Any = None) -> FastAPI:
    """The app; `peers` (web.webrtc.Peers) answers WebRTC offers, None where WebRTC is off."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if peers is not None:
            await peers.close()

    app = FastAPI(title="streamdiff", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/view", include_in_schema=False)
    async def view() -> FileResponse:
        return FileResponse(STATIC / "view.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/state")
    async def state() -> dict[str, Any]:
        return stream.state()

    @app.post("/api/webrtc/offer")
    async def offer(request: Request) -> JSONResponse:
        return await answer_offer(request, peers, viewer=False)

    @app.post("/api/webrtc/view")
    async def view_offer(request: Request) -> JSONResponse:
        return await answer_offer(request, peers, viewer=True)

    @app.post("/api/style_image")
    async def style_image(request: Request) -> JSONResponse:
        return await receive_style(request, stream)

    @app.websocket("/ws")
    async def socket(websocket: WebSocket) -> None:
        await serve_page(websocket, stream, peers)

    @app.websocket("/ws/view")
    async def view_socket(websocket: WebSocket) -> None:
        await serve_viewer(websocket, stream)

    return app


async def serve_page(websocket: WebSocket, stream: WebStream, peers: Any = None) -> None:
    """One page's connection: its pictures and controls go to the stream, outputs and reports come back.
    The first state tells the page its client number, which its WebRTC offer names."""
    await websocket.accept()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    client = stream.connect(_threadsafe(asyncio.get_running_loop(), outbox.put_nowait))
    outbox.put_nowait({**stream.state(), "client": client.id})

    def answer(message: dict[str, Any]) -> None:
        try:
            _handle(message, client, stream)
        except ProtocolError as exc:
            outbox.put_nowait({"type": "error", "message": str(exc)})

    try:
        await _receive_until_closed(websocket, [asyncio.create_task(_send(websocket, outbox)),
                                                asyncio.create_task(_report(outbox, stream))], answer)
    finally:
        stream.disconnect(client)
        if peers is not None:
            await peers.close_client(client.id)


async def answer_offer(request: Request, peers: Any, viewer: bool) -> JSONResponse:
    """POST /api/webrtc/offer (the driving page) and /api/webrtc/view (a viewer): the server's session
    description for the page's, or {"error": ...}."""
    if peers is None:
        return JSONResponse({"error": "WebRTC is off on this server (--transport websocket, or aiortc is not "
                                      "installed): the page sends its pictures over the WebSocket"}, status_code=404)
    from streamdiff.web.webrtc import OfferError  # WebRTC's library is there whenever peers is

    try:
        message = await request.json()
    except ValueError:
        return JSONResponse({"error": "expected a JSON offer"}, status_code=400)
    try:
        return JSONResponse(await (peers.answer_viewer(message) if viewer else peers.answer(message)))
    except OfferError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def receive_style(request: Request, stream: WebStream) -> JSONResponse:
    """POST /api/style_image?client=N&name=FILE: the driving page's style picture, its JPEG or PNG bytes as the
    body. 202 once it is handed over (the style inbox's thread decodes and preprocesses it, the inference thread
    encodes it, and the page hears how that went on its WebSocket); else {"error": ...}."""
    client = request.query_params.get("client", "")
    if not client.isdigit():
        return JSONResponse({"error": "expected ?client=N, the number the page's connection was given"},
                            status_code=400)
    data = await _body(request, MAX_FRAME_BYTES)
    if data is None:
        return JSONResponse({"error": f"a style picture may be at most {MAX_FRAME_BYTES // 2**20} MiB"},
                            status_code=413)
    try:
        stream.submit_style(int(client), data, request.query_params.get("name", ""))
    except UploadError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"accepted": True}, status_code=202)


async def _body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it passes `limit` bytes (read no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def serve_viewer(websocket: WebSocket, stream: WebStream) -> None:
    """A viewer's connection: every output, the newest only when the viewer falls behind; nothing comes in."""
    await websocket.accept()
    outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    outbox.put_nowait(stream.state())

    def replace(item: Any) -> None:  # a picture not yet sent gives way to a newer one: a slow viewer skips ahead
        if outbox.full():
            outbox.get_nowait()
        outbox.put_nowait(item)

    client = stream.watch(_threadsafe(asyncio.get_running_loop(), replace))
    try:
        await _receive_until_closed(websocket, [asyncio.create_task(_send(websocket, outbox))], lambda _: None)
    finally:
        stream.unwatch(client)


async def _receive_until_closed(websocket: WebSocket, tasks: list[asyncio.Task[None]],
                                handle: Callable[[dict[str, Any]], None]) -> None:
    """Hand each incoming message to `handle` until either side closes (or the first task, the sender, ends);
    then stop the tasks."""
    try:
        while not tasks[0].done():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            handle(message)
    except (WebSocketDisconnect, RuntimeError):  # closed from either side while waiting
        pass
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task


def _handle(message: dict[str, Any], client: Client, stream: WebStream) -> None:
    if message.get("bytes") is not None:
        stream.submit(client, message["bytes"])
        return
    parsed = parse_text(message.get("text") or "")
    kind = parsed.pop("type")
    if kind == "controls":
        stream.change(client, parsed)
    elif kind == "shown":
        stream.page_report(parsed)
    elif kind == "midi":
        stream.page_midi(client, parsed)
    else:
        raise ProtocolError(f'unknown message type {kind!r}; expected "controls", "shown" or "midi"')


def _threadsafe(loop: asyncio.AbstractEventLoop, put: Callable[[Any], None]) -> Callable[[Any], None]:
    """deliver() for the inference thread: `put` runs on the connection's event loop."""
    def deliver(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the connection's loop has closed: nothing left to tell
            loop.call_soon_threadsafe(put, item)

    return deliver


async def _send(websocket: WebSocket, outbox: asyncio.Queue[Any]) -> None:
    while True:
        item = await outbox.get()
        if item is CLOSE:
            await websocket.close(code=TAKEN_OVER, reason="another page took over the stream")
            return
        if isinstance(item, bytes):
            await websocket.send_bytes(item)
        else:
            await websocket.send_json(item)


async def _report(outbox: asyncio.Queue[Any], stream: WebStream) -> None:
    while True:
        await asyncio.sleep(STATUS_INTERVAL)
        outbox.put_nowait(stream.status())
