// A MIDI controller on the page's own machine (Web MIDI), for a laptop driving a server elsewhere: the page
// forwards each channel message, the server maps it like its --midi input (the same map) and applies it;
// what only the page does (camera blend, pause) comes back as "page_controls".
"use strict";

const midi = { access: null, inputs: [] };

async function startMidi() {
  if (!navigator.requestMIDIAccess) {
    notice("This browser has no Web MIDI: use Chrome, Edge or Firefox, or --midi on the server");
    return;
  }
  try {
    midi.access = await navigator.requestMIDIAccess();
  } catch (error) {
    notice(`MIDI was not allowed: ${error.message || error}`);
    return;
  }
  midi.access.onstatechange = listenToMidi; // controllers plugged in later
  listenToMidi();
}

function listenToMidi() {
  midi.inputs = [...midi.access.inputs.values()];
  for (const input of midi.inputs) input.onmidimessage = forwardMidi;
  $("midi").setAttribute("aria-pressed", "true");
  notice(midi.inputs.length ? "" : "No MIDI input found: connect a controller");
  drawStatus();
}

function forwardMidi(event) {
  const data = Array.from(event.data);
  if (data.length === 0 || data.length > 3 || data[0] >= 0xf0) return; // clock, sysex: no control in them
  send({ type: "midi", data });
}

function onPageControls(message) {
  if ("blend" in message) { showSlider("blend", message.blend); applyBlend(); }
  if ("paused" in message && message.paused !== page.paused) togglePause();
  if (message.toggle_pause) togglePause();
}

function midiStatus() {
  return midi.inputs.length ? `MIDI ${midi.inputs.map((input) => input.name).join(", ")}` : null;
}
