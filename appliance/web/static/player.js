// The appliance's live preview on the dashboard: WebRTC over WHEP first (a fraction of a
// second behind the camera), LL-HLS with hls.js when WHEP cannot play here; or one player
// chosen with ?player=hls (hls.js), ?player=dash (dash.js, LL-DASH) or ?player=whep (no
// fallback). Each player module brings its own low-latency settings. The page shows the
// latency the player reports, the latency read from the picture's stamp, and stalls.
// State is on window.player for tests and benchmarks.

import { readStamp } from './stamp.js';

const RETRY_MS = 2000;
const MAX_SAMPLES = 20000; // about 11 min at 30 fps: bounded, for long-open pages
const PLAYERS = {
  whep: { label: 'WebRTC (WHEP)', module: './whep-player.js' },
  hls: { label: 'hls.js', module: './hls-player.js' },
  dash: { label: 'dash.js', module: './dash-player.js' },
};
const FALLBACK = 'hls'; // when WHEP cannot play
// ?player=...: what the page was asked for; 'auto' (no parameter) is WHEP, else LL-HLS.
const CHOICES = new Set(['auto', 'whep', 'hls', 'dash']);

const video = document.getElementById('video');
const $ = (id) => document.getElementById(id);

const stats = {
  started: false, // first 'playing' seen
  stalls: 0, // stall episodes after start: a 'waiting' or a player's own stall report
  waitingEvents: 0, // raw 'waiting' events after start
  bufferStalledErrors: 0, // raw player stall reports after start (hls.js BUFFER_STALLED_ERROR, dash.js bufferStalled)
  inStall: false,
  stampLatencyMs: null, // last per-frame Date.now() - stamp
  stampSamples: [], // every rendered frame's stamp latency (ms), bounded
  framesWithoutStamp: 0,
  playerLatency: null, // seconds, as the player computes it (hls.latency, dash.js live latency)
  errors: [], // last few player errors, for the page and tests
};

const asked = new URLSearchParams(location.search).get('player') || 'auto';
const requested = CHOICES.has(asked) ? asked : 'auto';

// requested: 'auto' | 'whep' | 'hls' | 'dash'; kind: the player playing now, 'whep' |
// 'hls' | 'dash'; hls / dash: the library's player object while one runs; pc, whep: the
// WebRTC peer connection and WHEP session (whep-player.js); fallbackReason: why WHEP gave
// way to LL-HLS; latency(): the player's own latency figure in seconds, or null.
const player = {
  requested,
  kind: requested === 'auto' ? 'whep' : requested,
  hls: null, dash: null, pc: null, whep: null, fallbackReason: null,
  stats, video, native: false, latency: () => null,
};
window.player = player;

function setState(text, cls = '') {
  const el = $('preview-state');
  el.textContent = text;
  el.className = cls;
}

function stallBegins() {
  if (!stats.started || stats.inStall) return;
  stats.inStall = true;
  stats.stalls++;
}

// What a player module may report back; the page keeps one set of figures for both.
const hooks = {
  setState,
  retryMs: RETRY_MS,
  error(text) {
    stats.errors.push(text);
    if (stats.errors.length > 20) stats.errors.shift();
  },
  bufferStalled() {
    if (!stats.started) return;
    stats.bufferStalledErrors++;
    stallBegins();
  },
  play() {
    video.play().catch(() => setState('tap play', 'warn'));
  },
};

video.addEventListener('playing', () => {
  stats.started = true;
  stats.inStall = false;
  setState('live', 'ok');
});
video.addEventListener('waiting', () => {
  if (!stats.started) return;
  stats.waitingEvents++;
  stallBegins();
  setState('buffering…', 'warn');
});

// Per rendered frame: read the stamp from the picture and compare with this clock.
// It measures glass-to-glass only when this device's clock matches the appliance's
// (same machine, or both on NTP); otherwise it shows the clock offset too.
const scratch = document.createElement('canvas');
function onFrame() {
  if (video.videoWidth > 0) {
    const stamp = readStamp(video, video.videoWidth, scratch);
    if (stamp === null) {
      stats.framesWithoutStamp++;
    } else {
      stats.stampLatencyMs = Date.now() - stamp;
      if (stats.stampSamples.length >= MAX_SAMPLES) stats.stampSamples.shift();
      stats.stampSamples.push(stats.stampLatencyMs);
    }
  }
  video.requestVideoFrameCallback(onFrame);
}
if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
  video.requestVideoFrameCallback(onFrame);
} else {
  $('stamp-latency').textContent = 'n/a (browser)';
}

function bufferAhead() {
  const b = video.buffered;
  return b.length ? b.end(b.length - 1) - video.currentTime : 0;
}

function fmtSeconds(s) {
  return s === null || !Number.isFinite(s) ? '–' : `${s.toFixed(2)} s`;
}

function render() {
  stats.playerLatency = player.latency();
  $('hls-latency').textContent = player.native ? 'n/a (native HLS)'
    : stats.started ? fmtSeconds(stats.playerLatency) : '–';
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
    $('stamp-latency').textContent =
      stats.stampLatencyMs === null ? 'no stamp' : fmtSeconds(stats.stampLatencyMs / 1000);
  }
  $('stalls').textContent = String(stats.stalls);
  $('buffer').textContent = video.buffered.length && !video.srcObject
    ? fmtSeconds(bufferAhead()) : '–';
  $('rate').textContent = `${video.playbackRate.toFixed(2)}×`;
  $('size').textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '–';
}
setInterval(render, 500);

function showPlayerChoice() {
  const label = PLAYERS[player.kind].label;
  $('player-kind').textContent = player.fallbackReason ? `${label} (fallback)` : label;
  $('player-kind').title = player.fallbackReason ? `WebRTC: ${player.fallbackReason}` : '';
  for (const link of document.querySelectorAll('#players a')) {
    if (link.dataset.player === requested) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

// WHEP could not play (whep-player.js says why): LL-HLS instead, unless WHEP was asked for.
function fallback(reason) {
  if (requested === 'whep') {
    setState(`WebRTC preview unavailable: ${reason}`, 'bad');
    return;
  }
  player.fallbackReason = reason;
  start(FALLBACK).catch(failed);
}

async function start(kind) {
  player.kind = kind;
  showPlayerChoice();
  setState('connecting…');
  // Only the chosen player's library is loaded.
  const { startPlayer } = await import(PLAYERS[kind].module);
  startPlayer(player, hooks, { bufferAhead, fallback });
}

function failed(err) {
  // The library did not load (npm packages missing, an old browser without modules).
  hooks.error(String(err));
  setState(`cannot start ${PLAYERS[player.kind].label}`, 'bad');
}

start(player.kind).catch(failed);
