// A Server-Sent Events client on fetch(): same as EventSource (ids, retry,
// automatic reconnection that resumes with `Last-Event-ID`), plus what
// EventSource cannot do: see a 401 (→ login), send `Last-Event-ID` on a
// reconnect we start ourselves, and hand over events in batches.

/** Lets the page handle input, rendering and other tasks before we go on. */
function yieldToPage() {
  if (globalThis.scheduler && typeof globalThis.scheduler.yield === 'function') return globalThis.scheduler.yield();
  return new Promise((resolve) => setTimeout(resolve, 0));
}

export class SseClient {
  /**
   * url: same-origin path.
   * opts.onEvent(name, data, id): each event (name defaults to "message").
   * opts.onState(state): 'connecting' | 'open' | 'retrying' | 'closed'.
   * opts.onUnauthorized(): 401 (the client stops).
   * opts.onError(status, message): a non-retryable answer (4xx); the client stops.
   * opts.lastEventId: resume after this id.
   */
  constructor(url, opts) {
    this.url = url;
    this.opts = opts;
    this.lastEventId = opts.lastEventId ?? null;
    this.retryMs = 1000;
    this.failures = 0;
    this.closed = false;
    this.controller = null;
    this.timer = null;
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
    this.state('closed');
  }

  /** Drops the current connection and reconnects now (resuming from the last id). */
  reconnect() {
    if (this.closed) return;
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
    this.connect();
  }

  state(s) {
    if (this.opts.onState) this.opts.onState(s);
  }

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    this.state('connecting');
    const headers = { Accept: 'text/event-stream' };
    if (this.lastEventId !== null && this.lastEventId !== '') headers['Last-Event-ID'] = String(this.lastEventId);
    let ended = false;
    try {
      const res = await fetch(this.url, { headers, credentials: 'same-origin', cache: 'no-store', signal: controller.signal });
      if (res.status === 401) {
        this.closed = true;
        this.state('closed');
        if (this.opts.onUnauthorized) this.opts.onUnauthorized();
        return;
      }
      if (!res.ok) {
        let message = `${res.status}`;
        try { const j = await res.json(); if (j && j.error) message = j.error; } catch { /* not JSON */ }
        if (res.status >= 400 && res.status < 500) {
          this.closed = true;
          this.state('closed');
          if (this.opts.onError) this.opts.onError(res.status, message);
          return;
        }
        throw new Error(message);
      }
      this.failures = 0;
      this.state('open');
      ended = await this.read(res.body.getReader());
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    if (this.closed || controller !== this.controller) return;
    if (ended) return;
    // Lost (server restart, network): retry with backoff, resuming after the last id.
    this.failures++;
    this.state('retrying');
    const delay = Math.min(30000, this.retryMs * 2 ** Math.min(this.failures - 1, 5));
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reads until the stream ends; true when the consumer said it is complete. */
  async read(reader) {
    const decoder = new TextDecoder();
    let buf = '';
    let data = [];
    let name = '';
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buf += decoder.decode(value, { stream: true });
      let start = 0;
      let sliceStart = performance.now();
      let n = 0;
      for (;;) {
        // A big chunk (a fast log) is handled in slices of ~8 ms: the page stays responsive.
        if (++n % 64 === 0 && performance.now() - sliceStart > 8) {
          await yieldToPage();
          if (this.closed) return true;
          sliceStart = performance.now();
        }
        const nl = buf.indexOf('\n', start);
        if (nl < 0) break;
        let line = buf.slice(start, nl);
        start = nl + 1;
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (id !== null) this.lastEventId = id;
          if (data.length) {
            const stop = this.opts.onEvent(name || 'message', data.join('\n'), this.lastEventId);
            if (this.closed) return true; // closed by the consumer
            if (stop === true) {
              this.closed = true;
              reader.cancel().catch(() => {});
              this.state('closed');
              return true;
            }
          }
          data = [];
          name = '';
          id = null;
          continue;
        }
        if (line.charCodeAt(0) === 58 /* ':' */) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.charCodeAt(0) === 32) val = val.slice(1);
        if (field === 'data') data.push(val);
        else if (field === 'event') name = val;
        else if (field === 'id') { if (!val.includes('\0')) id = val; }
        else if (field === 'retry') { const n = Number(val); if (Number.isInteger(n) && n >= 0) this.retryMs = Math.max(250, n); }
      }
      buf = buf.slice(start);
    }
  }
}
