// A workflow run's graph as inline SVG: one box per step, in columns by depth (a step
// with no needs is in the first column; otherwise one column right of its deepest
// need), joined by arrows from each need to the step it gates (labelled with `when`
// unless it is `success`). Each box is a link to its step's run and is coloured by
// its run's status through classes only (the stylesheet's status colours; no inline
// style, as the page's CSP wants); it shows the step name, its pipeline, the status,
// shards done as a small bar, and a "kept" mark for a step kept from the workflow
// run re-run.

import { enc } from './api.js';

const SVG = 'http://www.w3.org/2000/svg';
const BOX_W = 190;
const BOX_H = 78;
const COL_GAP = 78;
const ROW_GAP = 20;
const PAD = 14;

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined && v !== false) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const cls = (v) => String(v || 'unknown').replace(/[^a-z_]/g, '');

/** Shortens text to `max` characters (an ellipsis marks the cut). */
function fit(text, max) {
  const t = String(text ?? '');
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

/**
 * Columns and rows of steps (`[{name, needs}]`, needs first): depth is 0 without needs,
 * else 1 + the deepest need's; within a column steps are ordered by where their needs
 * sit (fewer crossing edges), then as given. Returns Map name → {col, row} and the
 * column sizes.
 */
export function layout(steps) {
  const byName = new Map(steps.map((st) => [st.name, st]));
  const depth = new Map();
  const depthOf = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    const st = byName.get(name);
    if (!st || seen.has(name)) return 0; // an unknown need or a cycle: the API rules both out
    seen.add(name);
    const needs = (st.needs || []).filter((n) => byName.has(n));
    const d = needs.length ? 1 + Math.max(...needs.map((n) => depthOf(n, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  const cols = [];
  steps.forEach((st, i) => {
    const d = depthOf(st.name);
    (cols[d] = cols[d] || []).push({ st, i });
  });
  const pos = new Map();
  cols.forEach((col, c) => {
    if (c > 0) {
      const centre = ({ st, i }) => {
        const rows = (st.needs || []).map((n) => pos.get(n)).filter(Boolean).map((p) => p.y);
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : i;
      };
      col.sort((a, b) => centre(a) - centre(b) || a.i - b.i);
    }
    col.forEach(({ st }, r) => pos.set(st.name, { col: c, row: r, y: r - (col.length - 1) / 2 }));
  });
  return { pos, sizes: cols.map((c) => (c ? c.length : 0)) };
}

/** The shards line of a step: `2/3 shards`, or nothing before its run has them. */
function shardsText(st) {
  if (!st.shardCount) return '';
  return `${st.shardsDone}/${st.shardCount} shard${st.shardCount === 1 ? '' : 's'}`;
}

/** A step's box: a link to its run. */
function box(st, x, y) {
  const status = st.status || 'unknown';
  const done = st.shardCount ? Math.min(1, (st.shardsDone || 0) / st.shardCount) : 0;
  const barW = BOX_W - 20;
  const shards = shardsText(st);
  const label = `Step ${st.name} (${st.pipelineId}): ${status}${shards ? `, ${shards}` : ''}${st.kept ? ', kept' : ''}`;
  const tip = [
    `${st.name} · pipeline ${st.pipelineId}`,
    `status ${status}${shards ? ` · ${shards} done` : ''}`,
    (st.needs || []).length ? `after ${st.needs.join(', ')} (${st.when || 'success'})` : null,
    st.kept ? 'kept: its run is the one of the workflow run this re-runs' : null,
    `run ${st.runId}`,
  ].filter(Boolean).join('\n');
  return s('a', {
    class: `wf-node st-${cls(status)}${st.kept ? ' kept' : ''}`,
    href: `#/runs/${enc(st.runId)}`,
    'aria-label': label,
    'data-step': st.name,
    'data-status': status,
    'data-run-id': st.runId,
    transform: `translate(${x},${y})`,
  },
  s('title', {}, tip),
  s('rect', { class: 'wf-box', width: BOX_W, height: BOX_H, rx: 7 }),
  s('text', { class: 'wf-name', x: 10, y: 20 }, fit(st.name, 22)),
  st.kept ? s('text', { class: 'wf-kept', x: BOX_W - 10, y: 20, 'text-anchor': 'end' }, '⟲ kept') : null,
  s('text', { class: 'wf-pipe', x: 10, y: 37 }, fit(st.pipelineId, 26)),
  s('text', { class: 'wf-status', x: 10, y: 57 }, status),
  shards ? s('text', { class: 'wf-shards', x: BOX_W - 10, y: 57, 'text-anchor': 'end' }, shards) : null,
  s('rect', { class: 'wf-bar', x: 10, y: BOX_H - 13, width: barW, height: 5, rx: 2.5 }),
  s('rect', { class: 'wf-bar-fill', x: 10, y: BOX_H - 13, width: (barW * done).toFixed(1), height: 5, rx: 2.5 }));
}

/**
 * The graph of a workflow run's steps (the API's `steps`, needs first) as an <svg>
 * sized in pixels (its wrapper scrolls when it is wider than the screen).
 */
export function workflowGraph(steps, label) {
  const { pos, sizes } = layout(steps);
  const rows = Math.max(1, ...sizes);
  const width = PAD * 2 + sizes.length * BOX_W + Math.max(0, sizes.length - 1) * COL_GAP;
  const height = PAD * 2 + rows * BOX_H + (rows - 1) * ROW_GAP;
  const mid = (rows - 1) / 2;
  const at = (name) => {
    const p = pos.get(name);
    return { x: PAD + p.col * (BOX_W + COL_GAP), y: PAD + (mid + p.y) * (BOX_H + ROW_GAP) };
  };
  const edges = [];
  const labels = [];
  for (const st of steps) {
    const to = at(st.name);
    for (const need of st.needs || []) {
      if (!pos.has(need)) continue;
      const from = at(need);
      const x1 = from.x + BOX_W;
      const y1 = from.y + BOX_H / 2;
      const x2 = to.x - 2;
      const y2 = to.y + BOX_H / 2;
      const bend = Math.max(24, (x2 - x1) / 2);
      const when = st.when || 'success';
      edges.push(s('path', {
        class: `wf-edge when-${cls(when)}`,
        d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
        'marker-end': 'url(#wf-arrow)',
        'data-from': need,
        'data-to': st.name,
        'data-when': when,
      }, s('title', {}, `${st.name} runs after ${need}${when === 'success' ? ' succeeds' : when === 'failure' ? ' fails' : ' ends, whatever happened'}`)));
      if (when !== 'success') {
        // Above the curve's midpoint, where edges into one step are still apart.
        const bx = (x1 + x2) / 2;
        const by = (y1 + y2) / 2;
        labels.push(s('text', { class: `wf-edge-label when-${cls(when)}`, x: bx.toFixed(1), y: (by - 5).toFixed(1), 'text-anchor': 'middle', 'data-from': need, 'data-to': st.name }, when));
      }
    }
  }
  const boxes = steps.map((st) => {
    const p = at(st.name);
    return box(st, p.x, p.y);
  });
  return s('svg', {
    class: 'wf-graph',
    role: 'group',
    'aria-label': label || 'Workflow graph',
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
  },
  s('defs', {}, s('marker', { id: 'wf-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    s('path', { class: 'wf-arrow', d: 'M0,0 L10,5 L0,10 z' }))),
  s('g', { class: 'wf-edges' }, edges),
  s('g', { class: 'wf-nodes' }, boxes),
  s('g', { class: 'wf-labels' }, labels));
}
