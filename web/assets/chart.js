// Per-pipeline totals and a small chart of finished runs over time (`GET /api/stats`):
// stacked bars per time bucket (completed, failed, aborted) and a line of the mean run
// duration. Drawn as SVG with classes only (the stylesheet colours it; no inline style).
// Every bucket carries its figures as data attributes and a <title> tooltip.

import { h, duration, clock, stamp } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const BAR_W = 10; // viewBox units per bucket
const HEIGHT = 40;
const TOP = 4; // headroom

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

const WINDOW_TEXT = { '1h': 'last hour', '6h': 'last 6 h', '24h': 'last 24 h', '7d': 'last 7 days' };
const AGO_TEXT = { '1h': '1 h ago', '6h': '6 h ago', '24h': '24 h ago', '7d': '7 d ago' };

/** The chart's key, shown once above the pipelines. */
export function legend() {
  return h('div', { class: 'chart-legend small muted', 'aria-hidden': 'true' },
    h('span', { class: 'key key-ok' }, 'completed'), h('span', { class: 'key key-bad' }, 'failed'),
    h('span', { class: 'key key-abort' }, 'aborted'), h('span', { class: 'key key-dur' }, 'mean duration'));
}

/** The totals and chart of one pipeline (`p`: one entry of `/api/stats` `pipelines`). */
export function statsBlock(p, meta) {
  const buckets = p.buckets || [];
  const total = (b) => b.completed + b.failed + b.aborted;
  const maxRuns = Math.max(1, ...buckets.map(total));
  const maxAvg = Math.max(1, ...buckets.map((b) => b.avgDurationMs || 0));
  const span = HEIGHT - TOP;
  const groups = buckets.map((b, i) => {
    const x = i * BAR_W + 1;
    let y = HEIGHT;
    const rects = [];
    for (const [key, cls] of [['completed', 'c-ok'], ['failed', 'c-bad'], ['aborted', 'c-abort']]) {
      if (!b[key]) continue;
      const hgt = (span * b[key]) / maxRuns;
      y -= hgt;
      rects.push(s('rect', { class: cls, x, y: y.toFixed(2), width: BAR_W - 2, height: hgt.toFixed(2) }));
    }
    const end = new Date(Date.parse(b.start) + meta.bucketMs).toISOString();
    const tip = `${clock(b.start)}–${clock(end)}: ${b.completed} completed, ${b.failed} failed, ${b.aborted} aborted` +
      (b.avgDurationMs !== null && b.avgDurationMs !== undefined ? `; mean ${duration(b.avgDurationMs)}, longest ${duration(b.maxDurationMs)}` : '');
    return s('g', {
      class: 'bucket',
      'data-start': b.start,
      'data-completed': b.completed,
      'data-failed': b.failed,
      'data-aborted': b.aborted,
      'data-avg-ms': b.avgDurationMs ?? '',
    }, s('title', {}, tip), s('rect', { class: 'hit', x: i * BAR_W, y: 0, width: BAR_W, height: HEIGHT }), ...rects);
  });
  const points = buckets
    .map((b, i) => (b.avgDurationMs === null || b.avgDurationMs === undefined ? null
      : `${i * BAR_W + BAR_W / 2},${(HEIGHT - (span * b.avgDurationMs) / maxAvg).toFixed(2)}`))
    .filter(Boolean);
  const line = points.length > 1 ? s('polyline', { class: 'c-dur', points: points.join(' ') }) : null;
  const dots = points.length === 1 ? s('circle', { class: 'c-dur-dot', cx: points[0].split(',')[0], cy: points[0].split(',')[1], r: 1.5 }) : null;
  const chart = s('svg', {
    class: 'chart',
    viewBox: `0 0 ${Math.max(1, buckets.length) * BAR_W} ${HEIGHT}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': `${p.pipelineId}: finished runs and mean duration, ${WINDOW_TEXT[meta.window] || meta.window}`,
  }, s('line', { class: 'axis', x1: 0, y1: HEIGHT - 0.25, x2: buckets.length * BAR_W, y2: HEIGHT - 0.25 }), ...groups, line, dots);

  const runs = p.completed + p.failed + p.aborted;
  const rate = runs ? Math.round((100 * p.failed) / runs) : 0;
  const ms = (v) => (v === null || v === undefined ? '—' : duration(v));
  const totals = h('dl', { class: 'p-totals', 'aria-label': `${p.pipelineId} totals, ${WINDOW_TEXT[meta.window] || meta.window}` },
    h('div', {}, h('dd', { class: p.completed ? 'ok-text' : '', dataset: { k: 'completed' } }, String(p.completed)), h('dt', {}, 'completed')),
    h('div', {}, h('dd', { class: p.failed ? 'error-text' : '', dataset: { k: 'failed' } }, String(p.failed), runs && p.failed ? h('span', { class: 'muted' }, ` (${rate}%)`) : null), h('dt', {}, 'failed')),
    h('div', {}, h('dd', { class: p.aborted ? 'abort-text' : '', dataset: { k: 'aborted' } }, String(p.aborted)), h('dt', {}, 'aborted')),
    h('div', { title: 'mean and longest run duration' }, h('dt', {}, 'mean'), h('dd', { dataset: { k: 'mean' } }, ms(p.avgDurationMs)),
      h('dt', {}, 'max'), h('dd', { dataset: { k: 'max' } }, ms(p.maxDurationMs))));
  return h('div', { class: 'p-stats' },
    totals,
    h('div', { class: 'chart-wrap' }, chart,
      h('div', { class: 'chart-axis muted' },
        h('time', { datetime: meta.since, title: stamp(meta.since) }, AGO_TEXT[meta.window] || clock(meta.since)),
        h('span', {}, 'now'))));
}
