// A job's log, following `GET /api/jobs/{id}/logs/stream`. Built to keep up
// with a fast writer without freezing the page:
// - lines are queued raw as they arrive and appended once per animation frame,
//   as many per frame as fit in a few milliseconds (adapted as it goes);
// - the DOM keeps the last MAX_LINES lines; older ones are removed, with a
//   note and a link to the full log;
// - when the writer outruns the screen (more than 2 × MAX_LINES queued), the
//   viewer stops reading, renders what it has, and resumes at the newest lines
//   (`?tail=`), so a 50 MB log costs the page a few MB, not 50;
// - it scrolls itself only while the reader is at the bottom.
// Every line carries its sequence number, so duplicates (after a resume) are
// skipped and "lines not shown" is exact: last seq + 1 − lines in the DOM.
//
// For operators: each line also carries the execution (`claimSeq`) that wrote it and
// the time its chunk was committed (`timeMs`), so the log is split by attempt (a
// separator where the execution changes, and a filter to show one attempt), can show
// timestamps, be searched (case-insensitive text; matching lines only, matches
// marked), wrapped or not, and downloaded whole as plain text in capture order.

import { h, replace, shortId, lineTime, clock } from './dom.js';
import { SseClient } from './sse.js';
import { enc } from './api.js';

export const MAX_LINES = 5000;
const MIN_PER_FRAME = 100;
const MAX_PER_FRAME = 2000;
const FRAME_BUDGET_MS = 8;
const START_TAIL = 2000;
const SKIP_PAUSE_MS = 750;

/** A remembered on/off preference (localStorage; ignored when unavailable). */
function pref(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v === null ? fallback : v === '1';
  } catch { return fallback; }
}
function savePref(key, on) {
  try { localStorage.setItem(key, on ? '1' : '0'); } catch { /* private mode */ }
}

