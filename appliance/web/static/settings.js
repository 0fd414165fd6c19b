// Settings (/settings): the destinations (uplinks: add, edit, delete, test connection,
// each with its live state) and the device's config, both as forms generated from the
// config's JSON schema (schema-form.js). Saving sends the whole config (PUT
// /api/v1/config) or one uplink (/api/v1/uplinks/...); the API's errors are shown next
// to the fields they name, and sections that wait for a restart in the banner.

import { api, ApiFailure } from './api.js';
import { h, stateClass } from './format.js';
import { SchemaForm } from './schema-form.js';
import { initShell, showBanners, showHeader, statusFeed } from './shell.js';

const $ = (id) => document.getElementById(id);
const CONFIRM_MS = 5000;

let schema = null;
let configForm = null;
let loadedConfig = null;
let uplinkStates = {};

function fail(err) {
  return err instanceof ApiFailure ? err.message : `cannot reach the appliance (${err})`;
}

/** The errors a form could not place, as a list at its top (or bottom). */
function showUnplaced(host, errors, lead) {
  host.replaceChildren();
  if (!errors.length && !lead) return;
  if (lead) host.append(h('p', { text: lead }));
  if (errors.length) {
    host.append(h('ul', {}, ...errors.map((e) => h('li', {
      text: e.key && e.key !== '(body)' ? `${e.key}: ${e.message}` : e.message }))));
  }
}

function restartNotice(reply) {
  if (reply && Array.isArray(reply.restart_needed)) {
    showBanners({ restart_needed: reply.restart_needed });
  }
}

// -- the device's config ---------------------------------------------------------------

function openSections() {
  return new Set([...document.querySelectorAll('#config-fields details[open]')].map((d) => d.id));
}

function renderConfig(config) {
  const open = configForm ? openSections() : null;
  loadedConfig = config;
  configForm = new SchemaForm(schema, schema, config, { exclude: ['uplink'], sections: true });
  $('config-fields').replaceChildren(configForm.element);
  const sections = [...$('config-fields').querySelectorAll('details.section')];
  sections.forEach((d, i) => { d.open = open ? open.has(d.id) : i === 0; });
  $('save').disabled = false;
  $('revert').disabled = false;
}

async function saveConfig(event) {
  event.preventDefault();
  const status = $('save-status');
  const value = configForm.read();
  $('save').disabled = true;
  status.textContent = 'saving…';
  status.className = '';
  showUnplaced($('form-errors'), []);
  configForm.clearErrors();
  try {
    // Destinations are edited on their own (above): send them as they are saved now.
    const current = await api('GET', '/config');
    value.uplink = current.uplink;
    const reply = await api('PUT', '/config', value);
    status.textContent = reply.restart_needed && reply.restart_needed.length
      ? 'Saved: some changes wait for a restart (see above).' : 'Saved and applied.';
    status.className = 'ok';
    restartNotice(reply);
    renderConfig(await api('GET', '/config'));
  } catch (err) {
    status.className = 'bad';
    if (err instanceof ApiFailure && err.errors.length) {
      const unplaced = configForm.showErrors(err.errors);
      const n = err.errors.length;
      status.textContent = `Not saved: ${n} error${n > 1 ? 's' : ''}.`;
      showUnplaced($('form-errors'), unplaced);
    } else {
      status.textContent = `Not saved: ${fail(err)}`;
    }
  } finally {
    $('save').disabled = false;
  }
}

// -- destinations ---------------------------------------------------------------------

function stateBadge(name) {
  const u = uplinkStates[name];
  const state = u ? u.state || 'unknown' : 'unknown';
  return { text: state, cls: `badge uplink-state ${stateClass(state)}` };
}

