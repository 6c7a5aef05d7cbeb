// streamdiff's page: grabs the source at the engine's size, sends it as JPEG over the WebSocket, shows what
// comes back. At most MAX_IN_FLIGHT pictures wait for an answer, so nothing queues up on a slow engine.
// With WebRTC (webrtc.js) the source goes up as a video track and the output comes back as one instead.
"use strict";

const MAX_IN_FLIGHT = 2;
const JPEG_QUALITY = 0.85;
const REPORT_INTERVAL = 1000; // ms between "shown" reports to the server
const SLIDERS = ["strength", "steps", "blend", "ema", "feedback", "control_scale"];
// The sliders the server reports and the address may set; control_scale only on a stream with a ControlNet.
const ENGINE_SLIDERS = ["strength", "steps", "ema", "feedback", "control_scale"];
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

function setControl(name, value) {
  if (name === "blend") {
    applyBlend();
  } else {
    send({ type: "controls", [name]: value });
  }
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
  else if (message.type === "error") notice(message.message);
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
  $("control_scale").parentElement.hidden = !hasControlNet();
  for (const name of ENGINE_SLIDERS) if (typeof state.controls[name] === "number") showSlider(name, state.controls[name]);
  page.mirror = state.controls.mirror;
  drawMirror();
  if (!page.urlApplied) applyUrl();
  drawStatus();
  syncTransport();
}

// Settings in the address (?prompt=...&strength=0.6&steps=2&ema=0.3&feedback=0.2&blend=0.2&seed=7&mirror=1, and
// source=text for text to image) are applied once, so a look can be bookmarked or shared. control_scale is
// left out for a stream without a ControlNet, which would refuse the whole message.
function applyUrl() {
  page.urlApplied = true;
  const params = new URLSearchParams(location.search);
  const controls = { type: "controls" };
  for (const name of [...ENGINE_SLIDERS, "seed"]) {
    if (params.has(name) && (name !== "control_scale" || hasControlNet())) controls[name] = Number(params.get(name));
  }
  if (params.has("prompt")) controls.prompt = params.get("prompt");
  if (params.has("mirror")) controls.mirror = ["1", "true", "yes"].includes(params.get("mirror"));
  if (params.has("blend")) { showSlider("blend", Number(params.get("blend"))); applyBlend(); }
  if (Object.keys(controls).length > 1) {
    send(controls);
    for (const name of ENGINE_SLIDERS) if (name in controls) showSlider(name, controls[name]);
    if ("prompt" in controls) $("prompt").value = controls.prompt;
    if ("mirror" in controls) { page.mirror = controls.mirror; drawMirror(); }
  }
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

// --- controls ---------------------------------------------------------------------------------------

function showSlider(name, value) {
  const input = $(name);
  // The ControlNet slider spans the camera app's c / x range, 0-2, and the steps slider its keys, 1-4; a value set
  // higher (a scale up to 5: --control-scale, OSC, the address; a stream started with more steps) widens it,
  // so that the slider shows the value the stream has.
  if (["control_scale", "steps"].includes(name) && value > Number(input.max)) input.max = String(value);
  input.value = value;
  input.parentElement.querySelector("output").textContent = Number(input.value).toFixed(name === "steps" ? 0 : 2);
}

function applyBlend() {
  const opacity = String(1 - Number($("blend").value)); // the camera shows through beneath
  for (const id of ["output", "output-video"]) $(id).style.opacity = opacity;
}

function drawMirror() {
  for (const pane of document.querySelectorAll(".pane")) pane.classList.toggle("mirrored", page.mirror);
  $("mirror").setAttribute("aria-pressed", String(page.mirror));
}

function hasControlNet() {
  return page.state !== null && typeof page.state.controls.control_scale === "number";
}

function choosePrompt(index) {
  const prompts = page.state ? page.state.prompts : [];
  if (!prompts.length) return;
  const i = ((index % prompts.length) + prompts.length) % prompts.length;
  $("gallery").value = String(i);
  $("prompt").value = prompts[i];
  send({ type: "controls", prompt: prompts[i] });
}

function nudge(name, delta) {
  const input = $(name);
  const value = Math.min(Number(input.max), Math.max(Number(input.min), Number(input.value) + delta));
  showSlider(name, value);
  setControl(name, Number(input.value));
}

function setSteps(count) {
  showSlider("steps", count);
  setControl("steps", count);
}

function togglePause() {
  page.paused = !page.paused;
  if (rtc.sender) rtc.sender.replaceTrack(page.paused ? null : rtc.track);
  $("pause").setAttribute("aria-pressed", String(page.paused));
  drawStatus();
  pump();
}

function saveOutput() {
  const output = rtc.live ? $("output-video") : $("output");
  const width = rtc.live ? output.videoWidth : output.naturalWidth;
  const height = rtc.live ? output.videoHeight : output.naturalHeight;
  if (!width) return;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(output, 0, 0);
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `streamdiff-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

function fullScreen() {
  const pane = $("output-pane");
  if (document.fullscreenElement) document.exitFullscreen();
  else pane.requestFullscreen();
}

const KEYS = {
  n: () => choosePrompt(Number($("gallery").value) + 1),
  p: () => choosePrompt(Number($("gallery").value) - 1),
  "]": () => nudge("strength", 0.05), "[": () => nudge("strength", -0.05),
  "+": () => nudge("blend", 0.1), "=": () => nudge("blend", 0.1), "-": () => nudge("blend", -0.1),
  e: () => nudge("ema", 0.05), d: () => nudge("ema", -0.05),
  f: () => nudge("feedback", 0.05), v: () => nudge("feedback", -0.05),
  c: () => hasControlNet() && nudge("control_scale", 0.1), x: () => hasControlNet() && nudge("control_scale", -0.1),
  1: () => setSteps(1), 2: () => setSteps(2), 3: () => setSteps(3), 4: () => setSteps(4),
  r: () => $("seed").click(), m: () => $("mirror").click(), " ": togglePause, s: saveOutput, l: fullScreen,
};

function bindControls() {
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value;
    const prompts = page.state ? page.state.prompts : [];
    if (page.state && !prompts.includes(text)) { // the server keeps it too: n / p reach it from now on
      prompts.push(text);
      $("gallery").add(new Option(text.length > 60 ? text.slice(0, 57) + "…" : text, prompts.length - 1));
    }
    if (page.state) $("gallery").value = String(prompts.indexOf(text));
    send({ type: "controls", prompt: text });
  });
  $("gallery").addEventListener("change", () => choosePrompt(Number($("gallery").value)));
  for (const name of SLIDERS) {
    $(name).addEventListener("input", () => { showSlider(name, $(name).value); setControl(name, Number($(name).value)); });
  }
  $("seed").addEventListener("click", () => send({ type: "controls", seed: Math.floor(Math.random() * 2 ** 31) }));
  $("mirror").addEventListener("click", () => { page.mirror = !page.mirror; drawMirror(); send({ type: "controls", mirror: page.mirror }); });
  $("pause").addEventListener("click", togglePause);
  $("midi").addEventListener("click", startMidi);
  $("save").addEventListener("click", saveOutput);
  $("fullscreen").addEventListener("click", fullScreen);
  $("source").addEventListener("change", () => {
    const value = $("source").value;
    if (value === "screen") useScreen();
    else if (value === "text") useText();
    else if (value === "file") $("file").click();
    else useCamera(value.slice("camera:".length));
  });
  $("file").addEventListener("change", () => { if ($("file").files[0]) useFile($("file").files[0]); });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
    const action = KEYS[event.key];
    if (action) { event.preventDefault(); action(); }
  });
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
