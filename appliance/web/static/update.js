// Settings › Software update: upload a RAUC bundle (POST /api/v1/update, the file as the
// raw body) and follow the update (GET /api/v1/update) until the device reboots into it.
// XMLHttpRequest, not fetch: only it reports the upload's progress.

import { api, csrfHeaders, toLogin } from './api.js';

const BUSY = new Set(['downloading', 'installing', 'rebooting']);
const $ = (id) => document.getElementById(id);
let last = {};

/** Show the update's state; `change` updates what was shown last (GET /update's fields). */
function show(change) {
  const u = { ...last, ...change };
  last = u;
  $('update-version').textContent = u.version
    ? `${u.version} (slot ${u.slot || '?'})` : 'unknown (not an installed image)';
  const busy = BUSY.has(u.state);
  $('update-upload').disabled = busy;
  const bar = $('update-progress');
  bar.hidden = !busy;
  bar.value = u.percent || 0;
  const words = {
    idle: '', downloading: 'Receiving the bundle', installing: 'Installing',
    rebooting: 'Installed: rebooting into the new version (the page comes back by itself)',
    failed: 'The update failed',
  };
  $('update-status').textContent = [u.state in words ? words[u.state] : u.state, u.message]
    .filter(Boolean).join(': ');
  $('update-status').className = u.state === 'failed' ? 'field-error' : '';
  return busy;
}

async function follow() {
  let u;
  try {
    u = await api('GET', '/update');
  } catch {
    // While the device reboots it does not answer: keep asking.
    setTimeout(follow, 2000);
    return;
  }
  if (show(u)) setTimeout(follow, 1000);
}

async function upload(file) {
  const headers = await csrfHeaders();
  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/api/v1/update');
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      show({ state: 'downloading', percent: Math.floor((e.loaded * 100) / e.total),
             message: file.name });
    }
  };
  xhr.onload = () => {
    if (xhr.status === 401) toLogin();
    if (xhr.status !== 202) {
      let message = `the appliance answered ${xhr.status}`;
      try {
        message = JSON.parse(xhr.responseText).error || message;
      } catch { /* not JSON */ }
      show({ state: 'failed', percent: 0, message });
    }
    follow();
  };
  xhr.onerror = () => show({ state: 'failed', percent: 0, message: 'the upload broke off' });
  xhr.send(file);
}

document.addEventListener('DOMContentLoaded', () => {
  $('update-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const file = $('update-file').files[0];
    if (!file) {
      show({ state: 'failed', percent: 0, message: 'choose a bundle (.raucb) first' });
      return;
    }
    // Replace the last verdict at once, before the first progress event arrives.
    show({ state: 'downloading', percent: 0, message: file.name });
    upload(file);
  });
  follow();
});
