// The viewer page: joins a local room over WebRTC (recvonly audio + video, no STUN: the room
// is on this machine), shows the session's status pushed by the room (server-sent events),
// speaks as the agent, and measures what this browser receives with getStats().
//
// Figures, each over the last second: frames decoded per second; jitter-buffer delay of video
// and of audio (jitterBufferDelay / jitterBufferEmittedCount); A/V offset = video delay minus
// audio delay (positive: the picture comes later than the sound); packets lost; audio received
// (totalSamplesReceived) and its level. "barge in → silence" is measured at each barge in: from
// the click to the start of the first 300 ms of silence heard (a WebAudio analyser on the
// received track, polled every 5 ms: below -60 dBFS), and to its arrival: heard minus the
// time those silent samples spent in the jitter buffer (getStats jitterBufferDelay).
'use strict';

const $ = (id) => document.getElementById(id);
const WINDOW_MS = 1000;
const SAMPLE_MS = 250;
const SILENCE_POLL_MS = 5;
const SILENCE_PEAK = 0.001; // -60 dBFS
const SILENT_RUN_MS = 300; // longer than any gap between words
const SILENCE_TIMEOUT_MS = 3000;

const state = {
  room: null,
  pc: null,
  events: null,
  history: [],
  figures: {},
  status: null,
  bargeIn: null,
  hearing: null,
};

function api(path, options) {
  return fetch(path, options).then(async (response) => {
    if (!response.ok) {
      throw new Error(`${response.status}: ${await response.text()}`);
    }
    return response.json();
  });
}

function say(message) {
  $('f-message').textContent = message;
}

// --- rooms -------------------------------------------------------------------------------

async function loadRooms() {
  let listing;
  try {
    listing = await api('/viewer/api/rooms');
  } catch (error) {
    say(`cannot list rooms: ${error.message}`);
    return;
  }
  $('agent').textContent = `(${listing.agent})`;
  const select = $('room');
  const names = listing.rooms.map((r) => r.roomId);
  const shown = Array.from(select.options).map((o) => o.value);
  if (names.join('\n') !== shown.join('\n')) {
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    if (state.room && names.includes(state.room)) select.value = state.room;
  }
  const wavs = $('wav');
  if (wavs.options.length !== listing.wavs.length) {
    wavs.replaceChildren(...listing.wavs.map((name) => new Option(name, name)));
  }
  const wanted = new URLSearchParams(location.search).get('room');
  if (state.room && !names.includes(state.room)) {
    disconnect(); // the room ended: follow the next one, or the same id when it is back
    state.room = null;
    $('connection').textContent = 'the room ended';
  }
  if (!state.room && names.length) {
    connect(wanted && names.includes(wanted) ? wanted : names[0]);
  } else if (state.room && state.events && state.events.readyState === EventSource.CLOSED) {
    connect(state.room); // its status stream ended (a new session in the same room)
  }
}

// --- WebRTC ------------------------------------------------------------------------------

function iceGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === 'complete') resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000); // whatever was gathered by then
  });
}

async function connect(room) {
  disconnect();
  state.room = room;
  $('room').value = room;
  history.replaceState(null, '', `?room=${encodeURIComponent(room)}`);
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  state.history = [];
  const stream = new MediaStream();
  const video = $('avatar');
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (event) => {
    stream.addTrack(event.track);
    if (event.track.kind === 'audio') listen(event.track);
    if (video.srcObject !== stream) {
      video.srcObject = stream; // once: a second load would cut the first play() short
      play(video);
    }
  };
  pc.onconnectionstatechange = () => {
    $('connection').textContent = `WebRTC ${pc.connectionState}`;
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  try {
    const answer = await api(`/viewer/api/rooms/${encodeURIComponent(room)}/offer`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: 'offer' }),
    });
    if (state.pc !== pc) return;
    await pc.setRemoteDescription(answer);
  } catch (error) {
    say(`cannot join ${room}: ${error.message}`);
    return;
  }
  state.events = new EventSource(`/viewer/api/rooms/${encodeURIComponent(room)}/events`);
  state.events.onmessage = (event) => showStatus(JSON.parse(event.data));
}

function disconnect() {
  if (state.pc) state.pc.close();
  if (state.hearing) state.hearing.context.close();
  state.hearing = null;
  if (state.events) state.events.close();
  state.pc = null;
  state.events = null;
}

function play(video) {
  video.muted = false;
  video.play().then(
    () => { $('sound').hidden = true; },
    () => {
      // autoplay with sound needs a click on this page first: start muted, offer sound on
      video.muted = true;
      video.play().catch(() => {});
      $('sound').hidden = false;
    },
  );
}

// --- status ------------------------------------------------------------------------------

function fixed(value, digits, unit) {
  return value === null || value === undefined ? '-' : `${Number(value).toFixed(digits)}${unit}`;
}

