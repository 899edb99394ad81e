// The runyard dashboard: pipelines with trigger forms, totals and charts, runs
// (filtered, searched, paged, live progress), the activity feed, a run page with
// shards, each job's attempt history and result, finalizer, webhook deliveries,
// a live log viewer and abort, and a nodes page. Plain ES modules; every value
// from the API is inserted as text.
//
// Navigation lives in the URL hash, so every view can be shared and the back
// button works: `#/?pipeline=&status=&q=&page=` (the runs list), `#/runs/ID?job=JOB`
// (a run, with the job whose attempts and log are open) and `#/nodes`; the workflows
// (`#/workflows`, `#/workflow-runs/ID`) are workflows.js's.

import { h, replace, shortId, pill, duration, between, clock, ago, bytes, progressBar, setProgress, stamp, timeEl, zoneLabel, throttle, paramInputs } from './dom.js';
import { api, getSession, login, logout, setUnauthorizedHandler, enc } from './api.js';
import { SseClient } from './sse.js';
import { LogViewer } from './logview.js';
import { statsBlock, legend } from './chart.js';
import { renderNodes } from './nodes.js';
import { initWorkflows, showWorkflows, showWorkflowRun, leaveWorkflows, workflowEvent, reloadWorkflows, tickWorkflows, workflowRef, wfRunLink } from './workflows.js';

const PAGE = 50;
const FEED_MAX = 200;
const MAX_BARS = 16;
const TERMINAL = new Set(['completed', 'failed', 'aborted', 'skipped']);
const $ = (id) => document.getElementById(id);

const state = {
  session: null,
  started: false,
  pipelines: [],
  pipelineCards: new Map(), // id → {card, counts, setup, circuit}
  filter: { pipeline: '', status: '', q: '' },
  dashboardHash: '#/', // the last runs-list URL (filters, page): where "All runs" leads
  statsWindow: '24h',
  statsChosen: false, // the user picked the chart window (else it fits the data)
  stats: null,
  nodesTimer: 0,
  offset: 0,
  hasNext: false,
  runsSeq: 0,
  listBars: new Map(), // jobId → bar
  runBars: new Map(), // jobId → bar (run page)
  feed: null, // SseClient
  lastEventId: null,
  feedPending: [],
  feedFrame: 0,
  feedTotal: 0,
  route: { name: 'dashboard' },
  run: null, // the run page's RunView
  runSeq: 0,
  logViewer: null,
  logJob: null,
  abortMsg: { text: '', cls: '' },
};

// ───────────────────────── helpers ─────────────────────────

function banner(message) {
  const b = $('banner');
  if (!message) { b.hidden = true; return; }
  b.textContent = message;
  b.hidden = false;
}

function runLink(runId, text, label) {
  return h('a', { href: `#/runs/${enc(runId)}`, title: runId, 'aria-label': label || `Run ${runId}` }, text || shortId(runId));
}

/** A job's label: `s0`, `s1`, … as in its id (`RUN:s0`) and in the CLI, or `finalizer`. */
function jobLabel(job) {
  if (job.kind === 'finalize') return 'finalizer';
  return `s${job.shardIndex}`;
}

// ───────────────────────── session / login ─────────────────────────

