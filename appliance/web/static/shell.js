// What every logged-in page shares: the header (navigation, logout, the virtual LEDs and
// the device state), the banners (safe mode, changes waiting for a restart, contact
// lost), and the live status pushed by the appliance over Server-Sent Events.

import { api, ApiFailure, logout, session, toLogin } from './api.js';
import { h, stateClass, STATE_TEXT } from './format.js';
import { showLeds } from './leds.js';

const $ = (id) => document.getElementById(id);
// Sections whose changes a stream restart applies; [web] and [fleet] need the daemon's.
const DAEMON_SECTIONS = new Set(['web', 'fleet']);

/** Mark the current page in the navigation, wire the logout and restart buttons. */
export function initShell() {
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.getAttribute('href') === location.pathname) link.setAttribute('aria-current', 'page');
  }
  const out = $('logout');
  if (out) {
    out.addEventListener('click', () => {
      out.disabled = true;
      logout();
    });
  }
  const restart = $('restart-stream');
  if (restart) restart.addEventListener('click', restartStream);
}

async function restartStream() {
  const button = $('restart-stream');
  const result = $('restart-result');
  button.disabled = true;
  result.textContent = 'restarting…';
  try {
    await api('POST', '/stream/restart');
    result.textContent = 'restarted';
  } catch (err) {
    result.textContent = err instanceof ApiFailure ? err.message : String(err);
  } finally {
    button.disabled = false;
  }
}

/** The LEDs and the device state of a status snapshot, and its banners. */
export function showHeader(status) {
  showLeds(status.leds);
  const badge = $('device-state');
  if (badge && badge.dataset.state !== status.state) { // a live region: only changes
    badge.textContent = STATE_TEXT[status.state] || status.state;
    badge.className = `badge ${stateClass(status.state)}`;
    badge.dataset.state = status.state;
  }
  showBanners((status.sections || {}).daemon || {});
}

/** Safe mode with its config errors, and saved changes that wait for a restart. */
export function showBanners(daemon) {
  const safe = $('safe-mode');
  if (safe && 'safe_mode' in daemon) {
    safe.hidden = !daemon.safe_mode;
    $('config-errors').replaceChildren(
      ...(daemon.config_errors || []).map((e) => h('li', { text: String(e) })));
  }
  const banner = $('restart-banner');
  if (!banner || !Array.isArray(daemon.restart_needed)) return;
  const pending = daemon.restart_needed;
  banner.hidden = !pending.length;
  if (!pending.length) return;
  const media = pending.filter((s) => !DAEMON_SECTIONS.has(s));
  const whole = pending.filter((s) => DAEMON_SECTIONS.has(s));
  const names = (list) => list.map((s) => `[${s}]`).join(', ');
  const parts = [];
  if (media.length) parts.push(`Restart needed: saved changes to ${names(media)} apply when the stream restarts.`);
  if (whole.length) parts.push(`Changes to ${names(whole)} apply when the appliance itself restarts.`);
  $('restart-text').textContent = parts.join(' ');
  $('restart-stream').hidden = !media.length;
}

const RETRY_MS = 3000;

/**
 * Calls `onStatus(snapshot)` with each status the appliance pushes (about once a second).
 * EventSource reconnects by itself after a network error; after a refusal (the session
 * ended) it gives up, so the session is checked and the browser sent to the login page
 * if it is over. The #feed-lost banner shows while there is no contact.
 */
export function statusFeed(onStatus) {
  let source = null;
  const lost = (yes) => {
    const el = $('feed-lost');
    if (el) el.hidden = !yes;
  };

  function open() {
    source = new EventSource('/api/v1/events');
    source.addEventListener('status', (event) => {
      lost(false);
      try {
        onStatus(JSON.parse(event.data));
      } catch (err) {
        console.error('status event', err);
      }
    });
    source.addEventListener('error', async () => {
      lost(true);
      if (source.readyState !== EventSource.CLOSED) return; // it retries on its own
      source = null;
      try {
        const s = await session();
        if (!s.authenticated) {
          toLogin();
          return;
        }
      } catch {
        // the appliance is unreachable: try again below
      }
      setTimeout(open, RETRY_MS);
    });
  }

  open();
  return { close: () => source && source.close() };
}
