// The page's WebRTC transport (a page on another machine, or ?transport=webrtc): the source goes up as a video
// track and the output comes back as one; the WebSocket (app.js) then carries only controls and reports. A
// connection that fails, is refused or is slow to come up gives way to the WebSocket until a reload.
"use strict";

// The WebRTC connection, if any: `live` once it carries pictures; `failed` keeps the WebSocket until a reload.
const rtc = { pc: null, sender: null, track: null, client: null, source: null, live: false, failed: false, rtt: null };

function setSource(stream) {
  page.source = stream;
  syncTransport();
}

function wantRtc() {
  return !rtc.failed && prefersWebRtc(page.state && page.state.transport);
}

// WebRTC carries the source while the page has a picture source, a client number and WebRTC is wanted.
function syncTransport() {
  const source = page.textOnly ? null : page.source;
  if (!source || !page.client || !page.ws || !wantRtc()) { stopRtc(); return; }
  if (rtc.pc && rtc.client === page.client && rtc.source === source) return;
  startRtc(source);
}

async function startRtc(source) {
  stopRtc();
  const track = source.getVideoTracks()[0];
  if (!track) return;
  let pc = null;
  try {
    pc = new RTCPeerConnection({ iceServers: page.state.transport.ice_servers });
    Object.assign(rtc, { pc, track, client: page.client, source, live: false });
    await negotiate(pc, track);
  } catch (error) {
    if (pc === rtc.pc) fallBack(`WebRTC did not start (${error.message})`); // not one a newer source replaced
  }
}

async function negotiate(pc, track) {
  // The browser scales the source down to about the engine's size before encoding: fewer bytes to send.
  const size = track.getSettings();
  const scale = Math.max(1, Math.min((size.width || 0) / page.state.width, (size.height || 0) / page.state.height));
  rtc.sender = pc.addTransceiver(track, { direction: "sendrecv", sendEncodings: [{ scaleResolutionDownBy: scale }] }).sender;
  if (page.paused) rtc.sender.replaceTrack(null);
  pc.ontrack = (event) => { $("output-video").srcObject = new MediaStream([event.track]); };
  pc.onconnectionstatechange = () => {
    if (pc !== rtc.pc) return;
    if (pc.connectionState === "connected") { rtc.live = true; drawOutput(); drawStatus(); }
    else if (pc.connectionState === "failed") fallBack("the WebRTC connection failed");
  };
  const answer = await exchangeOffer(pc, "/api/webrtc/offer", { client: rtc.client }, () => pc === rtc.pc);
  if (pc !== rtc.pc) return;
  await pc.setRemoteDescription(answer);
  setTimeout(() => {
    if (pc === rtc.pc && !rtc.live) fallBack(`no WebRTC connection within ${RTC_CONNECT_TIMEOUT / 1000} s`);
  }, RTC_CONNECT_TIMEOUT);
}

function stopRtc() {
  if (rtc.pc) rtc.pc.close();
  Object.assign(rtc, { pc: null, sender: null, track: null, client: null, source: null, live: false, rtt: null });
  $("output-video").srcObject = null;
  drawOutput();
}

function fallBack(reason) {
  if (!rtc.pc) return;
  stopRtc();
  rtc.failed = true;
  notice(`${reason}: pictures go over the WebSocket instead, a JPEG each (reload to try WebRTC again).`);
  drawStatus();
  pump();
}

function drawOutput() {
  $("output-pane").classList.toggle("rtc", rtc.live);
}

function watchOutputVideo(video) {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const onFrame = () => { if (rtc.live) countShown(); video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
}

// The network's round trip (ms), from the browser's statistics of the address pair the connection uses: with
// the server's share (its status), the latency the page cannot time picture by picture over WebRTC.
async function measureRtt() {
  const pc = rtc.pc;
  if (!pc || !rtc.live) return;
  const report = await pc.getStats();
  for (const entry of report.values()) {
    if (entry.type === "candidate-pair" && entry.nominated && entry.currentRoundTripTime !== undefined && pc === rtc.pc) {
      rtc.rtt = 1000 * entry.currentRoundTripTime;
    }
  }
}
