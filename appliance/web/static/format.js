// How the pages show figures: one dash for "not known", units always written.

export const NONE = '—';

const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

/** A number with `digits` decimals and a unit, or NONE. */
export function num(v, unit = '', digits = 0) {
  if (!isNum(v)) return NONE;
  return unit ? `${v.toFixed(digits)} ${unit}` : v.toFixed(digits);
}

/** kbit/s, switching to Mbit/s from 10 000. */
export function kbps(v) {
  if (!isNum(v)) return NONE;
  return v >= 10000 ? `${(v / 1000).toFixed(1)} Mbit/s` : `${Math.round(v)} kbit/s`;
}

export function bytes(v) {
  if (!isNum(v)) return NONE;
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  let n = v;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Seconds as "3 d 4 h", "2 h 5 min", "4 min 12 s" or "9 s". */
export function duration(s) {
  if (!isNum(s) || s < 0) return NONE;
  const t = Math.floor(s);
  const d = Math.floor(t / 86400);
  const h = Math.floor((t % 86400) / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

/** A wall-clock time (seconds since the epoch) as the browser's local time of day. */
export function clock(epochS) {
  if (!isNum(epochS)) return NONE;
  const d = new Date(epochS * 1000);
  return d.toLocaleTimeString(undefined, { hour12: false }) +
    `.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

/** Device states of SPEC's LED table, as a person reads them. */
export const STATE_TEXT = {
  starting: 'Starting',
  safe_mode: 'Safe mode (bad config)',
  no_source: 'No source',
  live_local: 'Live locally',
  connecting: 'Uplink connecting',
  live: 'Live',
  degraded: 'Degraded',
  maintenance: 'Maintenance',
};

/** A class for a state's colour: ok, warn, bad or '' (neutral). */
export function stateClass(state) {
  switch (state) {
    case 'live': case 'live_local': case 'recording': return 'ok';
    case 'connecting': case 'retrying': case 'starting': case 'degraded': case 'maintenance':
      return 'warn';
    case 'no_source': case 'safe_mode': case 'error': case 'auth-failed': return 'bad';
    default: return '';
  }
}

/** Create an element: h('p', {class: 'x', text: 'hi'}, child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c);
  }
  return el;
}
