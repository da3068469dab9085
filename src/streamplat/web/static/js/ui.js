// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so titles and user
// names from the API cannot inject markup.

import { ApiError, messageOf } from './api.js';

/** h('div', {class: 'x', onclick: fn, dataset: {...}, hidden: true}, child, [children], 'text') */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Replace an element's children; like replaceChildren, but null/false children are skipped. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

const ICONS = {
  eye: 'M1.5 12S5.5 5 12 5s10.5 7 10.5 7-4 7-10.5 7S1.5 12 1.5 12Z M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6Z',
  copy: 'M9 9h10v10H9z M5 15H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1h10a1 1 0 0 1 1 1v1',
  play: 'M7 4.5v15l12-7.5z',
  stop: 'M6 6h12v12H6z',
  trash: 'M4 7h16 M10 11v6 M14 11v6 M6 7l1 13h10l1-13 M9 7V4h6v3',
  key: 'M15 7a4 4 0 1 1-3.9 5H3v3h3v3h3v-3h2.1A4 4 0 0 1 15 7Z M16 11h.01',
  plus: 'M12 5v14 M5 12h14',
  film: 'M4 4h16v16H4z M8 4v16 M16 4v16 M4 8h4 M4 12h4 M4 16h4 M16 8h4 M16 12h4 M16 16h4',
  broadcast: 'M12 14a2 2 0 1 0 0-4 2 2 0 0 0 0 4Z M16.2 7.8a6 6 0 0 1 0 8.4 M7.8 16.2a6 6 0 0 1 0-8.4 M19.1 4.9a10 10 0 0 1 0 14.2 M4.9 19.1a10 10 0 0 1 0-14.2',
  clock: 'M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18Z M12 7v5l3 2',
  arrowLeft: 'M19 12H5 M11 6l-6 6 6 6',
  arrowRight: 'M5 12h14 M13 6l6 6-6 6',
  external: 'M14 4h6v6 M20 4l-9 9 M18 14v6H4V6h6',
  close: 'M6 6l12 12 M18 6L6 18',
};

export function icon(name, extraClass = '') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', `icon ${extraClass}`.trim());
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[name] || '');
  svg.append(path);
  return svg;
}

export function spinner() {
  return h('span', { class: 'spinner', 'aria-hidden': 'true' });
}

export function loadingBlock(text = 'Loading…') {
  return h('div', { class: 'loading-block', role: 'status' }, spinner(), ' ', text);
}

/** A readable error box for a failed request. */
export function errorBox(err, { retry } = {}) {
  const title = err instanceof ApiError && err.status === 0 ? 'Cannot reach the server' : (err && err.error) || 'Something went wrong';
  return h('div', { class: 'alert alert-error', role: 'alert' },
    h('strong', null, title),
    h('span', null, messageOf(err)),
    retry ? h('button', { class: 'btn btn-small', type: 'button', onclick: retry }, 'Try again') : null);
}

