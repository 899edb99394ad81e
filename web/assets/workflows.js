// Workflows: the configured ones with their steps and a trigger form each, the workflow
// runs (filtered by workflow and status, paged, newest first), and a workflow run's page
// (`#/workflow-runs/ID`): summary, abort and re-run, its graph (wfgraph.js) and a table
// of its steps, each linked to its run. Live: the SSE events of app.js reach
// `workflowEvent`, which re-fetches (throttled) what they concern.
//
// URLs: `#/workflows?workflow=&status=&page=` (the list) and `#/workflow-runs/ID`.

import { h, replace, shortId, pill, duration, between, ago, stamp, timeEl, throttle, paramInputs } from './dom.js';
import { api, enc } from './api.js';
import { workflowGraph } from './wfgraph.js';

const PAGE = 50;
const ENDED = new Set(['completed', 'failed', 'aborted']);
const STEP_ENDED = new Set(['completed', 'failed', 'aborted', 'skipped']);
const $ = (id) => document.getElementById(id);

const wf = {
  ctx: { banner: () => {}, confirm: async () => false },
  view: null, // 'list' | 'run' while shown
  cards: new Map(), // workflow id → card
  filter: { workflow: '', status: '' },
  offset: 0,
  hasNext: false,
  listHash: '#/workflows', // where "← Workflow runs" leads
  listSeq: 0,
  listRuns: new Set(), // the step run ids of the rows shown
  runId: null,
  run: null,
  runSeq: 0,
  shown: '', // the JSON last drawn on the run page
  msg: { text: '', cls: '' },
  names: new Map(), // workflow run id → workflow id (for links from a step's run)
};

/** A link to a workflow run. */
export function wfRunLink(id, text, label) {
  return h('a', { href: `#/workflow-runs/${enc(id)}`, title: id, 'aria-label': label || `Workflow run ${id}`, class: 'mono' }, text || shortId(id));
}

/** "STEP of WORKFLOW SHORTID" for a step's run page (the workflow's name fetched once). */
export function workflowRef(workflowRunId, step) {
  const link = wfRunLink(workflowRunId, shortId(workflowRunId), `Open workflow run ${workflowRunId}`);
  const name = wf.names.get(workflowRunId);
  const label = (n) => { link.textContent = `${n} · ${shortId(workflowRunId)}`; };
  if (typeof name === 'string') label(name);
  else if (!name) {
    const p = api(`/api/workflow-runs/${enc(workflowRunId)}`).then((r) => { wf.names.set(workflowRunId, r.workflowId); return r.workflowId; })
      .catch(() => { wf.names.delete(workflowRunId); return null; });
    wf.names.set(workflowRunId, p);
    p.then((n) => { if (n) label(n); });
  } else name.then((n) => { if (n) label(n); });
  return h('span', { class: 'wf-ref' }, h('b', {}, step || '?'), ' of ', link);
}

/** ctx: {banner(message), confirm(title, text, ok) → Promise<boolean>}. Binds the list's controls. */
export function initWorkflows(ctx) {
  wf.ctx = ctx;
  const onFilter = (ev) => {
    if (ev) ev.preventDefault();
    wf.filter = { workflow: $('wf-filter-workflow').value, status: $('wf-filter-status').value };
    wf.offset = 0;
    navigateList();
  };
  $('wf-filter-workflow').addEventListener('change', onFilter);
  $('wf-filter-status').addEventListener('change', onFilter);
  $('wfruns-filter').addEventListener('submit', onFilter);
  $('wf-page-prev').addEventListener('click', () => { wf.offset = Math.max(0, wf.offset - PAGE); navigateList(); });
  $('wf-page-next').addEventListener('click', () => { if (wf.hasNext) { wf.offset += PAGE; navigateList(); } });
}

function listHash(f, offset) {
  const p = new URLSearchParams();
  if (f.workflow) p.set('workflow', f.workflow);
  if (f.status) p.set('status', f.status);
  if (offset) p.set('page', String(Math.floor(offset / PAGE) + 1));
  const q = p.toString();
  return q ? `#/workflows?${q}` : '#/workflows';
}

function navigateList() {
  const next = listHash(wf.filter, wf.offset);
  if (location.hash === next) loadList(); else location.hash = next;
}