export class LogViewer {
  /** root: the element to render into. onUnauthorized: 401 handler. */
  constructor(root, onUnauthorized) {
    this.root = root;
    this.onUnauthorized = onUnauthorized;
    this.jobId = null;
    this.gen = 0;
    this.client = null;
    this.pending = [];
    this.frame = 0;
    this.perFrame = 500;
    this.attempts = new Map(); // claimSeq → attempt view
    this.query = '';
    this.only = ''; // claimSeq shown alone, or '' for every attempt
    this.reset();

    this.title = h('h3', { id: 'log-title' }, 'Log');
    this.state = h('span', { class: 'log-state muted', role: 'status', 'aria-label': 'Log stream state' });
    this.counts = h('span', { class: 'log-counts muted', 'aria-label': 'Log line count' });
    this.full = h('a', { class: 'btn btn-small log-download', hidden: true, download: '', 'aria-label': 'Download log as text' }, 'Download');
    this.note = h('p', { class: 'log-note', role: 'note', hidden: true });
    this.lines = h('div', { class: 'log-lines', role: 'log', 'aria-label': 'Log output', 'aria-live': 'off', tabindex: '0' });
    this.bottom = h('button', { type: 'button', class: 'btn btn-small log-bottom', hidden: true, onclick: () => this.scrollToEnd() }, 'Follow ↓');
    this.lines.addEventListener('scroll', () => {
      const el = this.lines;
      this.stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
      this.bottom.hidden = this.stick;
    }, { passive: true });

    // The toolbar: search, attempt, timestamps, wrap, download.
    this.search = h('input', { type: 'search', class: 'log-search', placeholder: 'Search log', 'aria-label': 'Search log', autocomplete: 'off', spellcheck: 'false' });
    let searchTimer = 0;
    this.search.addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => this.setQuery(this.search.value), 150);
    });
    this.search.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { clearTimeout(searchTimer); this.setQuery(this.search.value); }
    });
    this.matches = h('span', { class: 'log-matches small muted', role: 'status', 'aria-label': 'Log search matches' });
    this.attemptSel = h('select', { class: 'log-attempt', 'aria-label': 'Show attempt' }, h('option', { value: '' }, 'All attempts'));
    this.attemptSel.addEventListener('change', () => { this.only = this.attemptSel.value; this.applyFilter(); });
    this.showTs = pref('runyard.log.timestamps', false);
    this.wrap = pref('runyard.log.wrap', true);
    this.tsBtn = h('button', { type: 'button', class: 'btn btn-small toggle', 'aria-pressed': String(this.showTs), onclick: () => this.setTimestamps(!this.showTs) }, 'Timestamps');
    this.wrapBtn = h('button', { type: 'button', class: 'btn btn-small toggle', 'aria-pressed': String(this.wrap), onclick: () => this.setWrap(!this.wrap) }, 'Wrap');
    this.lines.classList.toggle('show-ts', this.showTs);
    this.lines.classList.toggle('nowrap', !this.wrap);

    replace(root,
      h('div', { class: 'log-head' }, this.title, this.state, h('span', { class: 'spacer' }), this.counts),
      h('div', { class: 'log-tools', role: 'toolbar', 'aria-label': 'Log tools' },
        this.search, this.matches, h('span', { class: 'spacer' }), this.attemptSel, this.tsBtn, this.wrapBtn, this.full),
      this.note,
      h('div', { class: 'log-body' }, this.lines, this.bottom));
  }

  reset() {
    this.pending = [];
    this.shown = 0;
    this.lastSeq = -1;
    this.lastClaim = null;
    this.claims = new Set();
    this.skips = 0;
    this.skipping = false;
    this.ended = false;
    this.stick = true;
    this.timeCache = [null, ''];
  }

  /** Shows and follows one job's log (stops the previous one). */
  open(jobId, label) {
    if (this.jobId === jobId && (this.skipping || this.ended || (this.client && !this.client.closed))) return;
    this.close();
    this.jobId = jobId;
    this.reset();
    this.bottom.hidden = true;
    this.lines.replaceChildren();
    this.lines.classList.remove('ended');
    this.note.hidden = true;
    this.only = '';
    this.renderAttemptOptions();
    replace(this.title, 'Log · ', label || shortId(jobId));
    this.title.title = jobId;
    this.full.hidden = false;
    this.updateDownload();
    this.updateCounts();
    this.connect(START_TAIL);
  }

  /** The job's executions (from the run's attempt history), to label and filter by attempt. */
  setAttempts(list) {
    this.attempts = new Map();
    for (const a of list || []) if (a.claimSeq !== null && a.claimSeq !== undefined) this.attempts.set(String(a.claimSeq), a);
    for (const sep of this.lines.querySelectorAll('.ln-sep')) sep.textContent = this.sepText(sep.dataset.c);
    this.renderAttemptOptions();
  }

  attemptLabel(c) {
    const a = this.attempts.get(String(c));
    if (!a) return `Execution ${c}`;
    const bits = [`Attempt ${a.attempt}`, a.outcome];
    if (a.exitCode !== null && a.exitCode !== undefined) bits.push(`exit ${a.exitCode}`);
    if (a.reason && a.reason !== 'exit_code' && a.outcome !== 'completed') bits.push(a.reason);
    return bits.join(' · ');
  }

  sepText(c) {
    const a = this.attempts.get(String(c));
    const started = a && a.startedAt ? ` · started ${clock(a.startedAt)}` : '';
    return `${this.attemptLabel(c)}${started}`;
  }

  renderAttemptOptions() {
    const seqs = new Set([...this.attempts.keys(), ...this.claims]);
    const sorted = [...seqs].sort((a, b) => Number(a) - Number(b));
    const keep = this.only;
    replace(this.attemptSel, h('option', { value: '' }, 'All attempts'),
      sorted.map((c) => h('option', { value: c }, this.attemptLabel(c))));
    this.attemptSel.value = sorted.includes(keep) ? keep : '';
    this.only = this.attemptSel.value;
    this.attemptSel.hidden = sorted.length < 2 && !this.only;
  }

  setTimestamps(on) {
    this.showTs = on;
    savePref('runyard.log.timestamps', on);
    this.tsBtn.setAttribute('aria-pressed', String(on));
    this.lines.classList.toggle('show-ts', on);
    this.updateDownload();
  }

  setWrap(on) {
    this.wrap = on;
    savePref('runyard.log.wrap', on);
    this.wrapBtn.setAttribute('aria-pressed', String(on));
    this.lines.classList.toggle('nowrap', !on);
  }

  updateDownload() {
    if (!this.jobId) return;
    this.full.href = `/api/jobs/${enc(this.jobId)}/logs/text${this.showTs ? '?timestamps=true' : ''}`;
    this.full.title = `The whole stored log as plain text, every attempt, in capture order${this.showTs ? ', each line with its time (UTC)' : ''}`;
  }

  setQuery(q) {
    const next = q.trim().toLowerCase();
    if (next === this.query) return;
    this.query = next;
    this.applyFilter();
  }

  /** True when a line (text, claim) is shown under the current search and attempt filter. */
  matchesLine(text, c) {
    if (this.only && c !== this.only) return false;
    return !this.query || text.toLowerCase().includes(this.query);
  }

  /** Shows a line's text, with the search's matches marked. */
  paint(div, text) {
    if (!this.query) {
      div.textContent = text === '' ? '\u00a0' : text;
      return;
    }
    const lower = text.toLowerCase();
    div.replaceChildren();
    let at = 0;
    for (;;) {
      const i = lower.indexOf(this.query, at);
      if (i < 0) break;
      if (i > at) div.append(text.slice(at, i));
      div.append(h('mark', {}, text.slice(i, i + this.query.length)));
      at = i + this.query.length;
    }
    if (at < text.length) div.append(text.slice(at));
  }

  /** Re-applies the search and the attempt filter to every line in the DOM. */
  applyFilter() {
    let n = 0;
    const filtering = !!(this.query || this.only);
    for (const el of this.lines.children) {
      if (el.classList.contains('ln-sep')) {
        el.hidden = !!this.only && el.dataset.c !== this.only;
        continue;
      }
      const text = el.textContent === '\u00a0' ? '' : el.textContent;
      const ok = this.matchesLine(text, el.dataset.c);
      el.hidden = !ok;
      if (ok) {
        n++;
        if (this.query || el.firstElementChild) this.paint(el, text);
      }
    }
    this.lines.classList.toggle('filtered', filtering);
    this.matches.textContent = filtering ? `${n.toLocaleString()} matching line${n === 1 ? '' : 's'}` : '';
    this.matchCount = n;
    if (this.stick) this.lines.scrollTop = this.lines.scrollHeight;
  }

  connect(tail) {
    const gen = this.gen;
    this.client = new SseClient(`/api/jobs/${enc(this.jobId)}/logs/stream?tail=${tail}`, {
      onEvent: (name, data) => (gen === this.gen ? this.onEvent(name, data) : true),
      onState: (s) => {
        if (gen !== this.gen || this.ended) return;
        if (s === 'open') this.setState(this.skips ? 'following (skipping ahead)' : 'following', 'live');
        else if (s === 'connecting') this.setState('connecting…', '');
        else if (s === 'retrying') this.setState('reconnecting…', 'warn');
      },
      onUnauthorized: () => this.onUnauthorized(),
      onError: (status, message) => this.setState(`error ${status}: ${message}`, 'error'),
    });
  }

  close() {
    this.gen++;
    if (this.client) this.client.close();
    this.client = null;
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
  }

  setState(text, cls) {
    this.state.textContent = text;
    this.state.className = `log-state ${cls || 'muted'}`;
  }

  onEvent(name, data) {
    if (name === 'log') {
      // Kept raw: only what reaches the screen is parsed.
      this.pending.push(data);
      if (this.pending.length > 2 * MAX_LINES && !this.skipping) this.skipAhead();
      this.schedule();
      return false;
    }
    if (name === 'end') {
      let status = '';
      try { status = JSON.parse(data).status || ''; } catch { /* ignore */ }
      this.ended = true;
      this.lines.classList.add('ended');
      // Coloured by outcome, like the status badges.
      this.setState(`ended${status ? ` (${status})` : ''}`, status === 'failed' ? 'error' : status === 'aborted' ? 'aborted' : 'ended');
      this.schedule();
      return true; // complete: do not reconnect
    }
    return false;
  }

  /** The writer is faster than the screen: stop reading, then resume at the newest lines. */
  skipAhead() {
    this.skipping = true;
    this.skips++;
    if (this.client) this.client.close();
    this.client = null;
    this.setState('skipping ahead…', 'warn');
    const gen = this.gen;
    const resume = () => {
      if (gen !== this.gen) return;
      if (this.pending.length) { setTimeout(resume, 100); return; }
      this.skipping = false;
      this.connect(MAX_LINES);
    };
    setTimeout(resume, SKIP_PAUSE_MS);
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  separator(c) {
    const sep = document.createElement('div');
    sep.className = 'ln-sep';
    sep.setAttribute('role', 'separator');
    sep.dataset.c = c;
    sep.textContent = this.sepText(c);
    if (this.only && c !== this.only) sep.hidden = true;
    return sep;
  }

  flush() {
    const t0 = performance.now();
    this.frame = 0;
    let batch = this.pending;
    if (batch.length > MAX_LINES) batch = batch.slice(batch.length - MAX_LINES); // never shown
    this.pending = batch.length > this.perFrame ? batch.slice(this.perFrame) : [];
    if (batch.length > this.perFrame) batch = batch.slice(0, this.perFrame);
    if (batch.length) {
      const frag = document.createDocumentFragment();
      const filtering = !!(this.query || this.only);
      let added = 0;
      let newClaims = false;
      for (const data of batch) {
        let rec;
        try { rec = JSON.parse(data); } catch { continue; }
        if (typeof rec.seq === 'number') {
          if (rec.seq <= this.lastSeq) continue; // already shown (a resume overlaps)
          this.lastSeq = rec.seq;
        }
        const c = rec.claimSeq === undefined || rec.claimSeq === null ? '' : String(rec.claimSeq);
        if (c !== '' && c !== this.lastClaim) {
          frag.appendChild(this.separator(c));
          this.lastClaim = c;
          if (!this.claims.has(c)) { this.claims.add(c); newClaims = true; }
        }
        const div = document.createElement('div');
        div.className = rec.stream === 'stderr' ? 'ln err' : 'ln';
        if (c !== '') div.dataset.c = c;
        if (typeof rec.timeMs === 'number') {
          if (this.timeCache[0] !== rec.timeMs) this.timeCache = [rec.timeMs, lineTime(rec.timeMs)];
          div.setAttribute('data-t', this.timeCache[1]);
        }
        const text = rec.line ?? '';
        if (filtering) {
          const ok = this.matchesLine(text, c);
          div.hidden = !ok;
          if (ok) this.matchCount = (this.matchCount || 0) + 1;
          this.paint(div, text);
        } else {
          div.textContent = text === '' ? '\u00a0' : text;
        }
        frag.appendChild(div);
        added++;
      }
      this.lines.appendChild(frag);
      this.shown += added;
      const over = this.shown - MAX_LINES;
      if (over > 0) this.trim(over);
      if (newClaims) this.renderAttemptOptions();
      if (filtering) this.matches.textContent = `${(this.matchCount || 0).toLocaleString()} matching line${this.matchCount === 1 ? '' : 's'}`;
      if (this.stick) this.lines.scrollTop = this.lines.scrollHeight;
      this.updateCounts();
    }
    // Keep a frame's work near the budget.
    const took = performance.now() - t0;
    if (batch.length >= this.perFrame) {
      if (took > 1.5 * FRAME_BUDGET_MS) this.perFrame = Math.max(MIN_PER_FRAME, this.perFrame >> 1);
      else if (took < FRAME_BUDGET_MS / 2) this.perFrame = Math.min(MAX_PER_FRAME, this.perFrame * 2);
    }
    if (this.pending.length) {
      this.lines.dataset.pending = String(this.pending.length);
      this.schedule();
    } else {
      delete this.lines.dataset.pending;
    }
  }

  /** Removes the oldest `over` lines (and the separators among them) in one range. */
  trim(over) {
    let removed = 0;
    let last = null;
    for (let el = this.lines.firstElementChild; el; el = el.nextElementSibling) {
      last = el;
      if (!el.classList.contains('ln-sep')) {
        if (!el.hidden && (this.query || this.only)) this.matchCount = Math.max(0, (this.matchCount || 0) - 1);
        if (++removed === over) break;
      }
    }
    if (!last) return;
    const range = document.createRange();
    range.setStartBefore(this.lines.firstChild);
    range.setEndAfter(last);
    range.deleteContents();
    this.shown -= removed;
    // The first attempt left keeps its header.
    const first = this.lines.firstElementChild;
    if (first && !first.classList.contains('ln-sep') && first.dataset.c) {
      this.lines.insertBefore(this.separator(first.dataset.c), first);
    }
  }

  updateCounts() {
    const hidden = Math.max(0, this.lastSeq + 1 - this.shown);
    this.counts.textContent = `${this.shown.toLocaleString()} lines shown` +
      (hidden ? ` · ${hidden.toLocaleString()} not shown` : '');
    this.lines.dataset.lines = String(this.shown);
    if (hidden) {
      replace(this.note,
        `Showing the last ${this.shown.toLocaleString()} lines; ${hidden.toLocaleString()} earlier lines are not shown ` +
        `(the viewer keeps ${MAX_LINES.toLocaleString()} lines and skips ahead when the output comes faster than it can be read). `,
        h('a', { href: `/api/jobs/${enc(this.jobId)}/logs/text`, download: '' }, 'Download the full log'),
        '.');
      this.note.hidden = false;
    }
  }

  scrollToEnd() {
    this.stick = true;
    this.bottom.hidden = true;
    this.lines.scrollTop = this.lines.scrollHeight;
  }
}
