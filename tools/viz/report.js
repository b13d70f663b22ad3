// weir report: draws the run data `weir report` embeds (metrics.jsonl and statistics.jsonl rows,
// summary.json, trace.json) as inline SVG charts. Every chart is an <svg class="chart"> whose
// data-series attribute counts its series, one <path class="series"> (or row of cells or bars)
// each.
'use strict';

(function () {
  const data = JSON.parse(document.getElementById('data').textContent);
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#be185d',
                  '#65a30d', '#7c3aed', '#b45309'];
  const main = document.getElementById('sections');

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  function html(tag, text, parent, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    if (parent) parent.appendChild(e);
    return e;
  }
  function section(title, id) {
    const s = html('section', undefined, main);
    s.id = id;
    html('h2', title, s);
    return s;
  }
  function figure(parent, caption) {
    const f = html('figure', undefined, parent);
    html('figcaption', caption, f);
    return f;
  }
  function format(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
    return +v.toPrecision(3) + '';
  }
  // "Nice" tick values covering [lo, hi].
  function ticks(lo, hi, count) {
    if (hi === lo) return [lo];
    const step0 = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
    return out;
  }

  // A line chart of series [{name, points: [[x, y], ...]}] over steps.
  function lineChart(parent, caption, series) {
    const f = figure(parent, caption);
    const W = 540;
    // The legend wraps into as many lines as its names need, below the plot.
    const legendAt = [];
    let line = 0;
    let lx = 56;
    for (const s of series) {
      const width = 24 + s.name.length * 5.6;
      if (lx + width > W && lx > 56) {
        line++;
        lx = 56;
      }
      legendAt.push([lx, line]);
      lx += width;
    }
    const H = 250 + 14 * line;
    const m = {l: 56, r: 12, t: 10, b: 54 + 14 * line};
    const svg = el('svg', {class: 'chart', width: W, height: H, 'data-series': series.length,
                           'data-title': caption}, f);
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) x1 = x0 + 1;
    if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
    const pad = (y1 - y0) * 0.05;
    y0 -= pad;
    y1 += pad;
    const sx = (x) => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
    const sy = (y) => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
    const grid = el('g', {class: 'grid'}, svg);
    const axis = el('g', {class: 'axis'}, svg);
    for (const t of ticks(y0, y1, 5)) {
      el('line', {x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t)}, grid);
      el('text', {x: m.l - 4, y: sy(t) + 3, 'text-anchor': 'end'}, axis).textContent = format(t);
    }
    for (const t of ticks(x0, x1, 6)) {
      el('line', {x1: sx(t), x2: sx(t), y1: H - m.b, y2: H - m.b + 4}, axis);
      el('text', {x: sx(t), y: H - m.b + 14, 'text-anchor': 'middle'}, axis).textContent =
          format(t);
    }
    el('path', {d: `M${m.l},${m.t} V${H - m.b} H${W - m.r}`, fill: 'none'}, axis);
    el('text', {x: (W + m.l) / 2, y: H - m.b + 27, 'text-anchor': 'middle'}, axis).textContent =
        'step';
    const legend = el('g', {class: 'legend'}, svg);
    series.forEach((s, k) => {
      const color = COLORS[k % COLORS.length];
      const d = s.points.map((p, j) => (j ? 'L' : 'M') + sx(p[0]).toFixed(1) + ',' +
                                       sy(p[1]).toFixed(1));
      const path = el('path', {class: 'series', d: d.join(' '), stroke: color,
                               'data-name': s.name}, svg);
      el('title', {}, path).textContent = s.name;
      if (s.points.length <= 40) {
        for (const p of s.points) el('circle', {cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: color}, svg);
      }
      const [x, row] = legendAt[k];
      const y = H - m.b + 40 + 14 * row;
      el('rect', {x: x, y: y - 4, width: 10, height: 3, fill: color}, legend);
      el('text', {x: x + 14, y: y}, legend).textContent = s.name;
    });
    return svg;
  }

  // ---- metrics.jsonl: series by key, over steps; a key several nodes log is named per node
  const nodesOf = new Map();
  for (const row of data.metrics) {
    for (const key of Object.keys(row)) {
      if (!nodesOf.has(key)) nodesOf.set(key, new Set());
      nodesOf.get(key).add(row.node);
    }
  }
  const series = new Map();
  for (const row of data.metrics) {
    if (typeof row.step !== 'number') continue;
    for (const [key, value] of Object.entries(row)) {
      if (key === 'step' || typeof value !== 'number' || !isFinite(value)) continue;
      const name = nodesOf.get(key).size > 1 ? row.node + '.' + key : key;
      if (!series.has(name)) series.set(name, []);
      series.get(name).push([row.step, value]);
    }
  }
  const used = new Set();
  function take(keys) {
    const out = keys.filter((k) => series.has(k) && !used.has(k));
    out.forEach((k) => used.add(k));
    return out.map((k) => ({name: k, points: series.get(k)}));
  }
  const keys = [...series.keys()];
  const status = data.summary ?
      `${data.summary.status || ''} · ${format(data.summary.wall_s || 0)} s wall · graph ` +
          `${data.summary.graph || '?'}` :
      'no summary.json';
  document.getElementById('title').textContent = 'weir run ' + data.run;
  document.getElementById('summary').textContent = status;

  // Reward and GRPO metrics first claim their keys, so that a policy loss is not drawn with the
  // language-model losses.
  const grpoKeys = ['kl', 'clip_ratio', 'entropy', 'policy_loss', 'pg_loss', 'advantage_std',
                    'response_length', 'completion_length'];
  const rewardKeys = keys.filter((k) => k === 'reward' || /^rewards?[/_.].*mean$/.test(k) ||
                                        /^reward[/_.]/.test(k));
  if (rewardKeys.length || grpoKeys.some((k) => series.has(k))) {
    const s = section('Rewards and GRPO', 'rewards');
    const charts = html('div', undefined, s, 'charts');
    if (rewardKeys.length) lineChart(charts, 'Reward', take(rewardKeys));
    for (const k of grpoKeys) {
      if (series.has(k)) lineChart(charts, k, take([k]));
    }
  }
  if (series.size) {
    const s = section('Training', 'training');
    const charts = html('div', undefined, s, 'charts');
    const lossKeys = keys.filter((k) => /loss$/.test(k) && !used.has(k));
    const groups = [['Loss', lossKeys], ['Learning rate', ['lr']], ['Gradient norm', ['grad_norm']],
                    ['Tokens per second', ['tokens_per_s']],
                    ['Expert load, busiest over mean',
                     keys.filter((k) => /load_max_over_mean$/.test(k))]];
    for (const [caption, list] of groups) {
      const taken = take(list);
      if (taken.length) lineChart(charts, caption, taken);
    }
    // Values logged once (a data stage's counts) make a table, not a chart.
    const once = keys.filter((k) => !used.has(k) && series.get(k).length === 1);
    for (const k of keys) {
      if (!used.has(k) && !once.includes(k)) lineChart(charts, k, take([k]));
    }
    if (once.length) {
      const table = html('table', undefined, figure(s, 'Logged once'), 'values');
      for (const k of once) {
        const tr = html('tr', undefined, table);
        html('th', k, tr);
        html('td', format(series.get(k)[0][1]), tr);
        html('td', 'step ' + series.get(k)[0][0], tr, 'note');
      }
    }
  } else {
    html('p', 'metrics.jsonl holds no per-step values.', main, 'note');
  }

  // ---- statistics.jsonl: expert load per router, steps × experts
  const loads = new Map();
  for (const row of data.statistics) {
    for (const [key, value] of Object.entries(row)) {
      if (!/load$/.test(key) || !Array.isArray(value)) continue;
      if (!loads.has(key)) loads.set(key, []);
      loads.get(key).push([row.step, value]);
    }
  }
  if (loads.size) {
    const s = section('Expert load', 'experts');
    html('p', 'Tokens routed to each expert at each step, relative to the mean over the ' +
                  'experts (white: the mean; red: busier; blue: idler).', s, 'note');
    const charts = html('div', undefined, s, 'charts');
    for (const [key, rows] of loads) heatmap(charts, key.replace(/\.load$/, ''), rows);
  }
  function heatmap(parent, caption, rows) {
    const f = figure(parent, caption);
    const experts = rows[0][1].length;
    // Long runs: one column per bin of steps, the bin's mean.
    const bins = Math.min(rows.length, 240);
    const cols = [];
    for (let b = 0; b < bins; b++) {
      const part = rows.slice(Math.floor(b * rows.length / bins),
                              Math.floor((b + 1) * rows.length / bins));
      const sum = new Array(experts).fill(0);
      part.forEach(([, v]) => v.forEach((x, e) => (sum[e] += x)));
      cols.push({step: part[0][0], load: sum.map((x) => x / part.length)});
    }
    const cell = Math.max(2, Math.min(14, Math.floor(480 / bins)));
    const rowH = Math.max(2, Math.min(14, Math.floor(320 / experts)));
    const m = {l: 48, t: 6, b: 30};
    const W = m.l + cell * bins + 10;
    const H = m.t + rowH * experts + m.b;
    const svg = el('svg', {class: 'chart heatmap', width: W, height: H, 'data-series': experts,
                           'data-title': caption}, f);
    for (let e = 0; e < experts; e++) {
      const g = el('g', {class: 'series', 'data-name': 'expert ' + e}, svg);
      cols.forEach((c, b) => {
        const mean = c.load.reduce((a, x) => a + x, 0) / experts || 1;
        const r = c.load[e] / mean;
        // Diverging scale around 1 (the mean), saturating at 0 and 2.
        const t = Math.max(-1, Math.min(1, r - 1));
        const shade = Math.round(255 * (1 - Math.abs(t)));
        const fill = t > 0 ? `rgb(255,${shade},${shade})` : `rgb(${shade},${shade},255)`;
        const rect = el('rect', {x: m.l + b * cell, y: m.t + e * rowH, width: cell, height: rowH,
                                 fill: fill}, g);
        if (bins * experts <= 4000) {
          el('title', {}, rect).textContent = `step ${c.step}, expert ${e}: ${format(c.load[e])}` +
              ` (${format(r)}× mean)`;
        }
      });
    }
    const axis = el('g', {class: 'axis'}, svg);
    for (const e of ticks(0, experts - 1, Math.min(experts, 8))) {
      el('text', {x: m.l - 4, y: m.t + e * rowH + rowH / 2 + 3, 'text-anchor': 'end'}, axis)
          .textContent = 'e' + e;
    }
    const lastStep = cols[cols.length - 1].step;
    for (const t of ticks(cols[0].step, lastStep, 5)) {
      const b = cols.findIndex((c) => c.step >= t);
      if (b < 0) continue;
      el('text', {x: m.l + b * cell, y: H - m.b + 14, 'text-anchor': 'middle'}, axis).textContent =
          format(t);
    }
    el('text', {x: m.l + cell * bins / 2, y: H - 4, 'text-anchor': 'middle'}, axis).textContent =
        'step';
  }

  // ---- summary.json: where the time went
  const nodes = data.summary && data.summary.nodes ? data.summary.nodes : [];
  if (nodes.length) {
    const s = section('Time per node', 'nodes');
    html('p', 'Seconds each node spent in its kernel (summed over concurrent calls), as ' +
                  'summary.json records it, and its share of the run\u2019s wall time.', s, 'note');
    const wall = data.summary.wall_s || 1;
    const sorted = [...nodes].sort((a, b) => (b.busy_s || 0) - (a.busy_s || 0));
    const W = 760;
    const rowH = 20;
    const m = {l: 200, r: 150, t: 4};
    const svg = el('svg', {class: 'chart bars', width: W, height: m.t + rowH * sorted.length + 6,
                           'data-series': sorted.length, 'data-title': 'Time per node'},
                   figure(s, 'Busy seconds per node'));
    const most = Math.max(...sorted.map((n) => n.busy_s || 0)) || 1;
    sorted.forEach((n, k) => {
      const y = m.t + k * rowH;
      const g = el('g', {class: 'series', 'data-name': n.name}, svg);
      el('text', {x: m.l - 6, y: y + 14, 'text-anchor': 'end', class: 'bar-label'}, g)
          .textContent = `${n.name} (${n.op})`;
      el('rect', {x: m.l, y: y + 3, height: rowH - 6, fill: COLORS[0],
                  width: Math.max(1, (n.busy_s || 0) / most * (W - m.l - m.r))}, g);
      el('text', {x: W - m.r + 6, y: y + 14}, g).textContent =
          `${format(n.busy_s || 0)} s · ${(100 * (n.busy_s || 0) / wall).toFixed(1)} %`;
    });
  }

  // ---- trace.json: the pipeline schedule, one row per (process, thread)
  const events = !data.trace ? [] : Array.isArray(data.trace) ? data.trace :
                                                                   data.trace.traceEvents || [];
  const spans = events.filter((e) => e.ph === 'X' && typeof e.ts === 'number');
  if (spans.length) {
    const s = section('Pipeline schedule', 'timeline');
    html('p', 'Complete events of trace.json (open the file in Perfetto for the details): one ' +
                  'row per rank and stream.', s, 'note');
    const names = new Map();
    for (const e of events) {
      if (e.ph !== 'M' || !e.args) continue;
      const key = e.name === 'process_name' ? 'p' + e.pid : e.pid + '/' + e.tid;
      names.set(key, e.args.name);
    }
    const rows = [...new Set(spans.map((e) => e.pid + '/' + e.tid))].sort((a, b) => {
      const [pa, ta] = a.split('/').map(Number);
      const [pb, tb] = b.split('/').map(Number);
      return pa - pb || ta - tb;
    });
    const t0 = Math.min(...spans.map((e) => e.ts));
    const t1 = Math.max(...spans.map((e) => e.ts + (e.dur || 0)));
    const W = 1100;
    const rowH = 22;
    const m = {l: 150, r: 10, t: 4, b: 30};
    const H = m.t + rows.length * rowH + m.b;
    const svg = el('svg', {class: 'chart timeline', width: W, height: H,
                           'data-series': rows.length, 'data-title': 'Pipeline schedule'},
                   figure(s, 'Timeline'));
    const sx = (t) => m.l + (t - t0) / ((t1 - t0) || 1) * (W - m.l - m.r);
    const kinds = new Map();
    const colorOf = (e) => {
      const kind = e.cat || String(e.name).split(/[\s(:]/)[0];
      if (!kinds.has(kind)) kinds.set(kind, COLORS[kinds.size % COLORS.length]);
      return kinds.get(kind);
    };
    rows.forEach((key, k) => {
      const [pid, tid] = key.split('/');
      const g = el('g', {class: 'series', 'data-name': key}, svg);
      const label = (names.get('p' + pid) || 'pid ' + pid) + ' · ' +
          (names.get(key) || 'tid ' + tid);
      el('text', {x: m.l - 6, y: m.t + k * rowH + 15, 'text-anchor': 'end'}, g).textContent = label;
      for (const e of spans) {
        if (e.pid + '/' + e.tid !== key) continue;
        const r = el('rect', {x: sx(e.ts), y: m.t + k * rowH + 2, height: rowH - 4,
                              width: Math.max(0.5, sx(e.ts + (e.dur || 0)) - sx(e.ts)),
                              fill: colorOf(e), class: 'event'}, g);
        el('title', {}, r).textContent = `${e.name}: ${format((e.dur || 0) / 1000)} ms`;
      }
    });
    const legend = html('p', undefined, s, 'note');
    for (const [kind, color] of kinds) {
      const swatch = html('span', '\u25a0 ', legend);
      swatch.style.color = color;
      legend.appendChild(document.createTextNode(kind + '   '));
    }
    const axis = el('g', {class: 'axis'}, svg);
    for (const t of ticks(0, (t1 - t0) / 1000, 8)) {
      el('text', {x: sx(t0 + t * 1000), y: H - m.b + 14, 'text-anchor': 'middle'}, axis)
          .textContent = format(t);
    }
    el('text', {x: (W + m.l) / 2, y: H - 4, 'text-anchor': 'middle'}, axis).textContent = 'ms';
  }
  document.body.dataset.ready = 'true';
})();