function updateDestStates() {
  for (const card of document.querySelectorAll('#dest-list .dest-card')) {
    const badge = card.querySelector('.uplink-state');
    const { text, cls } = stateBadge(card.dataset.uplink);
    badge.textContent = text;
    badge.className = cls;
    card.dataset.state = text;
    const u = uplinkStates[card.dataset.uplink];
    const error = u && u.state !== 'live' ? u.error || '' : '';
    card.querySelector('.dest-error').textContent = error;
  }
}

/** A form for one uplink, with Save and Cancel: calls `save(value)`, which may throw. */
function uplinkEditor(host, value, opts, save, cancel) {
  const form = new SchemaForm(schema, schema.$defs.Uplink, value, opts);
  const errors = h('div', { class: 'form-error', role: 'alert' });
  const ok = h('button', { type: 'submit', class: 'primary', text: opts.saveText || 'Save' });
  const no = h('button', { type: 'button', text: 'Cancel' });
  const el = h('form', { novalidate: true, class: 'uplink-form' }, form.element, errors,
    h('div', { class: 'actions' }, ok, no));
  el.addEventListener('submit', async (event) => {
    event.preventDefault();
    ok.disabled = true;
    showUnplaced(errors, []);
    form.clearErrors();
    try {
      await save(form.read());
    } catch (err) {
      if (err instanceof ApiFailure && err.errors.length) {
        showUnplaced(errors, form.showErrors(err.errors), `Not saved: ${err.message}.`);
      } else {
        showUnplaced(errors, [], `Not saved: ${fail(err)}`);
      }
    } finally {
      ok.disabled = false;
    }
  });
  no.addEventListener('click', cancel);
  host.replaceChildren(el);
  const first = el.querySelector('input:not([disabled]), select');
  if (first) first.focus();
  return form;
}

function destCard(u) {
  const name = u.name;
  const path = `/uplinks/${encodeURIComponent(name)}`;
  const badge = h('span', { class: 'badge uplink-state' });
  const edit = h('button', { type: 'button', text: 'Edit' });
  const test = h('button', { type: 'button', text: 'Test connection' });
  const del = h('button', { type: 'button', class: 'danger', text: 'Delete' });
  const result = h('p', { class: 'test-result', role: 'status' });
  const editor = h('div', { class: 'editor' });
  const card = h('article', { class: 'card dest-card', dataset: { uplink: name } },
    h('h3', {}, h('span', { text: name }), badge),
    h('p', { class: 'muted target', text: `${u.url}${u.enabled === false ? ' · disabled' : ''}` }),
    h('p', { class: 'error-text dest-error' }),
    h('div', { class: 'actions' }, edit, test, del),
    result, editor);

  edit.addEventListener('click', () => {
    if (editor.firstChild) {
      editor.replaceChildren();
      return;
    }
    uplinkEditor(editor, u, { readonly: ['name'] }, async (value) => {
      const reply = await api('PUT', path, value);
      restartNotice(reply);
      await loadDestinations();
    }, () => editor.replaceChildren());
  });

  test.addEventListener('click', async () => {
    test.disabled = true;
    result.className = 'test-result';
    result.textContent = 'testing… (up to 10 s)';
    try {
      const reply = await api('POST', `${path}/test`);
      result.textContent = `${reply.ok ? 'OK' : 'Failed'}: ${reply.message}`;
      result.className = `test-result ${reply.ok ? 'ok' : 'bad'}`;
    } catch (err) {
      result.textContent = `Test not run: ${fail(err)}`;
      result.className = 'test-result bad';
    } finally {
      test.disabled = false;
    }
  });

  // Two clicks: "Delete", then "Confirm delete" within a few seconds.
  let armed = 0;
  del.addEventListener('click', async () => {
    if (!armed) {
      del.textContent = `Confirm delete of ${name}`;
      armed = setTimeout(() => { armed = 0; del.textContent = 'Delete'; }, CONFIRM_MS);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    del.disabled = true;
    try {
      const reply = await api('DELETE', path);
      restartNotice(reply);
      await loadDestinations();
    } catch (err) {
      result.textContent = `Not deleted: ${fail(err)}`;
      result.className = 'test-result bad';
      del.disabled = false;
      del.textContent = 'Delete';
    }
  });
  return card;
}

async function loadDestinations() {
  const { uplinks } = await api('GET', '/uplinks');
  const list = $('dest-list');
  list.replaceChildren(...uplinks.map(destCard));
  if (!uplinks.length) list.append(h('p', { class: 'muted', text: 'No destination yet.' }));
  updateDestStates();
}

function addDestination() {
  const host = $('dest-new');
  if (host.firstChild) {
    host.querySelector('input').focus();
    return;
  }
  host.append(h('h3', { text: 'New destination' }));
  const box = h('div', { class: 'card' });
  host.append(box);
  uplinkEditor(box, {}, { saveText: 'Add destination' }, async (value) => {
    const reply = await api('POST', '/uplinks', value);
    restartNotice(reply);
    host.replaceChildren();
    await loadDestinations();
  }, () => host.replaceChildren());
}

// -- the HTTPS certificate (nginx's, on the device) -------------------------------------

function showCertificate(info) {
  const rows = [
    ['Subject', info.subject],
    ['Names', info.names.join(', ') || '(none)'],
    ['Issuer', info.self_signed ? 'itself (self-signed)' : info.issuer],
    ['Valid until', new Date(info.not_after).toLocaleString()],
    ['SHA-256', info.sha256],
  ];
  $('tls-info').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', { text: k }),
    h('dd', { text: v })]));
}

