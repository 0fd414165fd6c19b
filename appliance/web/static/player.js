// The appliance's live view: plays /live/index.m3u8 with hls.js (the appliance's own
// low-latency settings) and shows the latency hls.js reports, the latency read from
// the picture's stamp, and stalls. State is on window.player for tests and benchmarks.

import Hls from './vendor/hls.js/hls.mjs';
import { catchUp, hlsConfig } from './hls-settings.js';
import { readStamp } from './stamp.js';

const SRC = '/live/index.m3u8';
const RETRY_MS = 2000;
const MAX_SAMPLES = 20000; // about 11 min at 30 fps: bounded, for long-open pages

const video = document.getElementById('video');
const $ = (id) => document.getElementById(id);

const stats = {
  started: false, // first 'playing' seen
  stalls: 0, // stall episodes after start: a 'waiting' or BUFFER_STALLED_ERROR
  waitingEvents: 0, // raw 'waiting' events after start
  bufferStalledErrors: 0, // raw hls.js BUFFER_STALLED_ERROR after start
  inStall: false,
  stampLatencyMs: null, // last per-frame Date.now() - stamp
  stampSamples: [], // every rendered frame's stamp latency (ms), bounded
  framesWithoutStamp: 0,
  hlsLatency: null, // seconds, hls.latency
  errors: [], // last few hls.js errors, for the page and tests
};

const player = { hls: null, stats, video, native: false };
window.player = player;

function setState(text, cls = '') {
  const el = $('state');
  el.textContent = text;
  el.className = cls;
}

function stallBegins() {
  if (!stats.started || stats.inStall) return;
  stats.inStall = true;
  stats.stalls++;
}

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

// Live catch-up (see hls-settings.js for why hls.js's own is off): nudge the playback
// rate towards hls.js's target latency, never while the buffer ahead is thin.
function catchUpTick() {
  const hls = player.hls;
  if (!hls || !hls.media || video.paused || !stats.started) return;
  const target = hls.targetLatency;
  const latency = hls.latency;
  if (target === null || !latency) return;
  const over = latency - target;
  const speeding = video.playbackRate > 1;
  let rate = 1;
  if (bufferAhead() >= catchUp.minBufferAheadS &&
      (over > catchUp.startAboveS || (speeding && over > catchUp.stopWithinS))) {
    // Steps of 0.05: each change of rate costs the audio renderer a resample switch.
    rate = Math.min(catchUp.maxRate, Math.round((1 + catchUp.gain * over) * 20) / 20);
    rate = Math.max(rate, 1.05);
  }
  if (video.playbackRate !== rate) video.playbackRate = rate;
}
setInterval(catchUpTick, catchUp.intervalMs);

function fmtSeconds(s) {
  return s === null || !Number.isFinite(s) ? '–' : `${s.toFixed(2)} s`;
}

function render() {
  const hls = player.hls;
  if (hls && hls.media) stats.hlsLatency = hls.latency;
  $('hls-latency').textContent = player.native ? 'n/a (native HLS)' : fmtSeconds(stats.hlsLatency);
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
    $('stamp-latency').textContent =
      stats.stampLatencyMs === null ? 'no stamp' : fmtSeconds(stats.stampLatencyMs / 1000);
  }
  $('stalls').textContent = String(stats.stalls);
  $('buffer').textContent = video.buffered.length ? fmtSeconds(bufferAhead()) : '–';
  $('rate').textContent = `${video.playbackRate.toFixed(2)}×`;
  $('size').textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '–';
}
setInterval(render, 500);

function start() {
  if (Hls.isSupported()) {
    startHlsJs();
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    // iPhone Safari before ManagedMediaSource: its own LL-HLS player.
    player.native = true;
    video.src = SRC;
    video.play().catch(() => setState('tap play', 'warn'));
  } else {
    setState('this browser cannot play HLS', 'bad');
  }
}

function startHlsJs() {
  const hls = new Hls(hlsConfig);
  player.hls = hls;
  hls.on(Hls.Events.ERROR, (_event, data) => {
    stats.errors.push(`${data.type}/${data.details}${data.fatal ? ' (fatal)' : ''}`);
    if (stats.errors.length > 20) stats.errors.shift();
    if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR && stats.started) {
      stats.bufferStalledErrors++;
      stallBegins();
    }
    if (!data.fatal) return;
    setState(`error: ${data.details}, retrying`, 'bad');
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
    } else {
      // Network errors (daemon restarting, media off in safe mode): start over.
      hls.destroy();
      player.hls = null;
      setTimeout(startHlsJs, RETRY_MS);
    }
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    video.play().catch(() => setState('tap play', 'warn'));
  });
  hls.loadSource(SRC);
  hls.attachMedia(video);
}

setState('connecting…');
start();