function showLogin(message) {
  stopLive();
  state.started = false;
  stopNodes();
  $('dashboard-view').hidden = true;
  $('run-view').hidden = true;
  $('nodes-view').hidden = true;
  leaveWorkflows();
  $('logout').hidden = true;
  $('who').hidden = true;
  setConn('off', 'signed out');
  $('login-view').hidden = false;
  const err = $('login-error');
  if (message) { err.textContent = message; err.hidden = false; } else { err.hidden = true; }
  $('login-token').focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const input = $('login-token');
  const err = $('login-error');
  const button = ev.target.querySelector('button[type=submit]');
  button.disabled = true;
  err.hidden = true;
  try {
    await login(input.value);
    input.value = '';
    state.session = await getSession();
    start();
  } catch (e) {
    err.textContent = e.status === 401 || e.status === 403 ? 'That token was not accepted.' : e.message;
    err.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function onLogout() {
  try { await logout(); } catch { /* already gone */ }
  state.session = await getSession().catch(() => ({ authRequired: true, authenticated: false, actor: null }));
  if (state.session.authRequired) showLogin();
}

function start() {
  $('login-view').hidden = true;
  const s = state.session;
  $('logout').hidden = !s.authRequired;
  $('who').hidden = !s.actor;
  $('who').textContent = s.actor ? `signed in as ${s.actor}` : '';
  state.started = true;
  startFeed();
  loadPipelines().then(loadStats);
  route();
}

function stopLive() {
  if (state.feed) state.feed.close();
  state.feed = null;
  if (state.logViewer) state.logViewer.close();
}

// ───────────────────────── routing ─────────────────────────

/** The hash as a path and its query: `#/runs/ID?job=X` → {path: '/runs/ID', params}. */
function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const qi = raw.indexOf('?');
  return { path: qi < 0 ? raw : raw.slice(0, qi), params: new URLSearchParams(qi < 0 ? '' : raw.slice(qi + 1)) };
}

function route() {
  if (!state.started) return;
  const { path, params } = parseHash();
  const m = /^\/runs\/([^/]+)$/.exec(path);
  const w = /^\/workflow-runs\/([^/]+)$/.exec(path);
  if (m) showRun(decodeURIComponent(m[1]), params.get('job'));
  else if (w) showWorkflowView('workflow-run', () => showWorkflowRun(decodeURIComponent(w[1])));
  else if (path === '/workflows') showWorkflowView('workflows', () => showWorkflows(params));
  else if (path === '/nodes') showNodes();
  else showDashboard(params);
}

/** The runs list's URL for a filter and offset. */
function dashboardHash(f, offset) {
  const p = new URLSearchParams();
  if (f.pipeline) p.set('pipeline', f.pipeline);
  if (f.status) p.set('status', f.status);
  if (f.q) p.set('q', f.q);
  if (offset) p.set('page', String(Math.floor(offset / PAGE) + 1));
  const q = p.toString();
  return q ? `#/?${q}` : '#/';
}

/** Puts the list's filter and page in the URL (a history entry); the hashchange loads it. */
function navigateList() {
  const next = dashboardHash(state.filter, state.offset);
  if (location.hash === next || (next === '#/' && (location.hash === '' || location.hash === '#'))) loadRuns();
  else location.hash = next;
}

function leaveRun() {
  if (state.logViewer) state.logViewer.close();
  state.logViewer = null;
  state.run = null;
  state.runBars.clear();
  $('run-view').hidden = true;
  $('run-view').replaceChildren();
}

function markNav(name) {
  const wfs = name === 'workflows' || name === 'workflow-run';
  for (const [id, on] of [['nav-dashboard', name !== 'nodes' && !wfs], ['nav-workflows', wfs], ['nav-nodes', name === 'nodes']]) {
    $(id).classList.toggle('current', on);
    if (on) $(id).setAttribute('aria-current', 'page'); else $(id).removeAttribute('aria-current');
  }
}

/** The workflows list or a workflow run (workflows.js draws them). */
function showWorkflowView(name, show) {
  leaveRun();
  stopNodes();
  state.route = { name };
  markNav(name);
  $('dashboard-view').hidden = true;
  $('nodes-view').hidden = true;
  show();
}

function showDashboard(params) {
  leaveRun();
  stopNodes();
  leaveWorkflows();
  state.route = { name: 'dashboard' };
  markNav('dashboard');
  const page = Math.max(1, Math.min(2001, Number.parseInt(params.get('page') || '1', 10) || 1));
  state.filter = { pipeline: params.get('pipeline') || '', status: params.get('status') || '', q: params.get('q') || '' };
  state.offset = (page - 1) * PAGE;
  state.dashboardHash = dashboardHash(state.filter, state.offset);
  syncFilterControls();
  $('nodes-view').hidden = true;
  $('dashboard-view').hidden = false;
  document.title = 'runyard';
  loadRuns();
}

/** The filter form shows the URL's filter. */
function syncFilterControls() {
  const sel = $('filter-pipeline');
  if (state.filter.pipeline && ![...sel.options].some((o) => o.value === state.filter.pipeline)) {
    sel.append(h('option', { value: state.filter.pipeline }, state.filter.pipeline));
  }
  sel.value = state.filter.pipeline;
  $('filter-status').value = state.filter.status;
  $('runs-search').value = state.filter.q;
}

// ───────────────────────── pipelines ─────────────────────────

async function loadPipelines() {
  try {
    const data = await api('/api/pipelines');
    banner(null);
    renderPipelines(data.pipelines || []);
  } catch (e) {
    if (e.status !== 401) banner(`Could not load pipelines: ${e.message}`);
  }
}
const refreshPipelines = throttle(loadPipelines, 1500);

function renderPipelines(list) {
  state.pipelines = list;
  const ids = list.map((p) => p.id).join('\n');
  if (ids !== [...state.pipelineCards.keys()].join('\n')) {
    state.pipelineCards.clear();
    const cards = list.map((p) => {
      const parts = pipelineCard(p);
      state.pipelineCards.set(p.id, parts);
      return parts.card;
    });
    replace($('pipelines'), cards.length ? cards : h('p', { class: 'empty' }, 'No pipelines configured.'));
    // The filter's choices.
    const sel = $('filter-pipeline');
    const keep = state.filter.pipeline;
    replace(sel, h('option', { value: '' }, 'All pipelines'), list.map((p) => h('option', { value: p.id }, p.id)));
    if (keep && !list.some((p) => p.id === keep)) sel.append(h('option', { value: keep }, keep));
    sel.value = keep;
    if (state.stats) renderStats(state.stats);
  }
  for (const p of list) updatePipelineCard(state.pipelineCards.get(p.id), p);
}

// ───────────────────────── pipeline totals and charts ─────────────────────────

/** The narrowest chart window that holds every run finished in the last 24 h (given
 *  its hourly buckets): `1h` when they all fall in the current hour, `6h` within the
 *  last six, else `24h` (also when there are none). */
function fittingWindow(day) {
  let oldest = 0; // buckets back from now (1: the current hour)
  for (const p of day.pipelines || []) {
    const buckets = p.buckets || [];
    buckets.forEach((b, i) => {
      if (b.completed + b.failed + b.aborted > 0) oldest = Math.max(oldest, buckets.length - i);
    });
  }
  if (oldest === 0) return '24h';
  if (oldest === 1) return '1h';
  return oldest <= 6 ? '6h' : '24h';
}

async function loadStats() {
  try {
    let data = await api(`/api/stats?window=${enc(state.statsWindow)}`);
    // Until the user picks a window, the charts use one that fits the data.
    if (!state.statsChosen) {
      const day = data.window === '24h' ? data : await api('/api/stats?window=24h');
      const fit = fittingWindow(day);
      if (fit !== state.statsWindow) {
        state.statsWindow = fit;
        $('stats-window').value = fit;
        data = fit === '24h' ? day : await api(`/api/stats?window=${enc(fit)}`);
      }
    }
    state.stats = data;
    renderStats(data);
  } catch (e) {
    if (e.status !== 401) banner(`Could not load pipeline statistics: ${e.message}`);
  }
}
const refreshStats = throttle(loadStats, 5000);

function renderStats(data) {
  for (const p of data.pipelines || []) {
    const parts = state.pipelineCards.get(p.pipelineId);
    if (parts) replace(parts.stats, statsBlock(p, data));
  }
}

function pipelineCard(p) {
  const counts = h('span', { class: 'p-counts', 'aria-label': `${p.id} queue` });
  const circuit = h('span', { class: 'badge', hidden: true });
  const pausedBadge = h('span', { class: 'badge badge-paused', hidden: true, title: 'No node starts its queued jobs; triggers are still queued' }, 'paused');
  const pauseButton = h('button', { type: 'button', class: 'btn btn-small pause-toggle', 'aria-pressed': 'false' }, 'Pause');
  pauseButton.addEventListener('click', async () => {
    const verb = pauseButton.getAttribute('aria-pressed') === 'true' ? 'resume' : 'pause';
    pauseButton.disabled = true;
    try {
      const r = await api(`/api/pipelines/${enc(p.id)}/${verb}`, { method: 'POST', body: {} });
      setPaused({ pausedBadge, pauseButton }, r.paused);
      refreshPipelines();
    } catch (e) {
      banner(`Could not ${verb} ${p.id}: ${e.status ? `${e.status}: ` : ''}${e.message}`);
    } finally {
      pauseButton.disabled = false;
    }
  });
  const setup = h('div', { class: 'p-setup', hidden: true });
  const schedule = h('div', { class: 'p-schedule small muted', hidden: true });
  const result = h('div', { class: 'trigger-result', role: 'status', 'aria-live': 'polite' });
  const { fields, values } = paramInputs(`param-${p.id}`, p.params);
  const shardsId = `shards-${p.id}`.replace(/[^A-Za-z0-9_-]/g, '_');
  const shards = h('input', { id: shardsId, name: 'shards', type: 'number', min: '1', step: '1', placeholder: String(p.shards ?? 1), class: 'shards-input' });
  const button = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Trigger');
  const form = h('form', { class: 'trigger', 'aria-label': `Trigger ${p.id}`, novalidate: false },
    fields,
    h('div', { class: 'field field-shards' }, h('label', { for: shardsId }, 'Shards'), shards),
    h('div', { class: 'trigger-actions' }, button),
    result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { parameters: values() };
    if (shards.value.trim() !== '') body.shards = Number(shards.value);
    button.disabled = true;
    result.className = 'trigger-result';
    result.textContent = 'Queuing…';
    try {
      const r = await api(`/api/pipelines/${enc(p.id)}/trigger`, { method: 'POST', body, headers: { 'X-Runyard-Source': 'dashboard' } });
      replace(result, r.idempotentReplay ? 'Existing run ' : 'Queued run ', runLink(r.runId, shortId(r.runId), `Open run ${r.runId}`),
        r.paused ? ' (pipeline paused: it waits until resumed)' : '');
      result.className = 'trigger-result ok';
      result.dataset.runId = r.runId;
      refreshRuns();
      refreshPipelines();
    } catch (e) {
      result.className = 'trigger-result error';
      result.setAttribute('role', 'alert');
      result.textContent = e.status ? `${e.status}: ${e.message}` : e.message;
    } finally {
      button.disabled = false;
    }
  });
  const cmd = (p.command || []).join(' ');
  const stats = h('div', { class: 'p-stats-slot', 'aria-label': `${p.id} statistics` });
  const reqs = Object.entries(p.requires || {}).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('|') : v}`);
  const needs = Object.entries(p.resources || {}).filter(([, v]) => v > 0).map(([k, v]) =>
    k === 'cpuMilli' ? `cpu=${v / 1000}` : k === 'memory' ? `memory=${bytes(v)}` : `${k}=${v}`);
  const requires = reqs.length || needs.length || p.concurrencyKey
    ? h('div', { class: 'p-requires small muted', 'aria-label': `${p.id} placement` },
      reqs.length ? ['runs on nodes with ', reqs.map((r) => h('span', { class: 'badge label mono' }, r))] : null,
      needs.length ? [' needs ', needs.map((r) => h('span', { class: 'badge label mono' }, r))] : null,
      p.concurrencyKey ? [' per ', h('code', {}, p.concurrencyKey), p.concurrencyPerKey ? ` at most ${p.concurrencyPerKey} at once` : ' (fair shares)'] : null)
    : null;
  const card = h('article', { class: 'pipeline', 'aria-label': `Pipeline ${p.id}` },
    h('div', { class: 'p-head' }, h('h3', {}, h('a', { href: dashboardHash({ pipeline: p.id, status: '', q: '' }, 0), title: `Runs of ${p.id}` }, p.id)), circuit, pausedBadge, h('span', { class: 'spacer' }), counts, pauseButton),
    h('code', { class: 'p-cmd', title: cmd }, cmd),
    requires,
    schedule,
    setup,
    stats,
    form);
  return { card, counts, circuit, setup, stats, pausedBadge, pauseButton, schedule };
}

function setPaused(parts, paused) {
  parts.pausedBadge.hidden = !paused;
  parts.pauseButton.textContent = paused ? 'Resume' : 'Pause';
  parts.pauseButton.setAttribute('aria-pressed', paused ? 'true' : 'false');
  parts.pauseButton.title = paused ? 'Resume: queued jobs start again' : 'Pause: no node starts queued jobs; running ones finish';
}

function updatePipelineCard(parts, p) {
  if (!parts) return;
  setPaused(parts, !!p.paused);
  if (p.schedule) {
    parts.schedule.hidden = false;
    replace(parts.schedule, 'schedule ', h('code', {}, p.schedule.cron), ` (${p.schedule.timeZone})`,
      p.schedule.nextFireAt ? [' · next ', timeEl(p.schedule.nextFireAt, stamp(p.schedule.nextFireAt))] : null);
  } else {
    parts.schedule.hidden = true;
  }
  replace(parts.counts,
    h('span', { class: p.queued ? 'n n-queued' : 'n' }, `${p.queued} queued`), ' · ',
    h('span', { class: p.running ? 'n n-running' : 'n' }, `${p.running} running`));
  if (p.setup) {
    parts.circuit.hidden = false;
    parts.circuit.textContent = `circuit ${p.circuit}`;
    parts.circuit.className = `badge circuit-${String(p.circuit).replace(/[^a-z_]/g, '')}`;
    const nodes = p.setup.nodes || [];
    replace(parts.setup,
      h('div', { class: 'small muted' }, 'setup: ', h('code', {}, (p.setup.command || []).join(' '))),
      nodes.length === 0
        ? h('div', { class: 'small muted' }, 'not run on any node yet')
        : h('ul', { class: 'setup-nodes', 'aria-label': `${p.id} setup per node` }, nodes.map((n) => h('li', {},
          h('span', { class: 'mono', title: n.nodeId }, shortId(n.nodeId)), ' ',
          h('span', { class: `badge setup-${String(n.setup).replace(/[^a-z_]/g, '')}` }, n.setup), ' ',
          h('span', { class: `badge circuit-${String(n.circuit).replace(/[^a-z_]/g, '')}` }, `circuit ${n.circuit}`),
          n.failures ? h('span', { class: 'small' }, ` ${n.failures} failure${n.failures === 1 ? '' : 's'}`) : null,
          n.lastError ? h('div', { class: 'small error-text' }, n.lastError) : null))));
    parts.setup.hidden = false;
  } else {
    parts.circuit.hidden = true;
    parts.setup.hidden = true;
  }
}

// ───────────────────────── runs list ─────────────────────────

async function loadRuns() {
  if (state.route.name !== 'dashboard') return;
  const seq = ++state.runsSeq;
  const q = new URLSearchParams({ limit: String(PAGE + 1), offset: String(state.offset) });
  if (state.filter.status) q.set('status', state.filter.status);
  const search = parseSearch(state.filter.q);
  const note = $('runs-search-state');
  if (search.error) {
    note.textContent = search.error;
    note.className = 'search-state small error-text';
    note.hidden = false;
    renderRuns([]);
    return;
  }
  for (const k of ['run', 'param', 'actor']) if (search[k]) q.set(k, search[k]);
  const path = state.filter.pipeline ? `/api/pipelines/${enc(state.filter.pipeline)}/jobs` : '/api/runs';
  try {
    const data = await api(`${path}?${q}`);
    if (seq !== state.runsSeq) return;
    const runs = data.runs || [];
    if (runs.length === 0 && state.offset > 0) {
      state.offset = Math.max(0, state.offset - PAGE);
      navigateList();
      return;
    }
    state.hasNext = runs.length > PAGE;
    renderRuns(runs.slice(0, PAGE));
    if (state.filter.q) {
      const terms = [search.run && `run id ${search.run}…`, search.param && `parameter ${search.param}`, search.actor && `actor ${search.actor}`].filter(Boolean);
      note.textContent = `Runs matching ${terms.join(' and ')}`;
      note.className = 'search-state small muted';
      note.hidden = false;
    } else {
      note.hidden = true;
    }
    banner(null);
  } catch (e) {
    if (seq !== state.runsSeq || e.status === 401) return;
    if (e.status === 400 || e.status === 404) {
      note.textContent = e.message;
      note.className = 'search-state small error-text';
      note.hidden = false;
      renderRuns([]);
    } else {
      banner(`Could not load runs: ${e.message}`);
    }
  }
}

/**
 * The search box: whitespace-separated terms, combined. `actor:label`; `name=value` (quote a
 * value with spaces: `name="a b"`) or `param:name`; anything of hex digits and hyphens is a
 * run id (its start, or the short id shown in lists).
 */
function parseSearch(text) {
  const out = { run: '', param: '', actor: '', error: '' };
  const terms = String(text || '').match(/[^\s=]+="[^"]*"|"[^"]*"|\S+/g) || [];
  for (const raw of terms) {
    const term = raw.replace(/^([^=]+=)"(.*)"$/, '$1$2');
    if (/^actor:/i.test(term)) out.actor = term.slice(6);
    else if (/^param:/i.test(term)) out.param = term.slice(6);
    else if (term.includes('=')) out.param = term;
    else if (/^[0-9a-f-]{1,36}$/i.test(term)) out.run = term;
    else out.error = `Cannot search for “${term}”: use a run id, name=value, param:name or actor:label.`;
  }
  if (!out.error && [out.actor, out.param].some((v) => v === '')) {
    if (/(^|\s)actor:(\s|$)/i.test(text)) out.error = 'actor: needs a label.';
    if (/(^|\s)param:(\s|$)/i.test(text)) out.error = 'param: needs a name.';
  }
  return out;
}
const refreshRuns = throttle(loadRuns, 1000);

function shardBars(run, registry, labelPrefix) {
  const jobs = run.jobs || [];
  if (jobs.length > MAX_BARS) {
    const done = run.shardsDone || 0;
    const bar = progressBar(`${labelPrefix}shards done`, Math.round((100 * done) / Math.max(1, run.shardCount)), run.status);
    return h('div', { class: 'bars' }, bar, h('span', { class: 'small muted' }, `${done}/${run.shardCount}`));
  }
  return h('div', { class: 'bars' }, jobs.map((j) => {
    const bar = progressBar(`${labelPrefix}s${j.shardIndex} progress`, j.progress ?? 0, j.status);
    setProgress(bar, j.progress ?? 0, j.status, j.progressMessage);
    registry.set(j.id, bar);
    return bar;
  }));
}

function renderRuns(runs) {
  state.listBars.clear();
  const rows = runs.map((r) => {
    const took = between(r.startedAt, r.finishedAt);
    return h('tr', { dataset: { runId: r.runId } },
      h('td', { class: 'mono' }, runLink(r.runId)),
      h('td', {}, r.pipelineId),
      h('td', {}, pill(r.status)),
      h('td', {}, shardBars(r, state.listBars, `Run ${shortId(r.runId)} `)),
      h('td', { class: 'small', title: stamp(r.createdAt) }, ago(r.createdAt), h('span', { class: 'muted' }, ` · ${r.triggeredBy}${r.actor ? ` (${r.actor})` : ''}`)),
      h('td', { class: 'small num' }, took === null ? '' : duration(took)));
  });
  $('runs-body').replaceChildren(...rows);
  $('runs-empty').hidden = runs.length > 0;
  const from = runs.length ? state.offset + 1 : 0;
  $('page-info').textContent = runs.length ? `${from}–${state.offset + runs.length}` : '';
  $('page-prev').disabled = state.offset === 0;
  $('page-next').disabled = !state.hasNext;
}

function onFilter(ev) {
  if (ev) ev.preventDefault();
  state.filter = {
    pipeline: $('filter-pipeline').value,
    status: $('filter-status').value,
    q: $('runs-search').value.trim(),
  };
  state.offset = 0;
  navigateList();
}

// ───────────────────────── live events ─────────────────────────

function setConn(cls, text) {
  const el = $('conn');
  el.className = `conn conn-${cls}`;
  el.textContent = text;
}

function startFeed() {
  if (state.feed) state.feed.close();
  state.feed = new SseClient('/api/events', {
    lastEventId: state.lastEventId,
    onEvent: onLiveEvent,
    onState: (s) => {
      if (s === 'open') setConn('on', 'live');
      else if (s === 'retrying') setConn('warn', 'reconnecting…');
      else if (s === 'connecting') setConn('warn', 'connecting…');
      else setConn('off', 'offline');
    },
    onUnauthorized: () => showLogin(),
    onError: (status, message) => setConn('off', `events: ${status} ${message}`),
  });
}

function onLiveEvent(name, data, id) {
  if (id !== null && id !== undefined) state.lastEventId = id;
  let ev = {};
  try { ev = JSON.parse(data) || {}; } catch { /* keep {} */ }
  if (name === 'resync') {
    addFeed(name, ev, id);
    reloadAll();
    return false;
  }
  addFeed(name, ev, id);
  if (name === 'job:progress') {
    updateBars(ev.jobId, ev.progress, 'running', ev.message);
  } else if (name.startsWith('job:') && ev.jobId) {
    updateBars(ev.jobId, null, ev.status);
  }
  const statusChange = name !== 'job:progress';
  if (statusChange) refreshPipelines();
  if (name === 'run:completed') refreshStats();
  if (state.route.name === 'nodes' && (name === 'job:started' || (statusChange && name !== 'job:created'))) refreshNodes();
  if (state.route.name === 'dashboard') {
    const onPage = ev.runId && $('runs-body').querySelector(`tr[data-run-id="${CSS.escape(ev.runId)}"]`);
    if (statusChange && (onPage || (name === 'job:created' && state.offset === 0))) refreshRuns();
  } else if (state.route.name === 'run' && ev.runId === state.route.id && statusChange) {
    refreshRun();
  }
  workflowEvent(name, ev);
  return false;
}

function updateBars(jobId, progress, status, message) {
  if (!jobId) return;
  for (const bar of [state.listBars.get(jobId), state.runBars.get(jobId)]) {
    if (!bar) continue;
    const p = progress ?? Number(bar.getAttribute('aria-valuenow') || 0);
    setProgress(bar, status === 'queued' ? 0 : p, status, message);
  }
}

function reloadAll() {
  loadPipelines();
  loadStats();
  if (state.route.name === 'dashboard') loadRuns();
  else if (state.route.name === 'run') loadRun();
  else if (state.route.name === 'nodes') loadNodes();
  else reloadWorkflows();
}

const FEED_TEXT = {
  'job:created': 'queued',
  'job:started': 'started',
  'job:progress': 'progress',
  'job:completed': 'completed',
  'job:failed': 'failed',
  'job:aborted': 'aborted',
  'run:completed': 'run ended',
  'run:released': 'released',
  'run:skipped': 'skipped',
  'pipeline:paused': 'paused',
  'pipeline:resumed': 'resumed',
  'workflow:created': 'workflow',
  'workflow:completed': 'workflow',
  'workflow:failed': 'workflow',
  'workflow:aborted': 'workflow',
  resync: 'resync',
};

function addFeed(name, ev, id) {
  state.feedTotal++;
  state.feedPending.push({ name, ev, id, at: Date.now() });
  if (state.feedPending.length > FEED_MAX) state.feedPending.splice(0, state.feedPending.length - FEED_MAX);
  if (!state.feedFrame) state.feedFrame = requestAnimationFrame(flushFeed);
}

function flushFeed() {
  state.feedFrame = 0;
  const items = state.feedPending;
  state.feedPending = [];
  const frag = document.createDocumentFragment();
  for (let i = items.length - 1; i >= 0; i--) frag.appendChild(feedItem(items[i]));
  const feed = $('feed');
  feed.prepend(frag);
  while (feed.childElementCount > FEED_MAX) feed.lastElementChild.remove();
  $('feed-empty').hidden = true;
  $('feed-count').textContent = `${state.feedTotal.toLocaleString()} event${state.feedTotal === 1 ? '' : 's'}`;
}

function feedItem({ name, ev, id }) {
  const kind = name.replace(/[^a-z]/g, '-');
  let detail = '';
  if (name === 'job:progress') detail = `${ev.progress ?? ''}%${ev.message ? ` ${ev.message}` : ''}`;
  else if (name === 'run:completed') detail = ev.status || '';
  else if (name === 'job:failed' || name === 'job:aborted' || name === 'job:completed') {
    detail = [ev.status !== name.slice(4) ? ev.status : '', ev.reason === 'exit_code' ? '' : ev.reason, ev.exitCode !== null && ev.exitCode !== undefined ? `exit ${ev.exitCode}` : '', ev.nextAttempt ? `retry #${ev.nextAttempt}` : ''].filter(Boolean).join(' · ');
  } else if (name === 'resync') detail = 'events were pruned; lists reloaded';
  else if (name.startsWith('pipeline:') && ev.actor) detail = `by ${ev.actor}`;
  else if (name.startsWith('workflow:')) detail = [ev.status, ev.rerunOf ? `re-run of ${shortId(ev.rerunOf)}` : ''].filter(Boolean).join(' · ');
  const target = ev.jobId || ev.runId;
  return h('li', { class: `feed-item ev-${kind}`, dataset: { event: name, id: id ?? '' } },
    h('time', { class: 'feed-time', datetime: ev.timestamp || '', title: stamp(ev.timestamp || new Date().toISOString()) }, clock(ev.timestamp || new Date().toISOString())),
    h('span', { class: 'feed-name', title: name }, FEED_TEXT[name] || name),
    h('span', { class: 'feed-what' },
      ev.pipelineId || ev.workflowId ? h('b', {}, ev.pipelineId || ev.workflowId) : null, ' ',
      ev.runId ? runLink(ev.runId, shortId(target), `Run ${ev.runId} (${name})`) : null,
      ev.workflowRunId ? wfRunLink(ev.workflowRunId, shortId(ev.workflowRunId), `Workflow run ${ev.workflowRunId} (${name})`) : null),
    detail ? h('span', { class: 'feed-detail' }, detail) : null);
}

