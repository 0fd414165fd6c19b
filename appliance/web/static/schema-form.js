// Forms generated from the config's JSON schema (/api/v1/config/schema, pydantic's):
// titles as labels, descriptions as help, minimum/maximum on number inputs, enums as
// selects, booleans as checkboxes, nullable fields empty for "not set", arrays of tables
// (video.ladder) as repeatable groups, `secret: true` fields as password inputs showing
// the mask the API sends (sent back unchanged, the mask keeps the stored secret).
//
// Every input and group carries the config key the API's errors name ("video.fps",
// "video.ladder[1].bitrate_kbps", or "url" in a form for one uplink), so a server-side
// error is shown next to its field, or next to the nearest group that has the key.

import { h } from './format.js';

let formCount = 0;

/** A schema node with $ref followed and `X | null` unwrapped: {node, nullable}. */
export function resolve(node, root) {
  let nullable = false;
  let n = node || {};
  const outer = { ...n };
  delete outer.anyOf;
  delete outer.$ref;
  if (Array.isArray(n.anyOf)) {
    const some = n.anyOf.filter((x) => x.type !== 'null');
    nullable = some.length < n.anyOf.length;
    if (some.length === 1) n = some[0];
  }
  if (n.$ref) {
    const name = n.$ref.split('/').pop();
    n = { ...(root.$defs || {})[name] };
  }
  // The outer node's title, description, default and markers (secret) win.
  return { node: { ...n, ...outer, type: n.type || outer.type }, nullable };
}

/** Keys' parents: "a.b[0].c" -> "a.b[0]" -> "a.b" -> "a" -> "". */
export function parentKey(key) {
  const m = key.match(/^(.*)(\.[^.[\]]+|\[\d+\])$/);
  return m ? m[1] : '';
}

function join(base, name) {
  return base ? `${base}.${name}` : name;
}