/** Hides the workflow views (another view is shown). */
export function leaveWorkflows() {
  wf.view = null;
  wf.run = null;
  wf.runId = null;
  wf.shown = '';
  $('workflows-view').hidden = true;
  $('wfrun-view').hidden = true;
  $('wfrun-view').replaceChildren();
}

// ───────────────────────── the list ─────────────────────────

export function showWorkflows(params) {
  leaveWorkflows();
  wf.view = 'list';
  const page = Math.max(1, Math.min(2001, Number.parseInt(params.get('page') || '1', 10) || 1));
  wf.filter = { workflow: params.get('workflow') || '', status: params.get('status') || '' };
  wf.offset = (page - 1) * PAGE;
  wf.listHash = listHash(wf.filter, wf.offset);
  syncFilter();
  $('wf-filter-status').value = wf.filter.status;
  $('workflows-view').hidden = false;
  document.title = 'workflows · runyard';
  loadWorkflows();
  loadList();
}

function syncFilter() {
  const sel = $('wf-filter-workflow');
  const keep = wf.filter.workflow;
  if (keep && ![...sel.options].some((o) => o.value === keep)) sel.append(h('option', { value: keep }, keep));
  sel.value = keep;
}

async function loadWorkflows() {
  try {
    const data = await api('/api/workflows');
    renderWorkflows(data.workflows || []);
  } catch (e) {
    if (e.status !== 401) wf.ctx.banner(`Could not load workflows: ${e.message}`);
  }
}

function renderWorkflows(list) {
  const ids = list.map((w) => w.id).join('\n');
  if (ids === [...wf.cards.keys()].join('\n')) return; // keep what is typed in the forms
  wf.cards.clear();
  for (const w of list) wf.cards.set(w.id, workflowCard(w));
  replace($('workflows'), list.length ? [...wf.cards.values()] : h('p', { class: 'empty' }, 'No workflows configured.'));
  $('workflows-count').textContent = `${list.length} workflow${list.length === 1 ? '' : 's'}`;
  const sel = $('wf-filter-workflow');
  replace(sel, h('option', { value: '' }, 'All workflows'), list.map((w) => h('option', { value: w.id }, w.id)));
  syncFilter();
}

function workflowCard(w) {
  const { fields, values } = paramInputs(`wfparam-${w.id}`, w.params);
  const result = h('div', { class: 'trigger-result', role: 'status', 'aria-live': 'polite' });
  const button = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Trigger');
  const form = h('form', { class: 'trigger', 'aria-label': `Trigger workflow ${w.id}` },
    fields, h('div', { class: 'trigger-actions' }, button), result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    result.className = 'trigger-result';
    result.removeAttribute('role');
    result.textContent = 'Queuing…';
    try {
      const r = await api(`/api/workflows/${enc(w.id)}/trigger`, { method: 'POST', body: { parameters: values() }, headers: { 'X-Runyard-Source': 'dashboard' } });
      wf.names.set(r.workflowRunId, r.workflowId);
      replace(result, r.idempotentReplay ? 'Existing workflow run ' : 'Queued workflow run ', wfRunLink(r.workflowRunId, shortId(r.workflowRunId), `Open workflow run ${r.workflowRunId}`));
      result.className = 'trigger-result ok';
      result.dataset.workflowRunId = r.workflowRunId;
      refreshList();
    } catch (e) {
      result.className = 'trigger-result error';
      result.setAttribute('role', 'alert');
      result.textContent = e.status ? `${e.status}: ${e.message}` : e.message;
    } finally {
      button.disabled = false;
    }
  });
  const steps = h('ol', { class: 'wf-step-list', 'aria-label': `Steps of ${w.id}` }, (w.steps || []).map((st) => h('li', { dataset: { step: st.name } },
    h('b', {}, st.name), ' ', h('span', { class: 'muted' }, st.pipelineId),
    (st.needs || []).length ? h('span', { class: 'small muted' }, ` ← ${st.needs.join(', ')}${st.when && st.when !== 'success' ? ` (${st.when})` : ''}`) : null)));
  return h('article', { class: 'pipeline workflow', 'aria-label': `Workflow ${w.id}` },
    h('div', { class: 'p-head' }, h('h3', {}, h('a', { href: listHash({ workflow: w.id, status: '' }, 0), title: `Runs of ${w.id}` }, w.id)),
      h('span', { class: 'spacer' }), h('span', { class: 'small muted' }, `${(w.steps || []).length} steps`)),
    steps, form);
}

