"""`streamdiff web`: a browser page as the camera and the screen, served by FastAPI over a WebSocket, its
pictures over the WebSocket or WebRTC.

protocol.py says what travels (pictures with a small header, JSON controls and reports), bridge.py runs
the engine on an inference thread of its own, server.py is the FastAPI app and command.py the CLI;
transport.py holds the transport settings and webrtc.py the WebRTC connections (aiortc); in static/,
transport.js is what the page (app.js, webrtc.js) and the view page share of WebRTC.
"""