function showStatus(s) {
  state.status = s;
  const playback = s.playback || {};
  $('s-phase').textContent = s.phase || 'waiting for an avatar';
  $('s-playback').textContent = playback.state || '-';
  $('s-playback').className = playback.state === 'Speaking' ? 'speaking' : '';
  $('s-segments').textContent = playback.segments ?? '-';
  $('s-interrupts').textContent = playback.interrupts ?? '-';
  $('s-position').textContent = fixed(playback.position, 2, ' s');
  $('s-placement').textContent = s.node ? `${s.node} / ${s.gpu ?? '-'}` : '-';
  $('s-fps').textContent = fixed(s.fps, 1, '');
  $('s-sync').textContent = fixed(s.syncErrorMs, 1, ' ms');
  $('s-source').textContent = s.source === 'session'
    ? 'the AvatarSession status' : `the room (avatar ${s.avatar || '-'})`;
  $('placeholder').hidden = Boolean(s.avatar) || s.source === 'session';
  $('acks').replaceChildren(...(s.acks || []).slice().reverse().map((ack) => {
    const item = document.createElement('li');
    const at = new Date(ack.at * 1000).toLocaleTimeString();
    item.textContent = `${at} position ${ack.playbackPosition.toFixed(2)} s, ` +
      `interrupted ${ack.interrupted}`;
    return item;
  }));
}

// --- controls ----------------------------------------------------------------------------

function roomPath(action) {
  return `/viewer/api/rooms/${encodeURIComponent(state.room)}/${action}`;
}

async function control(action, options) {
  if (!state.room) return null;
  try {
    return await api(roomPath(action), { method: 'POST', ...options });
  } catch (error) {
    say(`${action}: ${error.message}`);
    return null;
  }
}

async function speakWav() {
  const answer = await control('speak', {
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ wav: $('wav').value, endTurn: $('end-turn-after').checked }),
  });
  if (answer) say(`speaking ${answer.seconds.toFixed(2)} s of ${$('wav').value}`);
}

async function speakFile() {
  const file = $('upload').files[0];
  if (!file) {
    say('choose an audio file first');
    return;
  }
  const form = new FormData();
  form.append('endTurn', String($('end-turn-after').checked));
  form.append('audio', file, file.name);
  const answer = await control('speak', { body: form });
  if (answer) say(`speaking ${answer.seconds.toFixed(2)} s of ${file.name}`);
}

// The sound as this page hears it: a WebAudio analyser on the received track. getStats'
// audioLevel cannot time a barge in: it holds the peak of ~110 ms windows and decays by 4x a
// window, so it takes ~0.5 s to fall to silence after the sound has stopped.
function listen(track) {
  try {
    const context = new AudioContext();
    const analyser = context.createAnalyser();
    analyser.fftSize = 256; // 5.3 ms at 48 kHz: now
    const recent = context.createAnalyser();
    recent.fftSize = 8192; // 171 ms: was it speaking just now
    const source = context.createMediaStreamSource(new MediaStream([track]));
    source.connect(analyser);
    source.connect(recent);
    state.hearing = { context, analyser, recent };
  } catch (error) {
    say(`no WebAudio: ${error.message}`);
  }
}

function peakOf(analyser) {
  const buffer = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(buffer);
  let peak = 0;
  for (const value of buffer) peak = Math.max(peak, Math.abs(value));
  return peak;
}

// The peak level heard in the last 5 ms (`loudness`) or 171 ms (`recentLoudness`).
function loudness() {
  return state.hearing ? peakOf(state.hearing.analyser) : null;
}

function recentLoudness() {
  return state.hearing ? peakOf(state.hearing.recent) : null;
}

// The start of the first SILENT_RUN_MS of silence heard after `since` (ms after it), polling
// the analyser every SILENCE_POLL_MS, with the audio jitter-buffer delay of the samples played
// in that run (getStats); null after SILENCE_TIMEOUT_MS.
async function silenceHeardAfter(since) {
  let run = null;
  while (performance.now() - since < SILENCE_TIMEOUT_MS) {
    await new Promise((resolve) => setTimeout(resolve, SILENCE_POLL_MS));
    const peak = loudness();
    const now = performance.now();
    if (peak === null) return null;
    if (peak >= SILENCE_PEAK) {
      run = null;
    } else if (run === null) {
      run = { start: now, stats: inbound() };
    } else if (now - run.start >= SILENT_RUN_MS) {
      const [first, last] = [await run.stats, await inbound()];
      const buffered = first && last && first.audio && last.audio
        ? delayMs(last.audio, first.audio) : null;
      return { heardMs: run.start - since, bufferedMs: buffered };
    }
  }
  return null;
}

