// LL-HLS with hls.js (the page's default player): /live/index.m3u8 with the settings of
// hls-settings.js and the page's own live catch-up. Safari without MSE plays natively.

import Hls from './vendor/hls.js/hls.mjs';
import { catchUp, hlsConfig } from './hls-settings.js';

const SRC = '/live/index.m3u8';

/**
 * @param {object} player window.player: gets .hls (or .native) and .latency()
 * @param {object} hooks the page's setState / error / bufferStalled / play / retryMs
 * @param {{bufferAhead: () => number}} page
 */
export function startPlayer(player, hooks, page) {
  const video = player.video;
  if (Hls.isSupported()) {
    player.latency = () => (player.hls && player.hls.media ? player.hls.latency : null);
    startHlsJs(player, hooks);
    setInterval(() => catchUpTick(player, page), catchUp.intervalMs);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    // iPhone Safari before ManagedMediaSource: its own LL-HLS player.
    player.native = true;
    video.src = SRC;
    hooks.play();
  } else {
    hooks.setState('this browser cannot play HLS', 'bad');
  }
}

function startHlsJs(player, hooks) {
  const hls = new Hls(hlsConfig);
  player.hls = hls;
  const startOver = (delayMs) => {
    hls.destroy();
    player.hls = null;
    setTimeout(() => startHlsJs(player, hooks), delayMs);
  };
  hls.on(Hls.Events.ERROR, (_event, data) => {
    hooks.error(`${data.type}/${data.details}${data.fatal ? ' (fatal)' : ''}`);
    if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) hooks.bufferStalled();
    if (!data.fatal || player.hls !== hls) return;
    hooks.setState(`error: ${data.details}, retrying`, 'bad');
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
    } else {
      // Network errors (daemon restarting, media off in safe mode): start over.
      startOver(hooks.retryMs);
    }
  });
  // A stream restart begins a new run of segments whose numbers jump far ahead (the
  // daemon numbers each run from its start time). hls.js would place the new segments by
  // their numbers, minutes ahead of their pictures, and stand still: join the new run.
  let lastSN = null;
  hls.on(Hls.Events.LEVEL_LOADED, (_event, data) => {
    const { startSN, endSN } = data.details;
    if (player.hls !== hls) return;
    if (lastSN !== null && startSN > lastSN + 1) {
      hooks.error(`media sequence jumped from ${lastSN} to ${startSN}`);
      hooks.setState('the stream restarted: joining it again', 'warn');
      startOver(0);
      return;
    }
    lastSN = endSN;
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => hooks.play());
  hls.loadSource(SRC);
  hls.attachMedia(player.video);
}

// Live catch-up (see hls-settings.js for why hls.js's own is off): nudge the playback
// rate towards hls.js's target latency, never while the buffer ahead is thin.
function catchUpTick(player, page) {
  const hls = player.hls;
  const video = player.video;
  if (!hls || !hls.media || video.paused || !player.stats.started) return;
  const target = hls.targetLatency;
  const latency = hls.latency;
  if (target === null || !latency) return;
  const over = latency - target;
  const speeding = video.playbackRate > 1;
  let rate = 1;
  if (page.bufferAhead() >= catchUp.minBufferAheadS &&
      (over > catchUp.startAboveS || (speeding && over > catchUp.stopWithinS))) {
    // Steps of 0.05: each change of rate costs the audio renderer a resample switch.
    rate = Math.min(catchUp.maxRate, Math.round((1 + catchUp.gain * over) * 20) / 20);
    rate = Math.max(rate, 1.05);
  }
  if (video.playbackRate !== rate) video.playbackRate = rate;
}
