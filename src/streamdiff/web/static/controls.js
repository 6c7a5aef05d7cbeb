// The page's controls: sliders (one per ControlNet, built from the stream's state), buttons, keys and the
// settings in the address. Each change goes to the server as a "controls" message; the server's "state"
// messages (a change from OSC, MIDI or another page) move the sliders back (app.js calls drawControlNets).
"use strict";

const SLIDERS = ["strength", "steps", "blend", "ema", "feedback"];
// The sliders the server reports and the address may set (each ControlNet's scale aside).
const ENGINE_SLIDERS = ["strength", "steps", "ema", "feedback"];
const CONTROL_STEP = 0.1; // c / x, as in the camera app

// Settings in the address (?prompt=...&strength=0.6&steps=2&ema=0.3&feedback=0.2&blend=0.2&seed=7&mirror=1,
// control_scale=0.7 for every ControlNet and control_scale_2=0.3 for the second, and source=text for text to
// image) are applied once, so a look can be bookmarked or shared. Scales for ControlNets the stream lacks are
// left out: the server would refuse the whole message.
function applyUrl() {
  page.urlApplied = true;
  const params = new URLSearchParams(location.search);
  const controls = { type: "controls" };
  const scales = controlScaleIds().length ? ["control_scale", ...controlScaleIds()] : [];
  for (const name of [...ENGINE_SLIDERS, "seed", ...scales]) {
    if (params.has(name)) controls[name] = Number(params.get(name));
  }
  if (params.has("prompt")) controls.prompt = params.get("prompt");
  if (params.has("mirror")) controls.mirror = ["1", "true", "yes"].includes(params.get("mirror"));
  if (params.has("blend")) { showSlider("blend", Number(params.get("blend"))); applyBlend(); }
  if (Object.keys(controls).length > 1) {
    send(controls);
    for (const name of ENGINE_SLIDERS) if (name in controls) showSlider(name, controls[name]);
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
  // A ControlNet's slider spans the camera app's c / x range, 0-2, and the steps slider its keys, 1-4; a value set
  // higher (a scale up to 5: --control-scale, OSC, the address; a stream started with more steps) widens it,
  // so that the slider shows the value the stream has.
  if ((name.startsWith("control_scale_") || name === "steps") && value > Number(input.max)) input.max = String(value);
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
