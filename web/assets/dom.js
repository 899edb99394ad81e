// DOM helpers: every piece of API data goes in as text (never as HTML).

/**
 * h('div', {class: 'x', onclick: fn, 'aria-label': '…'}, child, 'text', [children…])
 * Strings become text nodes; null/undefined/false children are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'text') el.textContent = String(v);
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/**
 * A short form of an id for display: the last 8 hex digits of the UUID (run ids are
 * UUIDv7, whose leading digits are a timestamp shared by runs created together),
 * with a job's `:sN` / `:finalize` suffix kept. The full id is always in a title.
 */
export function shortId(id) {
  if (!id) return '';
  const i = id.indexOf(':');
  const uuid = i < 0 ? id : id.slice(0, i);
  const tail = uuid.replace(/-/g, '').slice(-8);
  return i < 0 ? tail : tail + id.slice(i);
}

/** A status pill, coloured by status or outcome (completed, failed, aborted, retried, …). */
export function pill(status, extraClass) {
  const s = String(status || 'unknown');
  return h('span', { class: `pill pill-${s.replace(/[^a-z_]/g, '')}${extraClass ? ` ${extraClass}` : ''}` }, s);
}

/** "1.2 s", "3 min 4 s", "2 h 5 min". */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** ms between two RFC 3339 stamps (or until now). */
export function between(start, end) {
  if (!start) return null;
  const a = Date.parse(start);
  const b = end ? Date.parse(end) : Date.now();
  return Number.isFinite(a) && Number.isFinite(b) ? Math.max(0, b - a) : null;
}

const pad2 = (n) => String(n).padStart(2, '0');

/** This browser's offset from UTC as "UTC+05:30" (for a given date: DST moves it). */
export function utcOffset(d = new Date()) {
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const a = Math.abs(off);
  return `UTC${sign}${pad2(Math.floor(a / 60))}:${pad2(a % 60)}`;
}

/** The zone every time on the page is shown in: "Europe/Berlin (UTC+01:00)". */
export function zoneLabel() {
  let name = '';
  try { name = Intl.DateTimeFormat().resolvedOptions().timeZone || ''; } catch { /* none */ }
  return name ? `${name} (${utcOffset()})` : utcOffset();
}

/** "2024-05-01 12:03:04 UTC+02:00": a full local time with its zone. */
export function stamp(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())} ${utcOffset(d)}`;
}

/** "12:03:04.123" (local) for epoch ms: a log line's time. */
export function lineTime(ms) {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

/** A <time> element: short text, the full local time with its zone as a tooltip. */
export function timeEl(ts, text) {
  if (!ts) return '—';
  return h('time', { datetime: ts, title: stamp(ts) }, text ?? clock(ts));
}

/** "12:03:04" today, else "2024-05-01 12:03". */
export function clock(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time.slice(0, 5)}`;
}

/** "5 s ago", "3 min ago", … */
export function ago(ts) {
  const ms = between(ts, null);
  if (ms === null) return '';
  if (ms < 5000) return 'just now';
  if (ms < 60000) return `${Math.floor(ms / 1000)} s ago`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ago`;
  if (ms < 86400000) return `${Math.floor(ms / 3600000)} h ago`;
  return `${Math.floor(ms / 86400000)} d ago`;
}

/** Bytes as "1.2 MB". */
export function bytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  const u = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${u[i]}`;
}

/** A progress bar (role=progressbar) for one job. */
export function progressBar(label, percent, status) {
  const bar = h('div', {
    class: 'bar',
    role: 'progressbar',
    'aria-label': label,
    'aria-valuemin': '0',
    'aria-valuemax': '100',
  }, h('div', { class: 'bar-fill' }));
  setProgress(bar, percent, status);
  return bar;
}

/**
 * Updates a bar made by progressBar. A failed or aborted job's bar is drawn full-width in
 * its colour (it has ended; an empty bar would read as "not started"); its value stays the
 * progress it had reached.
 */
export function setProgress(bar, percent, status, message) {
  let p = Number.isFinite(percent) ? Math.max(0, Math.min(100, percent)) : 0;
  if (status === 'completed') p = 100;
  const ended = status === 'failed' || status === 'aborted';
  bar.setAttribute('aria-valuenow', String(p));
  bar.setAttribute('aria-valuetext', `${p}%${status ? ` (${status})` : ''}`);
  bar.dataset.status = status || '';
  bar.firstChild.style.width = `${ended ? 100 : p}%`;
  const title = [ended ? `${status} at ${p}%` : `${p}%`, ended ? null : status, message].filter(Boolean).join(' · ');
  bar.title = title;
}

/** Calls fn at once, then at most once per `ms` while calls keep coming. */
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const tick = () => {
    if (again) {
      again = false;
      fn();
      timer = setTimeout(tick, ms);
    } else {
      timer = null;
    }
  };
  return () => {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(tick, ms);
  };
}

/**
 * A trigger form's fields for declared parameters (`{name: {type, default, required,
 * pattern}}`): `idPrefix` keeps their ids apart. `values()` is what a trigger sends:
 * booleans always, other fields only when filled in (the server applies defaults).
 */
export function paramInputs(idPrefix, params) {
  const fields = [];
  const inputs = [];
  for (const [name, spec] of Object.entries(params || {})) {
    const id = `${idPrefix}-${name}`.replace(/[^A-Za-z0-9_-]/g, '_');
    let input;
    if (spec.type === 'boolean') {
      input = h('input', { id, name, type: 'checkbox', checked: spec.default === 'true' });
      fields.push(h('div', { class: 'field field-check' }, input, h('label', { for: id }, name)));
    } else {
      const attrs = { id, name, type: spec.type === 'integer' ? 'number' : 'text', required: !!spec.required, autocomplete: 'off', spellcheck: 'false' };
      if (spec.type === 'integer') attrs.step = '1';
      if (spec.default !== null && spec.default !== undefined) attrs.placeholder = spec.default;
      if (spec.pattern && spec.type !== 'integer') {
        attrs.title = `must match ${spec.pattern}`;
        try { new RegExp(`^(?:${spec.pattern})$`, 'v'); attrs.pattern = spec.pattern; } catch { /* not a JS regex: the server checks */ }
      }
      input = h('input', attrs);
      const hint = [spec.type, spec.required ? 'required' : `default ${spec.default}`].join(', ');
      fields.push(h('div', { class: 'field' },
        h('label', { for: id }, name, h('span', { class: 'hint' }, ` (${hint})`)), input));
    }
    inputs.push({ name, spec, input });
  }
  return {
    fields,
    values() {
      const out = {};
      for (const { name, spec, input } of inputs) {
        if (spec.type === 'boolean') out[name] = input.checked;
        else if (input.value.trim() !== '') out[name] = input.value;
      }
      return out;
    },
  };
}