async function loadList() {
  if (wf.view !== 'list') return;
  const seq = ++wf.listSeq;
  const q = new URLSearchParams({ limit: String(PAGE + 1), offset: String(wf.offset) });
  if (wf.filter.workflow) q.set('workflow', wf.filter.workflow);
  if (wf.filter.status) q.set('status', wf.filter.status);
  try {
    const data = await api(`/api/workflow-runs?${q}`);
    if (seq !== wf.listSeq || wf.view !== 'list') return;
    const runs = data.workflowRuns || [];
    if (runs.length === 0 && wf.offset > 0) {
      wf.offset = Math.max(0, wf.offset - PAGE);
      navigateList();
      return;
    }
    wf.hasNext = runs.length > PAGE;
    renderList(runs.slice(0, PAGE));
    wf.ctx.banner(null);
  } catch (e) {
    if (seq !== wf.listSeq || e.status === 401) return;
    wf.ctx.banner(`Could not load workflow runs: ${e.message}`);
  }
}
const refreshList = throttle(loadList, 1000);

/** One dot per step, coloured by its run's status, and how many completed. */
function stepDots(steps) {
  const list = steps || [];
  const done = list.filter((st) => st.status === 'completed').length;
  return h('span', { class: 'wf-dots', 'aria-label': `Steps: ${list.map((st) => `${st.name} ${st.status || 'unknown'}`).join(', ')}` },
    list.map((st) => h('span', { class: `wf-dot st-${String(st.status || 'unknown').replace(/[^a-z_]/g, '')}`, title: `${st.name} (${st.pipelineId}): ${st.status || 'unknown'}` })),
    h('span', { class: 'small muted' }, ` ${done}/${list.length}`));
}

function renderList(runs) {
  wf.listRuns = new Set(runs.flatMap((r) => (r.steps || []).map((st) => st.runId)));
  for (const r of runs) wf.names.set(r.workflowRunId, r.workflowId);
  $('wfruns-body').replaceChildren(...runs.map((r) => {
    const took = between(r.createdAt, r.finishedAt);
    return h('tr', { dataset: { workflowRunId: r.workflowRunId } },
      h('td', {}, wfRunLink(r.workflowRunId)),
      h('td', {}, r.workflowId, r.rerunOf ? h('span', { class: 'badge', title: `re-run of ${r.rerunOf}` }, 're-run') : null),
      h('td', {}, pill(r.status)),
      h('td', {}, stepDots(r.steps)),
      h('td', { class: 'small', title: stamp(r.createdAt) }, ago(r.createdAt), h('span', { class: 'muted' }, ` · ${r.triggeredBy}${r.actor ? ` (${r.actor})` : ''}`)),
      h('td', { class: 'small num' }, took === null ? '' : duration(took)));
  }));
  $('wfruns-empty').hidden = runs.length > 0;
  $('wf-page-info').textContent = runs.length ? `${wf.offset + 1}–${wf.offset + runs.length}` : '';
  $('wf-page-prev').disabled = wf.offset === 0;
  $('wf-page-next').disabled = !wf.hasNext;
}

// ───────────────────────── a workflow run ─────────────────────────

export function showWorkflowRun(id) {
  const same = wf.view === 'run' && wf.runId === id;
  if (!same) {
    leaveWorkflows();
    wf.view = 'run';
    wf.runId = id;
    wf.msg = { text: '', cls: '' };
    const view = $('wfrun-view');
    replace(view,
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: wf.listHash }, '← Workflow runs')),
      h('section', { id: 'wf-head', class: 'card run-head', 'aria-label': 'Workflow summary' }, h('p', { class: 'muted' }, 'Loading…')),
      h('section', { id: 'wf-graph', class: 'card', 'aria-label': 'Workflow graph' }),
      h('section', { id: 'wf-steps', class: 'card', 'aria-label': 'Workflow steps' }));
    view.hidden = false;
    document.title = `workflow run ${shortId(id)} · runyard`;
  }
  loadRun();
}

