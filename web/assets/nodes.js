// The nodes page (`#/nodes`): every live node sharing the store, from `GET /api/workers`:
// its name, URL, labels and config digest (flagged when it differs from its peers'),
// slots in use, the jobs it runs, how long ago it beat (by the server's clock), its bus
// and admission (for the answering node) and, per pipeline with a setup, its setup and
// circuit-breaker state.

import { h, shortId, pill, stamp, duration, progressBar, setProgress } from './dom.js';
import { enc } from './api.js';

const cls = (v) => String(v || '').replace(/[^a-z_]/g, '');

/** How fresh a heartbeat is: `ok` within two beats, `warn` until three, then `bad` (dead soon). */
export function beatState(ageMs, everyMs) {
  if (ageMs <= 2 * everyMs) return 'ok';
  if (ageMs <= 3 * everyMs) return 'warn';
  return 'bad';
}

function runOf(jobId) {
  const i = jobId.indexOf(':');
  return i < 0 ? jobId : jobId.slice(0, i);
}

function nodeCard(w) {
  const busy = (w.runningJobs || []).length;
  const bar = progressBar(`Node ${shortId(w.id)} slots in use`, Math.round((100 * busy) / Math.max(1, w.slots)), busy ? 'running' : '');
  setProgress(bar, Math.round((100 * busy) / Math.max(1, w.slots)), busy ? 'running' : '');
  const beat = beatState(w.heartbeatAgeMs, w.heartbeatEveryMs);
  const bus = w.bus
    ? h('span', { class: `badge ${w.bus.connected ? 'state-ok' : 'state-bad'}`, 'aria-label': 'Bus', title: busTitle(w.bus) }, `bus ${w.bus.kind}${w.bus.connected ? '' : ' (disconnected)'}`)
    : null;
  const admission = w.admission
    ? h('span', { class: `badge ${w.admission === 'admitting' ? 'state-ok' : 'state-warn'}`, 'aria-label': 'Admission', title: w.admission }, w.admission === 'admitting' ? 'admitting' : 'claims held')
    : null;
  const circuits = (w.pipelines || []).length === 0
    ? h('p', { class: 'small muted' }, 'No pipeline setup has run on this node.')
    : h('div', { class: 'table-wrap' }, h('table', { class: 'jobs circuits', 'aria-label': `Circuits of node ${shortId(w.id)}` },
      h('thead', {}, h('tr', {}, ['Pipeline', 'Setup', 'Circuit', 'Failures', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, w.pipelines.map((p) => h('tr', { dataset: { pipeline: p.pipeline } },
        h('th', { scope: 'row' }, p.pipeline),
        h('td', {}, h('span', { class: `badge setup-${cls(p.setup)}` }, p.setup)),
        h('td', {}, h('span', { class: `badge circuit-${cls(p.circuit)}` }, p.circuit)),
        h('td', { class: 'num' }, String(p.failures)),
        h('td', { class: `small ellipsis${p.lastError ? ' error-text' : ' muted'}`, title: p.lastError || '' }, p.lastError || '—'))))));
  const labels = Object.entries(w.labels || {});
  const config = w.configDigest
    ? h('span', { class: `badge ${w.configDiffers ? 'state-warn' : 'state-ok'}`, 'aria-label': 'Config', title: w.configDiffers ? 'This node runs a config that differs from its live peers\' (a rolling restart half done?)' : 'Same config as its live peers' },
      w.configDiffers ? `config ${w.configDigest} differs` : `config ${w.configDigest}`)
    : null;
  return h('article', { class: 'card node', 'aria-label': `Node ${w.name || shortId(w.id)}`, dataset: { nodeId: w.id, nodeName: w.name || '' } },
    h('div', { class: 'card-head' },
      h('h2', {}, h('span', { class: 'mono', title: `node id ${w.id}` }, w.name || shortId(w.id))),
      w.self ? h('span', { class: 'badge state-info' }, 'this node') : null,
      bus, admission, config),
    h('dl', { class: 'meta' },
      meta('Host', `${w.host} · pid ${w.pid} · id ${shortId(w.id)}`),
      w.url ? meta('URL', h('a', { href: w.url, class: 'mono', rel: 'noopener' }, w.url)) : null,
      meta('Capacity', h('span', { class: 'small', 'aria-label': 'Capacity' }, resourcesLine(w.capacity),
        w.inUse ? ` · in use ${resourcesLine(w.inUse)}` : '')),
      meta('Labels', labels.length === 0 ? h('span', { class: 'small muted' }, 'none')
        : h('span', { 'aria-label': 'Labels' }, labels.map(([k, v]) => h('span', { class: 'badge label mono' }, `${k}=${v}`)))),
      meta('Slots', h('div', { class: 'slots' }, bar, h('span', { class: 'small', 'aria-label': 'Slots in use' }, `${busy}/${w.slots} busy`))),
      meta('Heartbeat', h('span', { class: `beat beat-${beat}`, 'aria-label': 'Heartbeat age', title: `every ${duration(w.heartbeatEveryMs)}; last ${stamp(w.heartbeat)}` },
        `${duration(w.heartbeatAgeMs)} ago`, beat === 'bad' ? ' (missed 3 beats)' : beat === 'warn' ? ' (late)' : '')),
      meta('Started', h('time', { datetime: w.started, title: w.started }, stamp(w.started))),
      w.bus && w.bus.kind !== 'local' ? meta('Bus', h('span', { class: 'small', 'aria-label': 'Bus state' }, busLine(w.bus))) : null),
    h('div', { class: 'node-jobs' },
      h('h3', {}, `Running jobs (${busy})`),
      busy === 0 ? h('p', { class: 'small muted' }, 'Idle.')
        : h('ul', { class: 'job-list', 'aria-label': `Jobs running on node ${shortId(w.id)}` }, w.runningJobs.map((j) => h('li', {},
          h('a', { href: `#/runs/${enc(runOf(j))}?job=${enc(j)}`, title: j, class: 'mono' }, shortId(j)), ' ', pill('running'))))),
    h('div', { class: 'node-circuits' }, h('h3', {}, 'Pipeline setup and circuits'), circuits));
}

/** `cpu 8 · memory 16.0 GiB · gpu 2` (zero dimensions left out; `—` for none). */
export function resourcesLine(r) {
  if (!r) return '—';
  const parts = [];
  if (r.cpuMilli) parts.push(`cpu ${r.cpuMilli / 1000}`);
  if (r.memory) parts.push(`memory ${(r.memory / 2 ** 30).toFixed(1)} GiB`);
  if (r.gpu) parts.push(`gpu ${r.gpu}`);
  return parts.length ? parts.join(' · ') : 'nothing';
}

/** The bus badge's tooltip: who this process is on the bus. */
export function busTitle(b) {
  return [`origin ${b.origin}`, b.prefix ? `prefix ${b.prefix}` : null].filter(Boolean).join(' · ');
}

/** One line of bus state: up or down since when, reconnects, and message counts. */
export function busLine(b) {
  const state = `${b.connected ? 'connected' : 'down'}${b.since ? ` since ${stamp(b.since)}` : ''}`;
  return `${state} · ${b.reconnects} reconnect${b.reconnects === 1 ? '' : 's'} · ${b.published} sent, ${b.dispatched} heard, ${b.dropped} dropped`;
}

function meta(label, ...value) {
  return h('div', { class: 'meta-item' }, h('dt', {}, label), h('dd', {}, ...value));
}

/** Renders the nodes page into `root`. */
export function renderNodes(root, workers) {
  const list = [...(workers || [])].sort((a, b) => (b.self - a.self) || (a.name || a.host).localeCompare(b.name || b.host) || a.id.localeCompare(b.id));
  replace(root, list);
}

function replace(el, list) {
  el.replaceChildren(...(list.length ? list.map(nodeCard) : [h('p', { class: 'empty' }, 'No live nodes.')]));
}