// ───────────────────────── run page ─────────────────────────

function showRun(id, job) {
  const same = state.route.name === 'run' && state.route.id === id;
  stopNodes();
  leaveWorkflows();
  state.route = { name: 'run', id };
  markNav('run');
  $('dashboard-view').hidden = true;
  $('nodes-view').hidden = true;
  const view = $('run-view');
  view.hidden = false;
  if (!same) {
    if (state.logViewer) state.logViewer.close();
    state.run = null;
    state.logJob = job || null;
    state.abortMsg = { text: '', cls: '' };
    state.runBars.clear();
    const logRoot = h('section', { class: 'card log-card', 'aria-label': 'Log viewer' });
    replace(view,
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: state.dashboardHash || '#/' }, '← All runs')),
      h('section', { id: 'run-head', class: 'card run-head', 'aria-label': 'Run summary' }, h('p', { class: 'muted' }, 'Loading…')),
      h('section', { id: 'run-jobs', class: 'card', 'aria-label': 'Shards' }),
      h('section', { id: 'run-final', class: 'card', 'aria-label': 'Finalizer', hidden: true }),
      h('section', { id: 'run-deliveries', class: 'card', 'aria-label': 'Webhook deliveries', hidden: true }),
      h('section', { id: 'run-job', class: 'card job-card', 'aria-label': 'Selected job', hidden: true }),
      logRoot);
    state.logViewer = new LogViewer(logRoot, () => showLogin());
    document.title = `run ${shortId(id)} · runyard`;
  } else if (job && job !== state.logJob && state.run) {
    const j = allJobs(state.run).find((x) => x.id === job);
    if (j) openLog(j);
  }
  loadRun();
}

