// streamdiff's page: grabs the source at the engine's size, sends it as JPEG over the WebSocket, shows what
// comes back. At most MAX_IN_FLIGHT pictures wait for an answer, so nothing queues up on a slow engine.
// With WebRTC (webrtc.js) the source goes up as a video track and the output comes back as one instead.
// The sliders, buttons, keys and the address's settings are controls.js's.
"use strict";

const MAX_IN_FLIGHT = 2;
const JPEG_QUALITY = 0.85;
const REPORT_INTERVAL = 1000; // ms between "shown" reports to the server
const $ = (id) => document.getElementById(id);

const page = {
  ws: null, state: null, sequence: 0, taken: 0, sentAt: new Map(), grabbing: false, lastGrab: -1,
  shown: 0, shownTimes: [], latency: null, paused: false, mirror: false, urlApplied: false, status: null,
  outputUrl: null, textOnly: false, frameTick: 0, client: null, source: null,
};

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function send(message) {
  if (page.ws && page.ws.readyState === WebSocket.OPEN) page.ws.send(JSON.stringify(message));
}

// --- connection -------------------------------------------------------------------------------------

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    page.taken = page.sequence; // a new connection owes nothing for pictures sent on the old one
    page.sentAt.clear();
  };
  ws.onmessage = (event) => (typeof event.data === "string" ? onText(JSON.parse(event.data)) : onPicture(event.data));
  ws.onclose = (event) => {
    if (page.ws !== ws) return;
    page.ws = null;
    page.client = null;
    stopRtc(); // the server closes a page's WebRTC connection with its WebSocket
    drawStatus("disconnected");
    if (event.code !== 4001) setTimeout(connect, 1000); // 4001: another page took over; stay closed
  };
  page.ws = ws;
}

function onText(message) {
  if (message.type === "state") onState(message);
  else if (message.type === "status") { page.status = message; drawStatus(); }
  else if (message.type === "error") { notice(message.message); if (page.state) drawStyle(page.state); }
  else if (message.type === "page_controls") onPageControls(message);
}

function onState(state) {
  if (state.client !== undefined) page.client = state.client; // the first state of a connection names it
  page.state = state;
  page.status = state;
  for (const pane of document.querySelectorAll(".pane")) pane.style.aspectRatio = `${state.width} / ${state.height}`;
  const gallery = $("gallery");
  gallery.replaceChildren(...state.prompts.map((text, i) => new Option(text.length > 60 ? text.slice(0, 57) + "…" : text, i)));
  gallery.value = String(Math.max(0, state.prompts.indexOf(state.prompt)));
  $("prompt").value = state.prompt;
  for (const name of ENGINE_SLIDERS) showSlider(name, state.controls[name]);
  drawControlNets(state);
  drawStyle(state);
  page.mirror = state.controls.mirror;
  drawMirror();
  if (!page.urlApplied) applyUrl();
  drawStatus();
  syncTransport();
}

function onPicture(buffer) {
  const view = new DataView(buffer);
  const taken = view.getUint32(0);
  const shownSequence = view.getUint32(4);
  page.taken = Math.max(page.taken, taken);
  const sent = page.sentAt.get(shownSequence);
  if (sent !== undefined) page.latency = performance.now() - sent;
  for (const sequence of page.sentAt.keys()) if (sequence <= shownSequence) page.sentAt.delete(sequence);
  const url = URL.createObjectURL(new Blob([buffer.slice(8)], { type: "image/jpeg" }));
  const output = $("output");
  output.onload = () => {
    if (page.outputUrl) URL.revokeObjectURL(page.outputUrl);
    page.outputUrl = url;
    countShown();
  };
  output.src = url;
  pump();
}

function shownFps() {
  const times = page.shownTimes;
  if (times.length < 2 || performance.now() - times[times.length - 1] > 2000) return 0;
  return (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000);
}

function drawStatus(text) {
  if (!text && !page.ws) text = "disconnected";
  const s = page.status;
  if (text || !s || !page.state) { $("status").textContent = text || "connecting…"; return; }
  const parts = [page.state.model, `${page.state.width}x${page.state.height}`, s.accel && `accel ${s.accel}`,
    `AI ${s.ai_fps.toFixed(1)} fps`, `shown ${shownFps().toFixed(1)} fps`, rtc.live ? "WebRTC" : "WebSocket",
    !rtc.live && page.latency !== null && `latency ${Math.round(page.latency)} ms`,
    rtc.live && s.server_ms !== null && s.server_ms !== undefined && `server ${Math.round(s.server_ms)} ms`,
    rtc.live && rtc.rtt !== null && `network round trip ${Math.round(rtc.rtt)} ms`, midiStatus(),
    page.paused && "paused"];
  $("status").textContent = parts.filter(Boolean).join(" · ");
}

// --- sending pictures -------------------------------------------------------------------------------