async function loadRun() {
  if (wf.view !== 'run') return;
  const id = wf.runId;
  const seq = ++wf.runSeq;
  try {
    const run = await api(`/api/workflow-runs/${enc(id)}`);
    if (seq !== wf.runSeq || wf.view !== 'run' || wf.runId !== id) return;
    wf.run = run;
    wf.names.set(run.workflowRunId, run.workflowId);
    const json = JSON.stringify(run);
    if (json !== wf.shown) { wf.shown = json; renderRun(run); }
    wf.ctx.banner(null);
  } catch (e) {
    if (seq !== wf.runSeq || e.status === 401) return;
    if (e.status === 404 || e.status === 400) {
      replace($('wf-head'), h('h1', {}, 'Workflow run not found'), h('p', { class: 'muted' }, e.message));
    } else {
      wf.ctx.banner(`Could not load workflow run: ${e.message}`);
    }
  }
}
const refreshRun = throttle(loadRun, 400);

function meta(label, ...value) {
  return h('div', { class: 'meta-item' }, h('dt', {}, label), h('dd', {}, ...value));
}

function setMsg(text, cls) {
  wf.msg = { text, cls: cls || '' };
  const el = $('wf-action-result');
  if (el) { el.textContent = text; el.className = `abort-result ${cls || ''}`; }
}

async function abortRun(run) {
  const ok = await wf.ctx.confirm('Abort workflow run?', `Abort workflow run ${run.workflowRunId} of ${run.workflowId}? Every step run not ended is aborted: waiting and queued ones at once, running ones are stopped.`, 'Yes, abort');
  if (!ok) return;
  setMsg('Aborting…');
  try {
    const r = await api(`/api/workflow-runs/${enc(run.workflowRunId)}/abort`, { method: 'POST', headers: { 'X-Runyard-Source': 'dashboard' } });
    const n = (r.abortedRuns || []).length;
    setMsg(n ? `Aborted: ${n} step run${n === 1 ? '' : 's'} stopped.` : 'Already aborted: nothing left to stop.', 'ok');
  } catch (e) {
    setMsg(e.status === 409 ? `Already finished: ${e.message}` : `Abort failed: ${e.message}`, 'error');
  }
  refreshRun();
}

async function rerun(run, onlyFailed) {
  try {
    const r = await api(`/api/workflow-runs/${enc(run.workflowRunId)}/rerun`, { method: 'POST', body: onlyFailed ? { only: 'failed' } : {}, headers: { 'X-Runyard-Source': 'dashboard' } });
    wf.names.set(r.workflowRunId, r.workflowId);
    location.hash = `#/workflow-runs/${enc(r.workflowRunId)}`;
  } catch (e) {
    setMsg(`Could not re-run: ${e.status ? `${e.status}: ` : ''}${e.message}`, 'error');
  }
}

