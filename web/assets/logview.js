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

import { h, replace, shortId } from './dom.js';
import { SseClient } from './sse.js';
import { enc } from './api.js';

export const MAX_LINES = 5000;
const MIN_PER_FRAME = 100;
const MAX_PER_FRAME = 2000;
const FRAME_BUDGET_MS = 8;
const START_TAIL = 2000;
const SKIP_PAUSE_MS = 750;

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
    this.reset();

    this.title = h('h3', { id: 'log-title' }, 'Log');
    this.state = h('span', { class: 'log-state muted', role: 'status', 'aria-label': 'Log stream state' });
    this.counts = h('span', { class: 'log-counts muted', 'aria-label': 'Log line count' });
    this.full = h('a', { class: 'log-full', target: '_blank', rel: 'noopener', hidden: true }, 'Full log (JSON)');
    this.note = h('p', { class: 'log-note', role: 'note', hidden: true });
    this.lines = h('div', { class: 'log-lines', role: 'log', 'aria-label': 'Log output', 'aria-live': 'off', tabindex: '0' });
    this.bottom = h('button', { type: 'button', class: 'btn btn-small log-bottom', hidden: true, onclick: () => this.scrollToEnd() }, 'Follow ↓');
    this.lines.addEventListener('scroll', () => {
      const el = this.lines;
      this.stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
      this.bottom.hidden = this.stick;
    }, { passive: true });
    replace(root,
      h('div', { class: 'log-head' }, this.title, this.state, h('span', { class: 'spacer' }), this.counts, this.full),
      this.note,
      h('div', { class: 'log-body' }, this.lines, this.bottom));
  }

  reset() {
    this.pending = [];
    this.shown = 0;
    this.lastSeq = -1;
    this.skips = 0;
    this.skipping = false;
    this.ended = false;
    this.stick = true;
  }

  /** Shows and follows one job's log (stops the previous one). */
  open(jobId, label) {
    if (this.jobId === jobId && (this.skipping || (this.client && !this.client.closed))) return;
    this.close();
    this.jobId = jobId;
    this.reset();
    this.bottom.hidden = true;
    this.lines.replaceChildren();
    this.lines.classList.remove('ended');
    this.note.hidden = true;
    replace(this.title, 'Log · ', label || shortId(jobId));
    this.title.title = jobId;
    this.full.href = `/api/jobs/${enc(jobId)}/logs`;
    this.full.hidden = false;
    this.updateCounts();
    this.connect(START_TAIL);
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
      this.setState(`ended${status ? ` (${status})` : ''}`, 'ended');
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

  flush() {
    const t0 = performance.now();
    this.frame = 0;
    let batch = this.pending;
    if (batch.length > MAX_LINES) batch = batch.slice(batch.length - MAX_LINES); // never shown
    this.pending = batch.length > this.perFrame ? batch.slice(this.perFrame) : [];
    if (batch.length > this.perFrame) batch = batch.slice(0, this.perFrame);
    if (batch.length) {
      const frag = document.createDocumentFragment();
      let added = 0;
      for (const data of batch) {
        let rec;
        try { rec = JSON.parse(data); } catch { continue; }
        if (typeof rec.seq === 'number') {
          if (rec.seq <= this.lastSeq) continue; // already shown (a resume overlaps)
          this.lastSeq = rec.seq;
        }
        const div = document.createElement('div');
        div.className = rec.stream === 'stderr' ? 'ln err' : 'ln';
        div.textContent = rec.line === '' ? '\u00a0' : rec.line;
        frag.appendChild(div);
        added++;
      }
      this.lines.appendChild(frag);
      this.shown += added;
      const over = this.shown - MAX_LINES;
      if (over > 0) {
        const range = document.createRange();
        range.setStartBefore(this.lines.firstChild);
        range.setEndAfter(this.lines.children[over - 1]);
        range.deleteContents();
        this.shown -= over;
      }
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

  updateCounts() {
    const hidden = Math.max(0, this.lastSeq + 1 - this.shown);
    this.counts.textContent = `${this.shown.toLocaleString()} lines shown` +
      (hidden ? ` · ${hidden.toLocaleString()} not shown` : '');
    this.lines.dataset.lines = String(this.shown);
    if (hidden) {
      replace(this.note,
        `Showing the last ${this.shown.toLocaleString()} lines; ${hidden.toLocaleString()} earlier lines are not shown ` +
        `(the viewer keeps ${MAX_LINES.toLocaleString()} lines and skips ahead when the output comes faster than it can be read). `,
        h('a', { href: `/api/jobs/${enc(this.jobId)}/logs`, target: '_blank', rel: 'noopener' }, 'Open the full log'),
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
