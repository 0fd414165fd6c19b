// Logs (/logs): the appliance's recent log records (/api/v1/logs), filtered by level,
// followed every 2 s while the box is ticked and the page is visible.

import { api, ApiFailure } from './api.js';
import { clock, h } from './format.js';
import { initShell, showHeader, statusFeed } from './shell.js';

const $ = (id) => document.getElementById(id);
const FOLLOW_MS = 2000;
const LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };

let timer = 0;
let lastKey = '';

async function refresh() {
  clearTimeout(timer);
  const lines = $('log-lines').value;
  const min = LEVELS[$('log-level').value] || 0;
  try {
    const { records } = await api('GET', `/logs?lines=${encodeURIComponent(lines)}`);
    const shown = records.filter((r) => (LEVELS[r.level] ?? 100) >= min);
    const key = `${min}:${records.length}:${records.length ? records[records.length - 1].time : 0}`;
    if (key !== lastKey) {
      lastKey = key;
      const list = $('log-list');
      // Stay at the bottom if the reader was there.
      const atEnd = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      list.replaceChildren(...shown.map((r) => h('li', { dataset: { level: r.level } },
        h('span', { class: 'time', text: clock(r.time) }),
        h('span', { class: 'level', text: r.level }),
        h('span', { class: 'logger', text: r.logger }),
        h('span', { class: 'message', text: r.message }))));
      if (!shown.length) list.append(h('li', { class: 'muted', text: 'No records at this level.' }));
      if (atEnd) window.scrollTo(0, document.body.scrollHeight);
    }
    $('log-status').textContent = `${shown.length} of ${records.length} records`;
  } catch (err) {
    $('log-status').textContent = err instanceof ApiFailure ? err.message : 'cannot reach the appliance';
  }
  if ($('log-follow').checked && !document.hidden) timer = setTimeout(refresh, FOLLOW_MS);
}

initShell();
$('log-controls').addEventListener('submit', (event) => {
  event.preventDefault();
  lastKey = '';
  refresh();
});
for (const id of ['log-level', 'log-lines', 'log-follow']) {
  $(id).addEventListener('change', () => {
    lastKey = '';
    refresh();
  });
}
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});
statusFeed(showHeader);
refresh();