function renderRun(run) {
  const steps = run.steps || [];
  const ended = ENDED.has(run.status);
  const redoable = steps.some((st) => st.status !== 'completed');
  const buttons = ended ? [
    redoable ? h('button', { type: 'button', class: 'btn rerun-btn', title: 'A new workflow run of the steps that did not complete; completed steps are kept', onclick: () => rerun(run, true) }, 'Re-run failed steps') : null,
    h('button', { type: 'button', class: 'btn rerun-btn', title: 'A new workflow run of every step, with the same parameters', onclick: () => rerun(run, false) }, 'Re-run all steps'),
  ] : [h('button', { type: 'button', class: 'btn btn-danger', onclick: () => abortRun(run) }, 'Abort workflow run')];
  const params = Object.entries(run.parameters || {});
  const counts = {};
  for (const st of steps) counts[st.status || 'unknown'] = (counts[st.status || 'unknown'] || 0) + 1;
  const took = between(run.createdAt, run.finishedAt);
  const by = run.abortedBy;
  replace($('wf-head'),
    h('div', { class: 'run-title' },
      h('h1', {}, 'Workflow run ', h('span', { class: 'mono', title: run.workflowRunId }, shortId(run.workflowRunId))),
      h('span', { 'aria-label': 'Workflow status', class: 'run-status' }, pill(run.status)),
      h('span', { class: 'spacer' }),
      buttons),
    h('p', { id: 'wf-action-result', class: `abort-result ${wf.msg.cls}`, role: 'status', 'aria-live': 'polite' }, wf.msg.text),
    h('dl', { class: 'meta' },
      meta('Workflow', h('a', { href: listHash({ workflow: run.workflowId, status: '' }, 0), title: `Runs of ${run.workflowId}` }, run.workflowId)),
      meta('Workflow run id', h('code', {}, run.workflowRunId)),
      meta('Triggered by', `${run.triggeredBy}${run.actor ? ` (${run.actor})` : ''}`),
      by ? meta('Aborted by', `${by.via || ''}${by.actor ? ` (${by.actor})` : ''}${by.nodeName || by.node ? ` on node ${by.nodeName || shortId(by.node)}` : ''}`) : null,
      run.rerunOf ? meta('Re-run of', wfRunLink(run.rerunOf, shortId(run.rerunOf), `Open workflow run ${run.rerunOf}`)) : null,
      meta('Parameters', params.length ? params.map(([k, v]) => h('code', { class: 'param' }, `${k}=${v}`)) : h('span', { class: 'muted' }, 'none')),
      meta('Steps', Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(' · ') || 'none'),
      meta('Created', timeEl(run.createdAt, stamp(run.createdAt))),
      meta('Finished', timeEl(run.finishedAt, stamp(run.finishedAt))),
      meta('Duration', took === null ? '—' : duration(took))));

  replace($('wf-graph'),
    h('div', { class: 'card-head' }, h('h2', {}, 'Graph'),
      h('span', { class: 'small muted' }, 'a step runs after the steps it needs; click a step for its run')),
    h('div', { class: 'wf-graph-wrap' }, workflowGraph(steps, `Graph of workflow run ${shortId(run.workflowRunId)}`)));

  replace($('wf-steps'),
    h('div', { class: 'card-head' }, h('h2', {}, 'Steps'), h('span', { class: 'muted small' }, `${steps.length} step${steps.length === 1 ? '' : 's'}, needs first`)),
    h('div', { class: 'table-wrap' }, h('table', { class: 'jobs wf-steps', 'aria-label': 'Steps' },
      h('thead', {}, h('tr', {}, ['Step', 'Pipeline', 'After', 'Status', 'Shards', 'Run', 'Started', 'Finished', 'Duration'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, steps.map((st) => {
        const t = between(st.startedAt, st.finishedAt);
        return h('tr', { dataset: { step: st.name } },
          h('th', { scope: 'row' }, st.name, st.kept ? h('span', { class: 'badge wf-kept-badge', title: 'Kept from the workflow run this one re-runs' }, 'kept') : null),
          h('td', {}, st.pipelineId),
          h('td', { class: 'small' }, (st.needs || []).length ? `${st.needs.join(', ')}${st.when && st.when !== 'success' ? ` (${st.when})` : ''}` : '—'),
          h('td', {}, pill(st.status || 'unknown')),
          h('td', { class: 'num' }, st.shardCount ? `${st.shardsDone}/${st.shardCount}` : '—'),
          h('td', { class: 'mono small' }, h('a', { href: `#/runs/${enc(st.runId)}`, title: st.runId, 'aria-label': `Run of step ${st.name}` }, shortId(st.runId))),
          h('td', { class: 'small' }, timeEl(st.startedAt)),
          h('td', { class: 'small' }, timeEl(st.finishedAt)),
          h('td', { class: 'num small' }, t === null || (!st.finishedAt && STEP_ENDED.has(st.status)) ? '—' : duration(t)));
      })))));
}

// ───────────────────────── live ─────────────────────────

/** An SSE event (app.js hands over every one); re-fetches what it concerns. */
export function workflowEvent(name, ev) {
  if (!wf.view || name === 'job:progress') return;
  const isWorkflow = name.startsWith('workflow:');
  if (wf.view === 'list') {
    if (isWorkflow || name.startsWith('run:') || (ev.runId && wf.listRuns.has(ev.runId))) refreshList();
  } else if (wf.view === 'run' && wf.run) {
    if (isWorkflow ? ev.workflowRunId === wf.run.workflowRunId : (ev.runId && (wf.run.steps || []).some((st) => st.runId === ev.runId))) refreshRun();
  }
}

/** Everything shown again (after a resync). */
export function reloadWorkflows() {
  if (wf.view === 'list') { loadWorkflows(); loadList(); } else if (wf.view === 'run') loadRun();
}

/** Every 15 s: times shown as "… ago", and a workflow run not ended. */
export function tickWorkflows() {
  if (wf.view === 'list') refreshList();
  else if (wf.view === 'run' && wf.run && !ENDED.has(wf.run.status)) refreshRun();
}