// A new source frame (a text-only page: a new display frame) goes out when fewer than MAX_IN_FLIGHT wait.
function pump() {
  const video = $("camera");
  const ws = page.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || !page.state || page.paused || page.grabbing) return;
  if (rtc.pc && !page.textOnly) return; // the source goes up as a video track
  const frame = page.textOnly ? page.frameTick : video.currentTime;
  if (frame === page.lastGrab || (!page.textOnly && (video.readyState < 2 || !video.videoWidth))) return;
  if (page.sequence - page.taken >= MAX_IN_FLIGHT || ws.bufferedAmount > 1 << 20) return;
  page.lastGrab = frame;
  if (page.textOnly) { sendPicture(ws, null); return; } // the number alone asks for a text-to-image frame
  page.grabbing = true;
  grab(video, page.state.width, page.state.height).toBlob((blob) => {
    page.grabbing = false;
    if (blob) sendPicture(ws, blob);
  }, "image/jpeg", JPEG_QUALITY);
}

function sendPicture(ws, blob) {
  if (ws.readyState !== WebSocket.OPEN) return;
  page.sequence += 1;
  const header = new DataView(new ArrayBuffer(4));
  header.setUint32(0, page.sequence);
  page.sentAt.set(page.sequence, performance.now());
  ws.send(blob ? new Blob([header.buffer, blob]) : header.buffer);
}

// The centre of the picture at the engine's aspect, as the page shows it (object-fit: cover).
function grab(video, width, height) {
  const canvas = $("grab");
  canvas.width = width;
  canvas.height = height;
  const scale = Math.max(width / video.videoWidth, height / video.videoHeight);
  const sw = width / scale;
  const sh = height / scale;
  canvas.getContext("2d").drawImage(video, (video.videoWidth - sw) / 2, (video.videoHeight - sh) / 2, sw, sh,
    0, 0, width, height);
  return canvas;
}

function countShown() {
  page.shown += 1;
  page.shownTimes.push(performance.now());
  if (page.shownTimes.length > 30) page.shownTimes.shift();
}

function watchFrames(video) {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = () => { pump(); video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  }
  setInterval(pump, 50); // also where frame callbacks are missing or stall
  const onDisplayFrame = (time) => { page.frameTick = time; if (page.textOnly) pump(); requestAnimationFrame(onDisplayFrame); };
  requestAnimationFrame(onDisplayFrame); // a text-only page asks for at most one frame a display frame
}

// --- sources ----------------------------------------------------------------------------------------

function setTextOnly(textOnly) {
  page.textOnly = textOnly;
  page.lastGrab = -1;
  $("input-label").textContent = textOnly ? "no picture: text to image" : "input";
}

function useText() {
  stopSource();
  for (const id of ["camera", "under"]) { $(id).srcObject = null; $(id).removeAttribute("src"); $(id).load(); }
  setTextOnly(true);
  $("source").value = "text";
  notice("");
  setSource(null);
}

function useStream(stream) {
  stopSource();
  setTextOnly(false);
  for (const id of ["camera", "under"]) { $(id).removeAttribute("src"); $(id).srcObject = stream; }
  page.lastGrab = -1;
  notice("");
  setSource(stream);
}

function stopSource() {
  const current = $("camera").srcObject;
  if (current) for (const track of current.getTracks()) track.stop();
}

async function useCamera(deviceId) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    notice("This browser gives the camera only to https pages or localhost: serve with --ssl-certfile and " +
      "--ssl-keyfile, or open the page on the machine that runs streamdiff. A video file works here too.");
    return;
  }
  const video = deviceId ? { deviceId: { exact: deviceId } } : { width: { ideal: 1280 }, height: { ideal: 720 } };
  try {
    useStream(await navigator.mediaDevices.getUserMedia({ video, audio: false }));
    await listCameras();
  } catch (error) {
    notice(`No camera (${error.name}: ${error.message}). Allow the camera for this page, or choose a screen, ` +
      "a video file or text to image as the source.");
  }
}

async function listCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((d) => d.kind === "videoinput");
  const select = $("source");
  const current = $("camera").srcObject?.getVideoTracks()[0]?.getSettings().deviceId;
  for (const option of [...select.options]) if (option.value.startsWith("camera:")) option.remove();
  cameras.forEach((camera, i) => {
    const option = new Option(camera.label || `Camera ${i + 1}`, `camera:${camera.deviceId}`);
    select.add(option, i);
  });
  if (current) select.value = `camera:${current}`;
}

async function useScreen() {
  try {
    useStream(await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false }));
  } catch (error) {
    notice(`No screen shared (${error.name}: ${error.message}).`);
  }
}

function useFile(file) {
  stopSource();
  setTextOnly(false);
  const url = URL.createObjectURL(file);
  for (const id of ["camera", "under"]) {
    const video = $(id);
    video.srcObject = null;
    video.src = url;
    video.loop = true;
    video.play();
  }
  page.lastGrab = -1;
  notice("");
  setSource(null);
  const camera = $("camera"); // a playing file becomes a track for WebRTC (where the browser can capture one)
  const capture = camera.captureStream || camera.mozCaptureStream; // Firefox still names it with its prefix
  camera.addEventListener("loadeddata", () => { if (capture) setSource(capture.call(camera)); }, { once: true });
}

function start() {
  showSlider("blend", 0);
  bindControls();
  watchFrames($("camera"));
  watchOutputVideo($("output-video"));
  setInterval(() => { send({ type: "shown", count: page.shown, fps: shownFps() }); measureRtt(); drawStatus(); },
    REPORT_INTERVAL);
  connect();
  if (new URLSearchParams(location.search).get("source") === "text") useText();
  else useCamera();
}

start();
