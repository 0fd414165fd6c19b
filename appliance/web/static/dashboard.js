// The dashboard (/): the status the appliance pushes each second over SSE, shown as the
// virtual LEDs, the device state, the source, each rung's encoder, each uplink, and two
// charts of the last five minutes. The preview beside it is player.js.

import { LineChart } from './charts.js';
import {
  bytes, duration, h, kbps, NONE, num, stateClass, STATE_TEXT,
} from './format.js';
import { initShell, showHeader, statusFeed } from './shell.js';

const $ = (id) => document.getElementById(id);
const CHART_WINDOW_S = 300;

const bitrateChart = new LineChart($('chart-bitrate'), {
  title: 'Bitrate', unit: 'kbit/s', windowS: CHART_WINDOW_S, format: kbps,
});
const latencyChart = new LineChart($('chart-latency'), {
  title: 'Latency', unit: 'ms', windowS: CHART_WINDOW_S,
});

/** A number published in the status, or null: sections.<section>.<key>. */
function figure(sections, section, key) {
  const value = (sections[section] || {})[key];
  return typeof value === 'number' ? value : null;
}

function text(id, value, cls) {
  const el = $(id);
  el.textContent = value;
  if (cls !== undefined) el.className = cls;
}

function byPrefix(sections, prefix) {
  return Object.entries(sections)
    .filter(([k]) => k.startsWith(prefix))
    .map(([k, v]) => [k.slice(prefix.length), v])
    .sort(([a], [b]) => a.localeCompare(b));
}

// -- measured bitrates: bytes packaged per track between two snapshots ------------------

const lastBytes = new Map(); // track -> {bytes, at, kbps}
function measuredKbps(track, pkg) {
  if (!pkg || typeof pkg.bytes !== 'number' || typeof pkg.updated !== 'number') return null;
  const prev = lastBytes.get(track);
  if (prev && pkg.updated <= prev.at) return prev.kbps; // nothing packaged since
  const rate = prev && pkg.bytes >= prev.bytes // fewer bytes: the stream restarted
    ? ((pkg.bytes - prev.bytes) * 8) / (pkg.updated - prev.at) / 1000 : null;
  lastBytes.set(track, { bytes: pkg.bytes, at: pkg.updated, kbps: rate });
  return rate;
}

// -- cards, kept per name so that a refresh does not rebuild them ----------------------

function syncCards(host, entries, make, update, emptyText) {
  const seen = new Set();
  for (const [name, data] of entries) {
    seen.add(name);
    let card = host.querySelector(`:scope > [data-name="${CSS.escape(name)}"]`);
    if (!card) {
      card = make(name);
      card.dataset.name = name;
      host.append(card);
    }
    update(card, data);
  }
  for (const card of [...host.children]) {
    if (!card.dataset.name || !seen.has(card.dataset.name)) card.remove();
  }
  if (!entries.length) host.append(h('p', { class: 'muted' }, ...emptyText()));
}

function fieldRow(label, key) {
  return h('div', {}, h('dt', { text: label }), h('dd', { dataset: { field: key }, text: NONE }));
}

function setField(card, key, value) {
  const el = card.querySelector(`[data-field="${key}"]`);
  if (el && el.textContent !== value) el.textContent = value;
}

function makeRung(name) {
  return h('article', { class: 'card rung', dataset: { rung: name } },
    h('h3', {}, h('span', { text: name }), h('span', { class: 'muted', dataset: { field: 'size' } })),
    h('dl', { class: 'kv' },
      fieldRow('Encoder', 'encoder'),
      fieldRow('Target bitrate', 'target'),
      fieldRow('Measured', 'measured'),
      fieldRow('Lateness avg / max', 'lateness'),
      fieldRow('Repeated / dropped', 'frames')));
}

function updateRung(card, { enc, measured }) {
  setField(card, 'size', enc.width ? ` ${enc.width}×${enc.height}` : '');
  setField(card, 'encoder', enc.encoder ? `${enc.encoder}${enc.input ? ` (${enc.input})` : ''}` : NONE);
  setField(card, 'target', kbps(enc.bitrate_kbps));
  setField(card, 'measured', kbps(measured));
  setField(card, 'lateness', `${num(enc.lateness_ms_avg, '', 1)} / ${num(enc.lateness_ms_max, 'ms', 1)}`);
  setField(card, 'frames', `${num(enc.repeated_frames)} / ${num(enc.dropped_frames)}`);
}