export function notice(text, kind = 'info') {
  return h('div', { class: `alert alert-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/** Show a short message in the corner for a few seconds. */
export function toast(text, kind = 'info') {
  const box = document.getElementById('toasts');
  if (!box) return;
  // The container is a polite live region already; errors interrupt.
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : null }, text);
  box.append(el);
  setTimeout(() => el.classList.add('toast-out'), kind === 'error' ? 6500 : 3200);
  setTimeout(() => el.remove(), kind === 'error' ? 7000 : 3700);
}

/** Put a 422's field messages next to the form's fields; returns messages for unknown fields. */
export function showFieldErrors(form, details) {
  clearFieldErrors(form);
  const leftover = [];
  let first = null;
  for (const [name, messages] of Object.entries(details || {})) {
    const text = (Array.isArray(messages) ? messages : [messages]).join('; ');
    let input = form.elements.namedItem(name);
    if (input instanceof RadioNodeList) input = input[0] || null;
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (!input || !slot) {
      leftover.push(`${name}: ${text}`);
      continue;
    }
    slot.textContent = text;
    slot.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    first = first || input;
  }
  if (first) first.focus();
  return leftover;
}

export function clearFieldErrors(form) {
  for (const slot of form.querySelectorAll('[data-error-for]')) {
    slot.textContent = '';
    slot.hidden = true;
  }
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
}

/** A labelled form field with a slot for its error message. */
export function field(label, input, hint) {
  const id = input.id || `f-${input.name}-${Math.random().toString(36).slice(2, 7)}`;
  input.id = id;
  const errorId = `${id}-error`;
  input.setAttribute('aria-describedby', errorId);
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    input,
    hint ? h('p', { class: 'field-hint' }, hint) : null,
    h('p', { class: 'field-error', id: errorId, dataset: { errorFor: input.name }, hidden: true }));
}

/** Disable a button and show a spinner while `work()` runs. */
export async function withBusy(button, label, work) {
  const old = [...button.childNodes];
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.replaceChildren(spinner(), ` ${label}`);
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.replaceChildren(...old);
  }
}

/** Copy to the clipboard; works on plain-http LAN addresses too, where navigator.clipboard is absent. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the old way (e.g. permission denied)
    }
  }
  const area = h('textarea', { class: 'offscreen', readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  area.remove();
  return ok;
}

/**
 * A read-only value with a Copy button, and Show/Hide for secrets. Secrets are masked by
 * showing dots rather than with a password input, so browsers do not offer to save them.
 * Returns {el, input, set(value)}.
 */
export function copyField(label, value, { secret = false, name } = {}) {
  let real = value || '';
  let shown = !secret;
  const input = h('input', { class: 'mono', type: 'text', readOnly: true, name, spellcheck: 'false', autocomplete: 'off' });
  const paint = () => {
    input.value = shown ? real : '•'.repeat(Math.min(real.length, 32));
    input.dataset.value = real;
  };
  paint();
  input.addEventListener('focus', () => { if (shown) input.select(); });
  const copy = h('button', { class: 'btn btn-small', type: 'button', title: `Copy ${label}`, dataset: { action: 'copy' } }, icon('copy'), 'Copy');
  copy.addEventListener('click', async () => {
    const ok = await copyText(real);
    toast(ok ? `${label} copied` : 'Could not copy; select the text and copy it by hand', ok ? 'success' : 'error');
  });
  const buttons = [copy];
  if (secret) {
    const toggle = h('button', { class: 'btn btn-small btn-ghost', type: 'button', 'aria-pressed': 'false', dataset: { action: 'reveal' } }, 'Show');
    toggle.addEventListener('click', () => {
      shown = !shown;
      paint();
      toggle.textContent = shown ? 'Hide' : 'Show';
      toggle.setAttribute('aria-pressed', String(shown));
    });
    buttons.unshift(toggle);
  }
  const id = `cf-${Math.random().toString(36).slice(2, 8)}`;
  input.id = id;
  const el = h('div', { class: 'copy-field' },
    h('label', { for: id }, label),
    h('div', { class: 'copy-row' }, input, ...buttons));
  return { el, input, set(v) { real = v || ''; paint(); } };
}

/** A modal yes/no question; resolves true when confirmed. */
export function confirmDialog(message, confirmLabel = 'Delete', danger = true) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'dialog' },
      h('form', { method: 'dialog' },
        h('p', null, message),
        h('div', { class: 'dialog-actions' },
          h('button', { class: 'btn btn-ghost', value: 'cancel' }, 'Cancel'),
          h('button', { class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, value: 'ok' }, confirmLabel))));
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// --- formatting ---------------------------------------------------------------------------

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

export function fmtBytes(bytes) {
  if (!bytes && bytes !== 0) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = bytes;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

export function timeAgo(iso) {
  if (!iso) return '';
  const diff = (Date.parse(iso) - Date.now()) / 1000;
  const abs = Math.abs(diff);
  if (abs < 45) return 'just now';
  if (abs < 3600) return RELATIVE.format(Math.round(diff / 60), 'minute');
  if (abs < 86400) return RELATIVE.format(Math.round(diff / 3600), 'hour');
  if (abs < 86400 * 30) return RELATIVE.format(Math.round(diff / 86400), 'day');
  return new Date(iso).toLocaleDateString();
}

export function fmtDate(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }) : '';
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

const STATUS_TEXT = {
  created: 'Not started',
  waiting: 'Waiting for OBS',
  active: 'Live',
  stopped: 'Ended',
  processing: 'Processing',
  ready: 'Ready',
  failed: 'Failed',
};

export function statusBadge(status) {
  return h('span', { class: `badge badge-${status}`, dataset: { status } },
    status === 'active' ? h('span', { class: 'live-dot', 'aria-hidden': 'true' }) : null,
    STATUS_TEXT[status] || status);
}

export function setStatusBadge(el, status) {
  el.replaceWith(statusBadge(status));
}

export function viewerCount(n) {
  return h('span', { class: 'viewers', title: 'Viewers now' }, icon('eye'), h('span', { class: 'viewer-number' }, String(n ?? 0)), h('span', { class: 'sr-only' }, ' viewers'));
}
