// The page's controls: sliders (one per ControlNet, built from the stream's state, and the style picture's), buttons,
// keys and the settings in the address. Each change goes to the server as a "controls" message; the server's "state"
// messages (a change from OSC, MIDI or another page) move the sliders back (app.js calls drawControlNets and
// drawStyle). A style picture goes up as a file, to POST /api/style_image.
"use strict";

const SLIDERS = ["strength", "steps", "blend", "ema", "feedback"];
// The sliders the server reports and the address may set (each ControlNet's scale aside).
const ENGINE_SLIDERS = ["strength", "steps", "ema", "feedback"];
const CONTROL_STEP = 0.1; // c / x, as in the camera app
const STYLE_STEP = 0.1; // i / u, as in the camera app

// Settings in the address (?prompt=...&strength=0.6&steps=2&ema=0.3&feedback=0.2&blend=0.2&seed=7&mirror=1,
// control_scale=0.7 for every ControlNet and control_scale_2=0.3 for the second, ip_adapter_scale=0.8 for the style
// picture, and source=text for text to image) are applied once, so a look can be bookmarked or shared. Scales for
// ControlNets (or an IP-Adapter) the stream lacks are left out: the server would refuse the whole message.
function applyUrl() {
  page.urlApplied = true;
  const params = new URLSearchParams(location.search);
  const controls = { type: "controls" };
  const scales = controlScaleIds().length ? ["control_scale", ...controlScaleIds()] : [];
  const style = hasStyle() ? ["ip_adapter_scale"] : [];
  for (const name of [...ENGINE_SLIDERS, "seed", ...scales, ...style]) {
    if (params.has(name)) controls[name] = Number(params.get(name));
  }
  if (params.has("prompt")) controls.prompt = params.get("prompt");
  if (params.has("mirror")) controls.mirror = ["1", "true", "yes"].includes(params.get("mirror"));
  if (params.has("blend")) { showSlider("blend", Number(params.get("blend"))); applyBlend(); }
  if (Object.keys(controls).length > 1) {
    send(controls);
    for (const name of [...ENGINE_SLIDERS, ...style]) if (name in controls) showSlider(name, controls[name]);
    for (const id of controlScaleIds()) { // the server sets control_scale first, then control_scale_N
      const scale = id in controls ? controls[id] : controls.control_scale;
      if (scale !== undefined) showSlider(id, scale);
    }
    if ("prompt" in controls) $("prompt").value = controls.prompt;
    if ("mirror" in controls) { page.mirror = controls.mirror; drawMirror(); }
  }
}

function setControl(name, value) {
  if (name === "blend") {
    applyBlend();
  } else {
    send({ type: "controls", [name]: value });
  }
}

function showSlider(name, value) {
  const input = $(name);
  // A ControlNet's or the style picture's slider spans the camera app's keys' range, 0-2, and the steps slider its
  // keys, 1-4; a value set higher (a scale up to 5: --control-scale, --ip-adapter-scale, OSC, the address; a stream
  // started with more steps) widens it, so that the slider shows the value the stream has.
  const widens = name.startsWith("control_scale_") || name === "ip_adapter_scale" || name === "steps";
  if (widens && value > Number(input.max)) input.max = String(value);
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
  c: () => nudgeControlNets(CONTROL_STEP), x: () => nudgeControlNets(-CONTROL_STEP),
  i: () => nudgeStyle(STYLE_STEP), u: () => nudgeStyle(-STYLE_STEP),
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
  for (const name of [...SLIDERS, "ip_adapter_scale"]) {
    $(name).addEventListener("input", () => { showSlider(name, $(name).value); setControl(name, Number($(name).value)); });
  }
  $("style-file").addEventListener("change", () => {
    const file = $("style-file").files[0];
    if (file) sendStyle(file);
  });
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

// --- ControlNets: one slider each, control_scale_1 ... control_scale_N, labelled with its name ------------

function controlScaleIds() {
  return page.state ? page.state.controls.control_scales.map((_, i) => `control_scale_${i + 1}`) : [];
}

// The sliders are built again only when the stream's ControlNets differ, so that one being dragged stays.
function drawControlNets(state) {
  const row = $("control-scales");
  const names = state.control_names;
  if (row.dataset.names !== JSON.stringify(names)) {
    row.dataset.names = JSON.stringify(names);
    row.replaceChildren(...names.map((name, i) => controlSlider(name, `control_scale_${i + 1}`)));
  }
  row.hidden = names.length === 0;
  state.controls.control_scales.forEach((scale, i) => showSlider(`control_scale_${i + 1}`, scale));
}

function controlSlider(name, id) {
  const label = document.createElement("label");
  label.title = `how strongly the ${name} ControlNet steers (c / x: every ControlNet)`;
  const input = Object.assign(document.createElement("input"), { id, type: "range", min: "0", max: "2", step: "0.05" });
  const output = document.createElement("output");
  output.setAttribute("for", id);
  label.append(`ControlNet ${name} `, input, " ", output);
  input.addEventListener("input", () => { showSlider(id, input.value); setControl(id, Number(input.value)); });
  return label;
}

// c / x: every ControlNet's scale by `delta`, each within its slider's range, in one message.
function nudgeControlNets(delta) {
  const message = { type: "controls" };
  for (const id of controlScaleIds()) {
    const input = $(id);
    showSlider(id, Math.min(Number(input.max), Math.max(Number(input.min), Number(input.value) + delta)));
    message[id] = Number(input.value);
  }
  if (Object.keys(message).length > 1) send(message);
}

// --- The style picture (a stream with an IP-Adapter): its slider, i / u, and the picture sent as a file -------

function hasStyle() {
  return Boolean(page.state) && page.state.controls.ip_adapter_scale !== null;
}

// The row shows only on a stream with an IP-Adapter; it names the picture in use (the stream's, whoever sent it).
function drawStyle(state) {
  const scale = state.controls.ip_adapter_scale;
  $("style-row").hidden = scale === null;
  if (scale === null) return;
  showSlider("ip_adapter_scale", scale);
  $("style-name").textContent = state.style_image === null ? "no picture yet: the style has no effect"
    : `in use: ${state.style_image}`;
}

function nudgeStyle(delta) {
  if (hasStyle()) nudge("ip_adapter_scale", delta);
}

// The server decodes and encodes the picture between two frames; the page hears how it went as a "state" (the
// picture's name) or an "error" on its WebSocket. A refusal before that (no IP-Adapter, another page drives the
// stream) comes back here.
async function sendStyle(file) {
  const chooser = $("style-file");
  if (page.client === null) {
    notice("The page is not connected yet: choose the picture again once it is");
  } else {
    $("style-name").textContent = `sending ${file.name}…`;
    const path = `/api/style_image?client=${page.client}&name=${encodeURIComponent(file.name)}`;
    try {
      const response = await fetch(path, { method: "POST", body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" } });
      if (!response.ok) { notice((await response.json()).error); drawStyle(page.state); }
    } catch (error) {
      notice(`The style picture did not reach the server: ${error.message}`);
      drawStyle(page.state);
    }
  }
  chooser.value = ""; // the same file may be chosen again
}