function makeUplink(name) {
  return h('article', { class: 'card uplink-card', dataset: { uplink: name } },
    h('h3', {}, h('span', { text: name }),
      h('span', { class: 'badge uplink-state', dataset: { field: 'state' } })),
    h('p', { class: 'muted target', dataset: { field: 'target' } }),
    h('dl', { class: 'kv' },
      fieldRow('Bitrate', 'bitrate'),
      fieldRow('Connected for', 'uptime'),
      fieldRow('Sent', 'sent'),
      fieldRow('Reconnects', 'reconnects'),
      fieldRow('SRT RTT', 'rtt'),
      fieldRow('SRT lost / resent', 'loss')),
    h('p', { class: 'error-text', dataset: { field: 'error' } }));
}

function updateUplink(card, u) {
  const state = u.state || 'unknown';
  const badge = card.querySelector('.uplink-state');
  badge.textContent = state;
  badge.className = `badge uplink-state ${stateClass(state)}`;
  card.dataset.state = state;
  setField(card, 'target', `${(u.protocol || '?').toUpperCase()} → ${u.target || NONE}`);
  setField(card, 'bitrate', kbps(u.bitrate_kbps));
  setField(card, 'uptime', state === 'live' ? duration(u.uptime_s) : NONE);
  setField(card, 'sent', bytes(u.bytes_sent));
  setField(card, 'reconnects', num(u.reconnects));
  const srt = u.protocol === 'srt';
  setField(card, 'rtt', srt ? num(u.srt_rtt_ms, 'ms', 1) : NONE);
  setField(card, 'loss', srt && typeof u.srt_lost_packets === 'number'
    ? `${u.srt_lost_packets} / ${num(u.srt_retransmitted_packets)}` : NONE);
  const errors = Array.isArray(u.errors) ? u.errors : [];
  const error = state === 'live' ? '' : (u.error || errors[errors.length - 1] || '');
  setField(card, 'error', error);
}

// -- the status, each second -----------------------------------------------------------

let stampSeen = 0;
function previewLatencyMs() {
  // The median stamp latency of the frames shown since the last status, if any.
  const p = window.player;
  if (!p || !p.stats) return null;
  const samples = p.stats.stampSamples;
  const fresh = samples.length < stampSeen ? samples : samples.slice(stampSeen);
  stampSeen = samples.length;
  if (!fresh.length) return null;
  const sorted = [...fresh].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function onStatus(s) {
  const sections = s.sections || {};
  showHeader(s);
  text('state-text', STATE_TEXT[s.state] || s.state);
  text('uptime', duration(s.uptime_s));
  text('cpu', num(figure(sections, 'device', 'cpu_percent'), '%'));
  text('temperature', num(figure(sections, 'thermal', 'temp_c'), '°C', 1));

  const video = sections['media.video'] || {};
  const audio = sections['media.audio'];
  text('video-source', video.source || NONE);
  text('video-state', video.state || NONE, stateClass(video.state));
  text('video-fps', num(video.fps, 'fps', 1));
  text('video-dropped', num(video.dropped));
  text('audio-source', audio ? audio.source || NONE : 'off');
  text('audio-state', audio ? audio.state || NONE : NONE, audio ? stateClass(audio.state) : '');
  const err = video.error || (audio && audio.error) || '';
  $('source-error').hidden = !err;
  $('source-error').textContent = err;

  const rungs = byPrefix(sections, 'encode.').map(([name, enc]) => (
    [name, { enc, measured: measuredKbps(name, sections[`package.${name}`]) }]));
  syncCards($('rungs'), rungs, makeRung, updateRung, () => ['No encoder running.']);

  const uplinks = byPrefix(sections, 'uplink.');
  syncCards($('uplinks'), uplinks, makeUplink, updateUplink, () => [
    'No uplink configured. ', h('a', { href: '/settings#destinations', text: 'Add a destination' }), '.']);

  const rec = sections.recording;
  text('recording', rec ? `${rec.state || NONE}${rec.file ? ` (${rec.file})` : ''}` : 'off');
  const preview = sections.preview;
  text('viewers', preview && typeof preview.viewers === 'number'
    ? `${preview.viewers} of ${preview.max_viewers}` : NONE);

  const t = performance.now() / 1000;
  const rates = {};
  for (const [name, { measured }] of rungs) rates[name] = measured;
  for (const [name, u] of uplinks) {
    if (u.enabled !== false) rates[`→ ${name}`] = u.state === 'live' ? u.bitrate_kbps : null;
  }
  bitrateChart.push(t, rates);
  const latencies = { preview: previewLatencyMs() };
  for (const [name, { enc }] of rungs) latencies[`encode ${name}`] = enc.lateness_ms_avg;
  for (const [name, u] of uplinks) {
    if (u.protocol === 'srt') latencies[`RTT ${name}`] = u.srt_rtt_ms;
  }
  latencyChart.push(t, latencies);
}

initShell();
statusFeed(onStatus);
