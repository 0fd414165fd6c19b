// LL-DASH with dash.js (/?player=dash): /live/manifest.mpd with the settings of
// dash-settings.js. dash.js does its own live catch-up, towards the MPD's target latency.

import { MediaPlayer } from './vendor/dashjs/modern/esm/dash.mediaplayer.min.js';
import { dashSettings } from './dash-settings.js';

const SRC = '/live/manifest.mpd';
const events = MediaPlayer.events;

// dash.js errors after which it plays no more (the MPD could not be had or used, e.g. a
// 503 before the stream starts or a daemon restarting): start over, as the HLS page does.
// Media download errors are retried by dash.js itself.
const FATAL_CODES = new Set([
  10, // MANIFEST_LOADER_PARSING_FAILURE
  11, // MANIFEST_LOADER_LOADING_FAILURE
  25, // DOWNLOAD_ERROR_ID_MANIFEST
  31, // MANIFEST_ERROR_ID_PARSE
  32, // MANIFEST_ERROR_ID_NOSTREAMS
]);

/**
 * @param {object} player window.player: gets .dash and .latency()
 * @param {object} hooks the page's setState / error / bufferStalled / play / retryMs
 */
export function startPlayer(player, hooks) {
  player.latency = () => {
    const dash = player.dash;
    if (!dash || !dash.isReady()) return null;
    const latency = dash.getCurrentLiveLatency();
    return Number.isFinite(latency) && latency > 0 ? latency : null;
  };
  startDashJs(player, hooks);
}

function startDashJs(player, hooks) {
  const dash = MediaPlayer().create();
  player.dash = dash;
  dash.updateSettings(dashSettings);
  const startOver = (delayMs) => {
    dash.destroy();
    player.dash = null;
    setTimeout(() => startDashJs(player, hooks), delayMs);
  };
  dash.on(events.ERROR, (e) => {
    const err = e.error || {};
    const fatal = FATAL_CODES.has(err.code);
    hooks.error(`${err.code}/${err.message || 'error'}${fatal ? ' (fatal)' : ''}`);
    if (!fatal || player.dash !== dash) return;
    hooks.setState(`error: ${err.message || err.code}, retrying`, 'bad');
    startOver(hooks.retryMs);
  });
  // A stream restart (or the source lost and back) starts a new Period, and the MPD
  // describes only the newest run of segments. dash.js would go on asking for the next
  // segment of the Period it plays, which no longer exists, and stand still for good:
  // once that Period has left the MPD, join the new one.
  dash.on(events.MANIFEST_LOADED, (e) => {
    const stream = player.dash === dash ? dash.getActiveStream() : null;
    const playing = stream && stream.getStreamInfo().id;
    const periods = [].concat((e.data && e.data.Period) || []);
    if (!playing || periods.some((p) => p.id === playing)) return;
    hooks.error(`period ${playing} ended`);
    hooks.setState('the stream restarted: joining it again', 'warn');
    startOver(0);
  });
  // The buffer of a track ran empty: dash.js's own stall report (a 'waiting' may follow).
  dash.on(events.BUFFER_EMPTY, () => hooks.bufferStalled());
  dash.on(events.STREAM_INITIALIZED, () => hooks.play());
  dash.initialize(player.video, SRC, true);
}
