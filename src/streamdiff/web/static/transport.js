// What the page and the view page share of WebRTC: whether to use it, and the offer and answer exchanged with
// the server.
"use strict";

const RTC_CONNECT_TIMEOUT = 8000; // ms before a WebRTC connection that has not come up gives way to the WebSocket
const ICE_GATHER_TIMEOUT = 3000; // ms to wait for the page's own network addresses before sending the offer

// WebRTC where the server offers it and the address or the server asks for it; `auto`: from another machine.
function prefersWebRtc(transport) {
  if (!transport || !transport.webrtc) return false;
  const asked = new URLSearchParams(location.search).get("transport") || transport.prefer;
  if (asked === "webrtc") return true;
  if (asked === "websocket") return false;
  return !["localhost", "127.0.0.1", "[::1]"].includes(location.hostname);
}

// The server's answer to this connection's offer, posted to `path` with `fields`; null where `current()` says
// the connection was replaced meanwhile (its offer would close the newer one on the server).
async function exchangeOffer(pc, path, fields, current = () => true) {
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  if (!current()) return null;
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...fields, sdp: pc.localDescription.sdp, type: "offer" }) });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error);
  return answer;
}

// The server does not take candidates one by one: the offer goes out with the addresses found so far.
function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, ICE_GATHER_TIMEOUT);
  });
}