function allJobs(run) {
  return [...(run.jobs || []), ...(run.finalizer ? [run.finalizer] : [])];
}

async function loadRun() {
  if (state.route.name !== 'run') return;
  const id = state.route.id;
  const seq = ++state.runSeq;
  try {
    const run = await api(`/api/runs/${enc(id)}`);
    if (seq !== state.runSeq || state.route.name !== 'run' || state.route.id !== id) return;
    state.run = run;
    renderRun(run);
    banner(null);
  } catch (e) {
    if (seq !== state.runSeq || e.status === 401) return;
    if (e.status === 404 || e.status === 400) {
      replace($('run-head'), h('h1', {}, 'Run not found'), h('p', { class: 'muted' }, e.message));
    } else {
      banner(`Could not load run: ${e.message}`);
    }
  }
}
const refreshRun = throttle(loadRun, 400);

function renderRun(run) {
  const terminal = TERMINAL.has(run.status);
  const abortMsg = h('p', { id: 'abort-result', class: `abort-result ${state.abortMsg.cls}`, role: 'status', 'aria-live': 'polite' }, state.abortMsg.text);
  const abortBtn = terminal ? null : h('button', { type: 'button', class: 'btn btn-danger', onclick: () => confirmAbort(run) }, 'Abort run');
  // A finished run can be re-run: every shard, or (when some failed or were aborted) only those.
  const redoable = (run.jobs || []).some((j) => j.status === 'failed' || j.status === 'aborted');
  const rerunBtns = !run.finishedAt ? [] : [
    h('button', { type: 'button', class: 'btn rerun-btn', title: 'A new run with the same parameters and shard count', onclick: () => rerun(run, false) }, 'Re-run'),
    redoable ? h('button', { type: 'button', class: 'btn rerun-btn', title: 'A new run of the failed and aborted shards; completed ones keep their outcome', onclick: () => rerun(run, true) }, 'Re-run failed') : null,
  ];
  const params = Object.entries(run.parameters || {});
  const took = between(run.startedAt, run.finishedAt);
  replace($('run-head'),
    h('div', { class: 'run-title' },
      h('h1', {}, 'Run ', h('span', { class: 'mono', title: run.runId }, shortId(run.runId))),
      h('span', { 'aria-label': 'Run status', class: 'run-status' }, pill(run.status)),
      h('span', { class: 'spacer' }),
      rerunBtns,
      abortBtn),
    abortMsg,
    h('dl', { class: 'meta' },
      meta('Pipeline', run.pipelineId),
      run.workflowRunId ? meta('Workflow', workflowRef(run.workflowRunId, run.workflowStep)) : null,
      meta('Run id', h('code', {}, run.runId)),
      meta('Triggered by', `${run.triggeredBy}${run.actor ? ` (${run.actor})` : ''}`),
      run.abortedBy ? meta('Aborted by', `${run.abortedBy.via}${run.abortedBy.actor ? ` (${run.abortedBy.actor})` : ''} on node ${shortId(run.abortedBy.node || '')}`) : null,
      run.rerunOf ? meta('Re-run of', runLink(run.rerunOf, shortId(run.rerunOf), `Open run ${run.rerunOf}`)) : null,
      (run.after || []).length ? meta(`After (${run.afterWhen || 'success'})`, run.after.map((id) => runLink(id, shortId(id), `Open run ${id}`))) : null,
      run.scheduledFor ? meta('Scheduled for', timeEl(run.scheduledFor, stamp(run.scheduledFor))) : null,
      run.runAt ? meta('Not before', timeEl(run.runAt, stamp(run.runAt))) : null,
      run.priority ? meta('Priority', String(run.priority)) : null,
      meta('Parameters', params.length ? params.map(([k, v]) => h('code', { class: 'param' }, `${k}=${v}`)) : h('span', { class: 'muted' }, 'none')),
      meta('Shards', `${run.shardsDone}/${run.shardCount} done${run.shardsStatus ? ` (${run.shardsStatus})` : ''}`),
      meta('Created', timeEl(run.createdAt, stamp(run.createdAt))),
      meta('Started', timeEl(run.startedAt, stamp(run.startedAt))),
      meta('Finished', timeEl(run.finishedAt, stamp(run.finishedAt))),
      meta('Duration', took === null ? '—' : duration(took)),
      run.callbackUrl ? meta('Webhook', h('code', {}, run.callbackUrl)) : null));

  state.runBars.clear();
  const attempts = run.attempts || {};
  replace($('run-jobs'),
    h('div', { class: 'card-head' }, h('h2', {}, 'Shards'), h('span', { class: 'muted small' }, `${(run.jobs || []).length} job${(run.jobs || []).length === 1 ? '' : 's'}`)),
    jobsTable(run.jobs || [], 'Shards', attempts));

  const fin = $('run-final');
  if (run.finalizer) {
    fin.hidden = false;
    replace(fin, h('div', { class: 'card-head' }, h('h2', {}, 'Finalizer')), jobsTable([run.finalizer], 'Finalizer', attempts),
      resultBlock(run.finalizer, 'Finalizer result'));
  } else {
    fin.hidden = true;
  }

  const del = $('run-deliveries');
  if (run.deliveries && run.deliveries.length) {
    del.hidden = false;
    replace(del, h('div', { class: 'card-head' }, h('h2', {}, 'Webhook deliveries')), deliveriesTable(run.deliveries));
  } else {
    del.hidden = true;
  }

  // The log viewer: keep the chosen job (the URL's, else the user's); at first, the first
  // running (else started) job.
  const all = allJobs(run);
  const chosen = state.logJob && all.find((j) => j.id === state.logJob);
  if (chosen && state.logViewer && state.logViewer.jobId !== chosen.id) {
    openLog(chosen, false);
  } else if (!chosen && all.length) {
    const pick = all.find((j) => j.status === 'running') || all.find((j) => j.startedAt) || all[0];
    openLog(pick, false);
  }
  renderJobPanel(run);
  markLogButtons();
}