function humanize(name) {
  const s = name.replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** Default values of an object schema's properties, for a new item of a list. */
function defaults(node, root) {
  const out = {};
  for (const [name, prop] of Object.entries(node.properties || {})) {
    const { node: p } = resolve(prop, root);
    if (p.default !== undefined) out[name] = p.default;
  }
  return out;
}

export class SchemaForm {
  /**
   * @param {object} root the whole JSON schema (with $defs)
   * @param {object} node the object schema to render (root itself, or $defs.Uplink)
   * @param {object} value its current value (the API's masked config)
   * @param {{baseKey?: string, exclude?: string[], sections?: boolean, readonly?: string[]}} opts
   *   sections: render each top-level table as a collapsible section;
   *   exclude: top-level properties left out; readonly: keys shown but not editable
   */
  constructor(root, node, value, opts = {}) {
    this.root = root;
    this.opts = { baseKey: '', exclude: [], sections: false, readonly: [], ...opts };
    this.prefix = `f${++formCount}`;
    this.entries = new Map(); // key -> {wrap, input?, error}
    this.element = h('div', { class: 'schema-form' });
    this.reader = this.objectFields(this.element, resolve(node, root).node, value || {},
      this.opts.baseKey, true);
  }

  /** The form's value, as the API takes it (unset fields left out, so defaults apply). */
  read() {
    return this.reader();
  }

  id(key) {
    return `${this.prefix}-${key.replace(/[^A-Za-z0-9_-]+/g, '-') || 'root'}`;
  }

  register(key, wrap, input) {
    const error = h('p', { class: 'field-error', id: `${this.id(key)}-error` });
    wrap.append(error);
    wrap.dataset.key = key;
    if (input) {
      const described = [input.getAttribute('aria-describedby'), error.id].filter(Boolean);
      input.setAttribute('aria-describedby', described.join(' '));
    }
    this.entries.set(key, { wrap, input, error });
  }

  forget(prefix) {
    for (const key of [...this.entries.keys()]) {
      if (key.startsWith(prefix)) this.entries.delete(key);
    }
  }

  // -- objects -----------------------------------------------------------------------

  objectFields(host, node, value, base, top) {
    const readers = [];
    const simple = h('div', { class: 'grid-fields' });
    host.append(simple);
    for (const [name, prop] of Object.entries(node.properties || {})) {
      if (top && this.opts.exclude.includes(name)) continue;
      const key = join(base, name);
      const { node: p, nullable } = resolve(prop, this.root);
      const required = (node.required || []).includes(name);
      const v = value[name];
      let read;
      if (p.type === 'object' || p.properties) {
        read = this.subObject(host, key, name, p, nullable, v, top);
      } else if (p.type === 'array' && p.items) {
        read = this.list(host, key, name, p, v);
      } else {
        read = this.scalar(simple, key, name, p, nullable, required, v);
      }
      readers.push([name, read]);
    }
    if (!simple.children.length) simple.remove();
    return () => {
      const out = {};
      for (const [name, read] of readers) {
        const v = read();
        if (v !== undefined) out[name] = v;
      }
      return out;
    };
  }

  subObject(host, key, name, node, nullable, value, top) {
    const title = node.title || humanize(name);
    let box;
    let body;
    if (top && this.opts.sections) {
      box = h('details', { class: 'section', id: this.id(key) }, h('summary', { text: title }));
      body = box;
    } else {
      box = h('fieldset', { class: 'group', id: this.id(key) }, h('legend', { text: title }));
      body = box;
    }
    if (node.description) body.append(h('p', { class: 'help', text: node.description }));
    this.register(key, box);
    host.append(box);
    const inner = h('div', { class: 'group-body' });
    let enabled = null;
    if (nullable) {
      // An optional table ([fleet]): a switch, its fields only while it is on.
      const id = `${this.id(key)}-on`;
      enabled = h('input', { type: 'checkbox', id });
      enabled.checked = value !== null && value !== undefined;
      body.append(h('div', { class: 'field checkbox' },
        h('label', { for: id }, enabled, ` Use ${title.toLowerCase()}`)));
      inner.hidden = !enabled.checked;
      enabled.addEventListener('change', () => { inner.hidden = !enabled.checked; });
    }
    body.append(inner);
    const read = this.objectFields(inner, node, value || {}, key, false);
    return () => (enabled && !enabled.checked ? null : read());
  }

  // -- arrays of tables --------------------------------------------------------------

  list(host, key, name, node, value) {
    const title = node.title || humanize(name);
    const { node: item } = resolve(node.items, this.root);
    const itemTitle = item.title || 'Item';
    const box = h('fieldset', { class: 'repeat', id: this.id(key) }, h('legend', { text: title }));
    if (node.description) box.append(h('p', { class: 'help', text: node.description }));
    const items = h('div', { class: 'items' });
    const add = h('button', { type: 'button', text: `Add ${itemTitle.toLowerCase()}` });
    box.append(items, h('div', { class: 'actions' }, add));
    this.register(key, box);
    host.append(box);
    let readers = [];

    const render = (values) => {
      this.forget(`${key}[`);
      items.replaceChildren();
      readers = values.map((v, i) => {
        const k = `${key}[${i}]`;
        const remove = h('button', { type: 'button', class: 'danger',
          text: 'Remove', 'aria-label': `Remove ${itemTitle.toLowerCase()} ${i + 1}` });
        remove.disabled = values.length <= (node.minItems || 0);
        remove.addEventListener('click', () => {
          const now = readers.map((r) => r());
          now.splice(i, 1);
          render(now);
        });
        const label = v && v.name ? `${itemTitle} ${i + 1}: ${v.name}` : `${itemTitle} ${i + 1}`;
        const fs = h('fieldset', { class: 'item', id: this.id(k) },
          h('legend', { text: label }));
        this.register(k, fs);
        const read = this.objectFields(fs, item, v || {}, k, false);
        fs.append(h('div', { class: 'actions' }, remove));
        items.append(fs);
        return read;
      });
      add.disabled = node.maxItems !== undefined && values.length >= node.maxItems;
    };
    add.addEventListener('click', () => {
      render([...readers.map((r) => r()), defaults(item, this.root)]);
      const last = items.lastElementChild;
      const first = last && last.querySelector('input, select');
      if (first) first.focus();
    });
    render(Array.isArray(value) ? value : []);
    return () => readers.map((r) => r());
  }

  // -- single values -----------------------------------------------------------------

  scalar(host, key, name, node, nullable, required, value) {
    const id = this.id(key);
    const title = node.title || humanize(name);
    const wrap = h('div', { class: 'field' });
    const help = [];
    if (node.description) help.push(node.description);
    const type = node.type;
    const readonly = this.opts.readonly.includes(key);
    let input;
    let read;

    if (type === 'boolean') {
      input = h('input', { type: 'checkbox', id, name: key });
      input.checked = value === undefined ? Boolean(node.default) : Boolean(value);
      wrap.classList.add('checkbox');
      wrap.append(h('label', { for: id }, input, ` ${title}`));
      read = () => input.checked;
    } else if (Array.isArray(node.enum)) {
      input = h('select', { id, name: key });
      const options = [...node.enum];
      if (nullable) input.append(h('option', { value: '', text: '(default)' }));
      options.forEach((opt, i) => input.append(h('option', { value: String(i), text: String(opt) })));
      const current = value === undefined ? node.default : value;
      const idx = options.findIndex((o) => o === current);
      input.value = idx >= 0 ? String(idx) : (nullable ? '' : '0');
      wrap.append(h('label', { for: id, text: title }), input);
      read = () => (input.value === '' ? null : options[Number(input.value)]);
    } else if (type === 'integer' || type === 'number') {
      input = h('input', { type: 'number', id, name: key,
        inputmode: type === 'integer' ? 'numeric' : 'decimal',
        step: node.multipleOf || (type === 'integer' ? 1 : 'any') });
      if (node.minimum !== undefined) input.min = node.minimum;
      if (node.maximum !== undefined) input.max = node.maximum;
      const current = value === undefined ? node.default : value;
      input.value = current === null || current === undefined ? '' : String(current);
      if (node.minimum !== undefined || node.maximum !== undefined) {
        help.push(`${node.minimum ?? '…'} to ${node.maximum ?? '…'}`);
      }
      wrap.append(h('label', { for: id, text: title }), input);
      read = () => {
        // Text that is no number (badInput) goes as null, so the server names the field.
        if (input.validity.badInput) return null;
        if (input.value === '') return nullable ? null : undefined;
        return Number(input.value);
      };
    } else {
      const secret = node.secret === true;
      input = h('input', { type: secret ? 'password' : 'text', id, name: key,
        autocomplete: secret ? 'new-password' : 'off', spellcheck: 'false' });
      if (node.maxLength !== undefined) input.maxLength = node.maxLength;
      const current = value === undefined ? node.default : value;
      input.value = current === null || current === undefined ? '' : String(current);
      if (secret) {
        input.placeholder = 'not set';
        help.push('Stored secrets show as ********** and are kept when left so; empty the field to remove one.');
      } else if (nullable) {
        input.placeholder = '(not set)';
      }
      wrap.append(h('label', { for: id, text: title }), input);
      read = () => (input.value === '' && nullable ? null : input.value);
    }
    if (required) input.setAttribute('aria-required', 'true');
    input.dataset.key = key;
    if (readonly) {
      input.disabled = true;
    }
    if (help.length) {
      const helpEl = h('small', { class: 'help', id: `${id}-help`, text: help.join(' · ') });
      wrap.append(helpEl);
      input.setAttribute('aria-describedby', helpEl.id);
    }
    this.register(key, wrap, input);
    host.append(wrap);
    return read;
  }

  // -- errors ------------------------------------------------------------------------

  clearErrors() {
    for (const { error, input } of this.entries.values()) {
      error.textContent = '';
      if (input) input.removeAttribute('aria-invalid');
    }
  }

  /**
   * Show the API's errors ([{key, message}]) next to their fields; returns those that
   * name no key of this form (to show at the top). The first field in error gets focus.
   */
  showErrors(errors) {
    this.clearErrors();
    const unplaced = [];
    let first = null;
    for (const err of errors) {
      let key = err.key || '';
      let entry = this.entries.get(key);
      while (!entry && key) {
        key = parentKey(key);
        entry = this.entries.get(key);
      }
      if (!entry) {
        unplaced.push(err);
        continue;
      }
      // A message about a field of a group names the field when shown on the group.
      const where = key === err.key ? '' : `${err.key.slice(key.length).replace(/^\./, '')}: `;
      const text = `${where}${err.message}`;
      entry.error.textContent = entry.error.textContent ? `${entry.error.textContent}; ${text}` : text;
      if (entry.input) entry.input.setAttribute('aria-invalid', 'true');
      for (let el = entry.wrap; el; el = el.parentElement) {
        if (el.tagName === 'DETAILS') el.open = true;
      }
      if (!first) first = entry;
    }
    if (first) {
      (first.input || first.wrap).scrollIntoView({ block: 'center' });
      if (first.input) first.input.focus({ preventScroll: true });
    }
    return unplaced;
  }
}