async function loadCertificate() {
  try {
    showCertificate(await api('GET', '/tls'));
  } catch (err) {
    $('tls-info').replaceChildren(h('dd', { class: 'muted', text: fail(err) }));
  }
}

async function uploadCertificate(event) {
  event.preventDefault();
  const status = $('tls-status');
  const fields = { cert: $('tls-cert'), key: $('tls-key') };
  for (const k of Object.keys(fields)) $(`tls-${k}-error`).textContent = '';
  const missing = Object.keys(fields).filter((k) => !fields[k].files.length);
  if (missing.length) {
    for (const k of missing) $(`tls-${k}-error`).textContent = 'Choose a file.';
    return;
  }
  status.className = '';
  status.textContent = 'checking…';
  try {
    const [cert, key] = await Promise.all([fields.cert.files[0].text(),
      fields.key.files[0].text()]);
    showCertificate(await api('PUT', '/tls', { cert, key }));
    fields.cert.value = '';
    fields.key.value = '';
    status.className = 'ok';
    status.textContent = 'Replaced: reload the page to be served the new one.';
  } catch (err) {
    status.className = 'bad';
    status.textContent = fail(err);
    if (err instanceof ApiFailure) {
      for (const e of err.errors) {
        if (fields[e.key]) $(`tls-${e.key}-error`).textContent = e.message;
      }
    }
  }
}

// -- start ----------------------------------------------------------------------------

async function load() {
  try {
    const [s, config] = await Promise.all([api('GET', '/config/schema'), api('GET', '/config')]);
    schema = s;
    renderConfig(config);
    await loadDestinations();
  } catch (err) {
    $('load-error').hidden = false;
    $('load-error').textContent = `Cannot load the settings: ${fail(err)}`;
  }
}

initShell();
$('config-form').addEventListener('submit', saveConfig);
$('tls-form').addEventListener('submit', uploadCertificate);
$('revert').addEventListener('click', () => {
  configForm = null;
  renderConfig(loadedConfig);
  showUnplaced($('form-errors'), []);
  $('save-status').textContent = '';
});
$('add-dest').addEventListener('click', () => {
  if (schema) addDestination();
});
statusFeed((status) => {
  showHeader(status);
  uplinkStates = {};
  for (const [k, v] of Object.entries(status.sections || {})) {
    if (k.startsWith('uplink.')) uplinkStates[k.slice('uplink.'.length)] = v;
  }
  updateDestStates();
});
load();
loadCertificate();