/** The selected job: its attempt history and result (above its log). */
function renderJobPanel(run) {
  const panel = $('run-job');
  const j = allJobs(run).find((x) => x.id === state.logJob);
  if (!panel || !j) { if (panel) panel.hidden = true; return; }
  const list = (run.attempts || {})[j.id] || [];
  if (state.logViewer) state.logViewer.setAttempts(list);
  panel.hidden = false;
  replace(panel,
    h('div', { class: 'card-head' },
      h('h2', {}, `Attempts · ${jobLabel(j)}`, ' ', h('span', { class: 'mono small muted', title: j.id }, shortId(j.id))),
      h('span', { class: 'muted small' }, `${list.length} execution${list.length === 1 ? '' : 's'} · attempt ${j.attempt} of ${j.maxAttempts}`)),
    list.length ? attemptsTable(list, jobLabel(j)) : h('p', { class: 'small muted' }, j.status === 'queued' ? 'Queued: not started yet.' : 'No executions recorded.'),
    resultBlock(j, `Result of ${jobLabel(j)}`));
}

function attemptsTable(list, label) {
  return h('div', { class: 'table-wrap' }, h('table', { class: 'jobs attempts', 'aria-label': `Attempts of ${label}` },
    h('thead', {}, h('tr', {}, ['Attempt', 'Outcome', 'Reason', 'Exit', 'PID', 'Started', 'Finished', 'Duration', 'Detail'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, list.map((a) => h('tr', { dataset: { claimSeq: a.claimSeq ?? '' } },
      h('th', { scope: 'row' }, `#${a.attempt}`),
      h('td', {}, pill(a.outcome)),
      h('td', { class: 'small' }, a.reason && !(a.outcome === 'completed' && a.reason === 'exit_code') ? a.reason : '—'),
      h('td', { class: 'num' }, a.exitCode ?? '—'),
      h('td', { class: 'num mono small' }, a.pid ?? '—'),
      h('td', { class: 'small' }, timeEl(a.startedAt)),
      h('td', { class: 'small' }, timeEl(a.finishedAt)),
      h('td', { class: 'num small' }, a.durationMs === null || a.durationMs === undefined ? (a.outcome === 'running' ? duration(between(a.startedAt, null)) : '—') : duration(a.durationMs)),
      h('td', { class: 'small' }, [a.error, a.retryAt ? `retry at ${clock(a.retryAt)}` : null].filter(Boolean).join(' · ') || '—'))))));
}

function resultBlock(job, label) {
  if (job.result === null || job.result === undefined) {
    return h('div', { class: 'result-block' }, h('h3', {}, label), h('p', { class: 'small muted' }, TERMINAL.has(job.status) ? 'No result written.' : 'No result yet.'));
  }
  return h('div', { class: 'result-block' }, h('h3', {}, label),
    h('pre', { class: 'result', 'aria-label': label, tabindex: '0' }, JSON.stringify(job.result, null, 2)));
}

/** A job's attempts at a glance: one dot per execution, coloured by outcome. */
function attemptDots(list) {
  if (!list || !list.length) return null;
  return h('div', { class: 'dots', 'aria-label': `Attempts: ${list.map((a) => a.outcome).join(', ')}` },
    list.map((a) => h('span', { class: `dot dot-${a.outcome}`, title: `attempt ${a.attempt}: ${a.outcome}${a.exitCode !== null && a.exitCode !== undefined ? `, exit ${a.exitCode}` : ''}${a.reason && a.outcome !== 'completed' ? `, ${a.reason}` : ''}` })));
}

/** A job's result in one cell: test counts (`tests`, `failures`, `errors`, `skipped`, as
 *  JUnit reports them) as a pass/fail line; a small flat object as `key: value` pairs;
 *  anything else as JSON, shortened (the whole of it in the title and the result block). */
function resultSummary(result) {
  if (result === null || result === undefined) return '—';
  const full = JSON.stringify(result, null, 2);
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  if (result && typeof result === 'object' && !Array.isArray(result) && typeof result.tests === 'number') {
    const failed = num(result.failures) + num(result.errors);
    const skipped = num(result.skipped);
    const passed = Math.max(0, result.tests - failed - skipped);
    const parts = [`${passed} passed`];
    if (failed) parts.push(`${failed} failed`);
    if (skipped) parts.push(`${skipped} skipped`);
    return h('span', { class: `result-inline ${failed ? 'warn-text' : ''}`, title: full }, `${failed ? '✗' : '✓'} ${parts.join(' · ')}`);
  }
  const entries = result && typeof result === 'object' && !Array.isArray(result) ? Object.entries(result) : null;
  if (entries && entries.length <= 4 && entries.every(([, v]) => v === null || typeof v !== 'object')) {
    const text = entries.map(([k, v]) => `${k}: ${v}`).join(' · ');
    if (text.length <= 60) return h('span', { class: 'result-inline', title: full }, text);
  }
  const text = JSON.stringify(result);
  return h('code', { class: 'result-inline', title: full }, text.length > 60 ? `${text.slice(0, 57)}…` : text);
}

function meta(label, ...value) {
  return h('div', { class: 'meta-item' }, h('dt', {}, label), h('dd', {}, ...value));
}

function jobsTable(jobs, label, attempts) {
  const rows = jobs.map((j) => {
    const bar = progressBar(`${jobLabel(j)} progress`, j.progress ?? 0, j.status);
    setProgress(bar, j.progress ?? 0, j.status, j.progressMessage);
    state.runBars.set(j.id, bar);
    const live = j.status === 'running' ? between(j.startedAt, null) : null;
    const took = j.durationMs ?? live;
    // A completed job's reason is always exit_code: noise.
    const reason = [j.status === 'completed' ? null : j.reason, j.error].filter(Boolean).join(': ');
    return h('tr', { dataset: { jobId: j.id } },
      h('th', { scope: 'row' }, jobLabel(j), h('div', { class: 'small muted mono', title: j.id }, shortId(j.id))),
      h('td', {}, pill(j.status), j.abortRequested && !TERMINAL.has(j.status) ? h('div', { class: 'small warn-text' }, 'abort requested') : null,
        j.unplaceable ? h('div', { class: 'small warn-text unplaceable', title: j.unplaceable }, 'unplaceable: ', j.unplaceable) : null,
        j.keptFrom ? h('div', { class: 'small muted' }, 'kept from ', runLink(j.keptFrom.split(':')[0], shortId(j.keptFrom), `Open the original run of ${j.keptFrom}`)) : null),
      h('td', { class: 'progress-cell' }, bar, j.progressMessage ? h('div', { class: 'small muted ellipsis', title: j.progressMessage }, j.progressMessage) : null),
      h('td', { class: 'num' }, `${j.attempt}/${j.maxAttempts}`, attemptDots((attempts || {})[j.id]), j.requeues ? h('div', { class: 'small muted' }, `${j.requeues} requeued`) : null),
      h('td', { class: 'mono small', title: j.node ? `node id ${j.node}` : '' }, j.nodeName || (j.node ? shortId(j.node) : '—')),
      h('td', { class: 'num mono small' }, j.pid ?? '—'),
      h('td', { class: 'num' }, j.exitCode ?? '—'),
      h('td', { class: 'small' }, reason || '—'),
      h('td', { class: 'small' }, timeEl(j.startedAt)),
      h('td', { class: 'small' }, timeEl(j.finishedAt)),
      h('td', { class: 'num small' }, took === null || took === undefined ? '—' : duration(took)),
      h('td', { class: 'num small', title: `stdout ${j.stdoutBytes} B, stderr ${j.stderrBytes} B${j.truncated ? ' (truncated)' : ''}` }, bytes((j.stdoutBytes || 0) + (j.stderrBytes || 0)), j.truncated ? ' ✂' : ''),
      h('td', { class: 'small result-cell' }, resultSummary(j.result)),
      h('td', {}, h('button', { type: 'button', class: 'btn btn-small log-btn', dataset: { jobId: j.id }, 'aria-label': `Show log of ${jobLabel(j)}`, onclick: () => openLog(j) }, 'Log')));
  });
  return h('div', { class: 'table-wrap' }, h('table', { class: 'jobs', 'aria-label': label },
    h('thead', {}, h('tr', {}, ['Job', 'Status', 'Progress', 'Attempt', 'Node', 'PID', 'Exit', 'Reason', 'Started', 'Finished', 'Duration', 'Output', 'Result', ''].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
}

function deliveriesTable(list) {
  return h('div', { class: 'table-wrap' }, h('table', { class: 'jobs', 'aria-label': 'Webhook deliveries' },
    h('thead', {}, h('tr', {}, ['Delivery', 'URL', 'Status', 'Attempts', 'Next attempt', 'Last answer'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, list.map((d) => {
      const last = (d.history || [])[d.history.length - 1];
      return h('tr', {},
        h('td', { class: 'mono small' }, d.id),
        h('td', { class: 'small ellipsis', title: d.url }, d.url),
        h('td', {}, pill(d.status)),
        h('td', { class: 'num' }, d.attempts),
        h('td', { class: 'small' }, timeEl(d.nextAttemptAt)),
        h('td', { class: 'small' }, last ? [last.statusCode ? `HTTP ${last.statusCode}` : '', last.error || '', ` (${duration(last.durationMs)})`].filter(Boolean).join(' ') : '—'));
    }))));
}

/** Opens a job's attempts and log; `remember` puts it in the URL (replacing: no history entry). */
function openLog(job, remember = true) {
  if (!state.logViewer) return;
  state.logJob = job.id;
  state.logViewer.open(job.id, `${jobLabel(job)} (${shortId(job.id)})`);
  if (remember && state.route.name === 'run') {
    const next = `#/runs/${enc(state.route.id)}?job=${enc(job.id)}`;
    if (location.hash !== next) history.replaceState(history.state, '', next);
  }
  if (state.run) renderJobPanel(state.run);
  markLogButtons();
}

function markLogButtons() {
  for (const b of document.querySelectorAll('.log-btn')) {
    const on = b.dataset.jobId === state.logJob;
    b.classList.toggle('active', on);
    b.setAttribute('aria-pressed', on ? 'true' : 'false');
    const row = b.closest('tr');
    if (row) row.classList.toggle('selected', on);
  }
}

/** Re-runs a finished run (every shard, or only failed ones) and opens the new run. */
async function rerun(run, onlyFailed) {
  try {
    const r = await api(`/api/runs/${enc(run.runId)}/rerun`, { method: 'POST', body: onlyFailed ? { only: 'failed' } : {}, headers: { 'X-Runyard-Source': 'dashboard' } });
    location.hash = `#/runs/${enc(r.runId)}`;
  } catch (e) {
    setAbortMsg(`Could not re-run: ${e.status ? `${e.status}: ` : ''}${e.message}`, 'error');
  }
}

/** The abort answer, kept across re-renders of the run page. */
function setAbortMsg(text, cls) {
  state.abortMsg = { text, cls: cls || '' };
  const el = document.getElementById('abort-result');
  if (el) {
    el.textContent = text;
    el.className = `abort-result ${cls || ''}`;
  }
}

/** What an abort answer means, counted as it is: queued jobs never run; running ones
 *  were told to stop and end `aborted` unless they finish first. */
function abortSummary(r) {
  const plural = (n, one) => `${n} ${one}${n === 1 ? '' : 's'}`;
  const queued = r.queuedAborted ?? 0;
  const running = r.runningStopping ?? 0;
  if (queued + running === 0) return 'Already aborted: nothing left to stop.';
  const parts = [];
  if (queued) parts.push(`${plural(queued, 'queued job')} aborted`);
  if (running) parts.push(`${plural(running, 'running job')} told to stop (a job that finishes first keeps its result)`);
  return `Aborted: ${parts.join('; ')}.`;
}

function confirmAbort(run) {
  const dlg = $('confirm-dialog');
  $('confirm-title').textContent = 'Abort run?';
  $('confirm-ok').textContent = 'Yes, abort';
  $('confirm-text').textContent = `Abort run ${run.runId} of ${run.pipelineId}? Queued shards are cancelled and running ones are stopped (SIGTERM, then SIGKILL).`;
  dlg.returnValue = '';
  dlg.addEventListener('close', async () => {
    if (dlg.returnValue !== 'confirm') return;
    setAbortMsg('Aborting…');
    try {
      const r = await api(`/api/runs/${enc(run.runId)}/abort`, { method: 'POST', headers: { 'X-Runyard-Source': 'dashboard' } });
      setAbortMsg(abortSummary(r), 'ok');
    } catch (e) {
      setAbortMsg(e.status === 409 ? `Already finished: ${e.message}` : `Abort failed: ${e.message}`, 'error');
    }
    refreshRun();
  }, { once: true });
  dlg.showModal();
}

/** The confirmation dialog with a title, text and OK button text: resolves true when confirmed. */
function confirmDialog(title, text, ok) {
  const dlg = $('confirm-dialog');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'confirm'), { once: true });
    dlg.showModal();
  });
}

// ───────────────────────── nodes page ─────────────────────────

function showNodes() {
  leaveRun();
  leaveWorkflows();
  state.route = { name: 'nodes' };
  markNav('nodes');
  $('dashboard-view').hidden = true;
  $('nodes-view').hidden = false;
  document.title = 'nodes · runyard';
  loadNodes();
  // Heartbeat ages move on their own: refresh while the page is shown.
  if (!state.nodesTimer) state.nodesTimer = setInterval(() => { if (!document.hidden) loadNodes(); }, 2000);
}

function stopNodes() {
  clearInterval(state.nodesTimer);
  state.nodesTimer = 0;
}

let nodesSeq = 0;
async function loadNodes() {
  if (state.route.name !== 'nodes') return;
  const seq = ++nodesSeq;
  try {
    const data = await api('/api/workers');
    if (seq !== nodesSeq || state.route.name !== 'nodes') return;
    const list = data.workers || [];
    renderNodes($('nodes'), list);
    $('nodes-count').textContent = `${list.length} live node${list.length === 1 ? '' : 's'}`;
    banner(null);
  } catch (e) {
    if (e.status !== 401) banner(`Could not load nodes: ${e.message}`);
  }
}
const refreshNodes = throttle(loadNodes, 500);

// ───────────────────────── boot ─────────────────────────

async function boot() {
  setUnauthorizedHandler(() => showLogin('Your session has ended; please log in again.'));
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', onLogout);
  $('filter-pipeline').addEventListener('change', onFilter);
  $('filter-status').addEventListener('change', onFilter);
  $('runs-filter').addEventListener('submit', onFilter);
  $('runs-search').addEventListener('search', onFilter); // the field's own clear button
  $('page-prev').addEventListener('click', () => { state.offset = Math.max(0, state.offset - PAGE); navigateList(); });
  $('page-next').addEventListener('click', () => { if (state.hasNext) { state.offset += PAGE; navigateList(); } });
  initWorkflows({ banner, confirm: confirmDialog });
  $('zone').textContent = zoneLabel();
  $('chart-legend').replaceWith(legend());
  try {
    const chosen = localStorage.getItem('runyard.stats.window');
    state.statsChosen = Boolean(chosen);
    state.statsWindow = chosen || '24h';
  } catch { /* private mode */ }
  if (![...$('stats-window').options].some((o) => o.value === state.statsWindow)) state.statsWindow = '24h';
  $('stats-window').value = state.statsWindow;
  $('stats-window').addEventListener('change', () => {
    state.statsWindow = $('stats-window').value;
    state.statsChosen = true;
    try { localStorage.setItem('runyard.stats.window', state.statsWindow); } catch { /* private mode */ }
    loadStats();
  });
  window.addEventListener('hashchange', route);
  // Times shown as "… ago" and running durations: refresh now and then.
  setInterval(() => {
    if (!state.started || document.hidden) return;
    if (state.route.name === 'dashboard') { refreshRuns(); refreshStats(); }
    else if (state.run && !TERMINAL.has(state.run.status)) refreshRun();
    else tickWorkflows();
  }, 15000);
  try {
    state.session = await getSession();
  } catch (e) {
    banner(`Could not reach the server: ${e.message}`);
    state.session = { authRequired: false, authenticated: true, actor: null };
  }
  if (state.session.authRequired && !state.session.authenticated) showLogin();
  else start();
}

boot();