async function bargeIn() {
  const clickedAt = performance.now();
  const measuring = { clickedAt, heardMs: null, arrivedMs: null, loudAtClick: recentLoudness() };
  state.bargeIn = measuring;
  $('f-silence').textContent = 'measuring…';
  if (state.hearing) state.hearing.context.resume();
  const sent = control('interrupt').then(() => {
    measuring.answeredMs = performance.now() - clickedAt;
  });
  const silence = await silenceHeardAfter(clickedAt);
  await sent;
  if (silence) {
    measuring.heardMs = silence.heardMs;
    measuring.jitterBufferMs = silence.bufferedMs;
    if (silence.bufferedMs !== null) measuring.arrivedMs = silence.heardMs - silence.bufferedMs;
  }
  measuring.done = true;
  $('f-silence').textContent = silence === null ? 'not silent within 3 s'
    : `${fixed(measuring.arrivedMs, 0, ' ms')} arrived, ${fixed(measuring.heardMs, 0, ' ms')} heard`;
}

// --- figures -----------------------------------------------------------------------------

async function inbound() {
  if (!state.pc) return null;
  const report = await state.pc.getStats();
  const found = { at: performance.now() };
  report.forEach((entry) => {
    if (entry.type === 'inbound-rtp' && (entry.kind === 'audio' || entry.kind === 'video')) {
      found[entry.kind] = entry;
    }
  });
  return found;
}

async function videoCounters() {
  const stats = await inbound();
  if (!stats || !stats.video) return null;
  return { at: stats.at, framesDecoded: stats.video.framesDecoded || 0 };
}

async function audioCounters() {
  const stats = await inbound();
  if (!stats || !stats.audio) return null;
  return {
    at: stats.at,
    samples: stats.audio.totalSamplesReceived || 0,
    energy: stats.audio.totalAudioEnergy || 0,
    duration: stats.audio.totalSamplesDuration || 0,
    level: stats.audio.audioLevel || 0,
  };
}

function delayMs(now, before) {
  const emitted = now.jitterBufferEmittedCount - (before.jitterBufferEmittedCount || 0);
  if (!emitted) return null;
  return (1000 * (now.jitterBufferDelay - (before.jitterBufferDelay || 0))) / emitted;
}

async function sample() {
  const stats = await inbound().catch(() => null);
  if (!stats || !stats.video || !stats.audio) return;
  state.history.push(stats);
  while (state.history.length > 2 && stats.at - state.history[1].at >= WINDOW_MS) {
    state.history.shift();
  }
  const before = state.history[0];
  const seconds = (stats.at - before.at) / 1000;
  if (seconds <= 0) return;
  const video = stats.video;
  const audio = stats.audio;
  const videoDelay = delayMs(video, before.video || {});
  const quality = $('avatar').getVideoPlaybackQuality();
  const audioDelay = delayMs(audio, before.audio || {});
  const figures = {
    framesDecodedPerSecond: (video.framesDecoded - (before.video.framesDecoded || 0)) / seconds,
    framesDecoded: video.framesDecoded || 0,
    width: video.frameWidth || null,
    height: video.frameHeight || null,
    videoJitterBufferMs: videoDelay,
    audioJitterBufferMs: audioDelay,
    avOffsetMs: videoDelay !== null && audioDelay !== null ? videoDelay - audioDelay : null,
    packetsLost: (video.packetsLost || 0) + (audio.packetsLost || 0),
    audioSamplesReceived: audio.totalSamplesReceived || 0,
    audioLevel: audio.audioLevel || 0,
    videoElementFrames: quality.totalVideoFrames,
    videoElementDropped: quality.droppedVideoFrames,
    windowSeconds: seconds,
  };
  state.figures = figures;
  $('f-fps').textContent = figures.framesDecodedPerSecond.toFixed(1);
  $('f-size').textContent = figures.width ? `${figures.width}×${figures.height}` : '-';
  $('f-vjb').textContent = fixed(videoDelay, 1, ' ms');
  $('f-ajb').textContent = fixed(audioDelay, 1, ' ms');
  $('f-offset').textContent = fixed(figures.avOffsetMs, 1, ' ms');
  $('f-lost').textContent = String(figures.packetsLost);
  $('f-dropped').textContent = `${figures.videoElementDropped} of ${figures.videoElementFrames}`;
  $('f-audio').textContent = `${(figures.audioSamplesReceived / 48000).toFixed(1)} s`;
  $('f-level').textContent = figures.audioLevel.toFixed(3);
}

// The current picture as PNG (its own size), for tools and tests.
function frame() {
  const video = $('avatar');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  return canvas.toDataURL('image/png');
}

window.avatarViewer = {
  figures: () => state.figures,
  status: () => state.status,
  bargeIn: () => state.bargeIn,
  connection: () => (state.pc ? state.pc.connectionState : 'none'),
  audioCounters,
  videoCounters,
  loudness,
  frame,
};

$('room').addEventListener('change', (event) => connect(event.target.value));
$('speak').addEventListener('click', speakWav);
$('speak-file').addEventListener('click', speakFile);
$('interrupt').addEventListener('click', bargeIn);
$('end-turn').addEventListener('click', () => control('end-turn'));
$('sound').addEventListener('click', () => {
  $('avatar').muted = false;
  $('sound').hidden = true;
});
loadRooms();
setInterval(loadRooms, 2000);
setInterval(sample, SAMPLE_MS);
