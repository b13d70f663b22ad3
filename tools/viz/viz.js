// weir viz: draws the graph data `weir viz` embeds (units: stream nodes, function calls, repeats
// and their copies, ops; edges between them) and lays out only what is visible, with dagre, again
// after every expand or fold. A unit is drawn as a box when it or an ancestor is folded, and as a
// cluster around its children when it and all its ancestors are open.
'use strict';

(function () {
  const data = JSON.parse(document.getElementById('data').textContent);
  const units = data.units;
  const children = units.map(() => []);
  units.forEach((u, i) => {
    if (u.p >= 0) children[u.p].push(i);
  });
  const isGroup = (i) => children[i].length > 0;
  const initiallyOpen = () =>
    new Set(units.map((u, i) => i).filter((i) => isGroup(i) && (data.expand || units[i].open)));
  let open = initiallyOpen();
  let selected = -1;
  let highlighted = -1;
  let layout = null;  // the last dagre graph
  const view = {x: 0, y: 0, k: 1};
  // Settings persist in localStorage where the browser allows it for a local file.
  function stored(key, fallback) {
    try {
      return localStorage.getItem(key) || fallback;
    } catch (e) {
      return fallback;
    }
  }
  function store(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch (e) {
      // not persisted: the page still works
    }
  }
  const settings = {
    colorBy: stored('weir.viz.colorBy', 'plugin'),
    direction: stored('weir.viz.direction', 'TB'),
  };

  const svg = document.getElementById('graph');
  const viewport = document.getElementById('viewport');
  const SVG_NS = 'http://www.w3.org/2000/svg';

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  // Colors: a fixed hue per plugin so the same op family looks the same in every graph.
  const PALETTE = ['#dbeafe', '#fde2e4', '#e0f2e9', '#fef3c7', '#ede9fe', '#fce7f3', '#ffedd5',
                   '#e0e7ff', '#ccfbf1', '#f5f5f4', '#fae8ff', '#ecfccb'];
  const PLUGIN_COLORS = {nn: 0, moe: 1, io: 2, data: 3, dedup: 4, tokenizer: 5, train: 6, optim: 7};
  const keyColors = new Map();
  function colorFor(key) {
    if (!keyColors.has(key)) {
      const fixed = settings.colorBy === 'plugin' ? PLUGIN_COLORS[key] : undefined;
      keyColors.set(key, PALETTE[fixed !== undefined ? fixed : (8 + keyColors.size) % 12]);
    }
    return keyColors.get(key);
  }
  function colorKey(u) {
    if (settings.colorBy === 'stage') return 'stage ' + (u.s || 0);
    if (settings.colorBy === 'device') return u.d || 'any device';
    if (u.k === 'argument' || u.k === 'result') return 'function input/output';
    if (u.k === 'call' || u.k === 'repeat' || u.k === 'copy') return 'function';
    return u.o.includes('.') ? u.o.slice(0, u.o.indexOf('.')) : u.o;
  }

  // For every unit, the unit drawn in its place: itself when all its ancestors are open.
  function shownUnits() {
    const shown = new Int32Array(units.length);
    units.forEach((u, i) => {
      const sp = u.p < 0 ? i : shown[u.p];
      shown[i] = u.p < 0 || (sp === u.p && open.has(u.p)) ? i : sp;
    });
    return shown;
  }

  function title(u) {
    return u.k === 'repeat' ? u.l + ' \u00d7' + u.c : u.l;
  }

  function textWidth(s, size) {
    return s.length * size * 0.6;
  }

  function buildLayout() {
    const shown = shownUnits();
    const g = new dagre.graphlib.Graph({compound: true});
    g.setGraph({rankdir: settings.direction, nodesep: 18, ranksep: 28, edgesep: 8,
                marginx: 20, marginy: 20});
    g.setDefaultEdgeLabel(() => ({}));
    let boxes = 0;
    units.forEach((u, i) => {
      if (shown[i] !== i) return;
      if (open.has(i)) {
        g.setNode('u' + i, {unit: i, cluster: true});
      } else {
        boxes++;
        const width = Math.max(textWidth(title(u), 11), textWidth(u.o, 9)) + 20;
        g.setNode('u' + i, {unit: i, width: Math.max(60, width), height: 34});
      }
      if (u.p >= 0) g.setParent('u' + i, 'u' + u.p);
    });
    const seen = new Set();
    for (const [a, b, label, control] of data.edges) {
      let from = shown[a];
      let to = shown[b];
      if (open.has(from)) from = units[from].ao === undefined ? -1 : units[from].ao;
      if (open.has(to)) to = units[to].ai === undefined ? -1 : units[to].ai;
      if (from < 0 || to < 0 || from === to || seen.has(from + ':' + to)) continue;
      seen.add(from + ':' + to);
      g.setEdge('u' + from, 'u' + to, {label: label, control: !!control,
                                       width: label ? textWidth(label, 9) : 0,
                                       height: label ? 10 : 0, labelpos: 'c'});
    }
    dagre.layout(g);
    return {g: g, boxes: boxes};
  }

  function render() {
    const started = performance.now();
    const built = buildLayout();
    layout = built.g;
    const g = layout;
    viewport.textContent = '';
    const clusters = el('g', {class: 'clusters'}, viewport);
    const edges = el('g', {class: 'edges'}, viewport);
    const nodes = el('g', {class: 'nodes'}, viewport);
    const depth = (i) => (units[i].p < 0 ? 0 : 1 + depth(units[i].p));
    const clusterIds = g.nodes().filter((n) => g.node(n).cluster);
    clusterIds.sort((a, b) => depth(g.node(a).unit) - depth(g.node(b).unit));
    for (const id of clusterIds) {
      const n = g.node(id);
      const u = units[n.unit];
      const c = el('g', {class: 'cluster', 'data-unit': n.unit, 'data-name': u.n}, clusters);
      el('rect', {x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height,
                  rx: 6}, c);
      const t = el('text', {x: n.x - n.width / 2 + 8, y: n.y - n.height / 2 + 13}, c);
      t.textContent = '\u25be ' + title(u) + ' \u00b7 ' + u.o;
      t.addEventListener('click', (ev) => {
        ev.stopPropagation();
        fold(n.unit);
      });
    }
    for (const e of g.edges()) {
      const info = g.edge(e);
      const group = el('g', {class: 'edge' + (info.control ? ' control' : '')}, edges);
      const d = info.points.map((p, k) => (k ? 'L' : 'M') + p.x.toFixed(1) + ',' + p.y.toFixed(1));
      el('path', {d: d.join(' ')}, group);
      if (info.label) {
        const t = el('text', {x: info.x, y: info.y + 3, 'text-anchor': 'middle'}, group);
        t.textContent = info.label;
      }
    }
    for (const id of g.nodes()) {
      const n = g.node(id);
      if (n.cluster) continue;
      const i = n.unit;
      const u = units[i];
      const classes = ['node'];
      if (isGroup(i)) classes.push('group');
      if (u.k === 'argument' || u.k === 'result') classes.push('io');
      if (i === selected) classes.push('selected');
      if (i === highlighted) classes.push('highlight');
      const box = el('g', {class: classes.join(' '), 'data-unit': i, 'data-kind': u.k,
                           'data-name': u.n, 'data-op': u.o}, nodes);
      const x = n.x - n.width / 2;
      const y = n.y - n.height / 2;
      el('rect', {x: x, y: y, width: n.width, height: n.height, rx: 4,
                  fill: colorFor(colorKey(u))}, box);
      if (isGroup(i)) {
        el('rect', {class: 'outer', x: x - 3, y: y - 3, width: n.width + 6, height: n.height + 6,
                    rx: 6}, box);
      }
      const t1 = el('text', {x: n.x, y: n.y - 3, 'text-anchor': 'middle'}, box);
      t1.textContent = title(u);
      const t2 = el('text', {class: 'op', x: n.x, y: n.y + 10, 'text-anchor': 'middle'}, box);
      t2.textContent = u.o;
      box.addEventListener('click', (ev) => {
        ev.stopPropagation();
        select(i);
        if (isGroup(i) && !open.has(i)) {
          const before = layout.node('u' + i);
          open.add(i);
          render();
          keepInPlace(i, before.x, before.y - before.height / 2);
        }
      });
    }
    renderLegend();
    applyView();
    const ms = performance.now() - started;
    document.getElementById('status').textContent =
        built.boxes + ' nodes shown of ' + units.length + ' \u00b7 laid out in ' +
        ms.toFixed(0) + ' ms';
    window.weirViz.lastLayoutMs = ms;
  }

  function renderLegend() {
    const legend = document.getElementById('legend');
    legend.textContent = '';
    for (const [key, color] of keyColors) {
      const swatch = document.createElement('span');
      swatch.style.background = color;
      legend.appendChild(swatch);
      legend.appendChild(document.createTextNode(key));
    }
  }

  function fold(i) {
    open.delete(i);
    render();
  }

  // ---- pan and zoom
  function applyView() {
    viewport.setAttribute('transform',
                          'translate(' + view.x + ',' + view.y + ') scale(' + view.k + ')');
  }
  function fit() {
    const g = layout.graph();
    const box = svg.getBoundingClientRect();
    view.k = Math.min(1, box.width / (g.width || 1), box.height / (g.height || 1));
    view.x = (box.width - g.width * view.k) / 2;
    view.y = Math.max(0, (box.height - g.height * view.k) / 2);
    applyView();
  }
  // Moves the view so that the top of unit i sits where graph point (x, y) was on screen: an
  // opened box grows from where it was clicked.
  function keepInPlace(i, x, y) {
    const n = layout.node('u' + i);
    view.x += (x - n.x) * view.k;
    view.y += (y - (n.y - n.height / 2)) * view.k;
    applyView();
  }
  function centerOn(i) {
    const n = layout.node('u' + i);
    if (!n) return;
    const box = svg.getBoundingClientRect();
    view.k = Math.max(view.k, 0.8);
    view.x = box.width / 2 - n.x * view.k;
    view.y = box.height / 2 - n.y * view.k;
    applyView();
  }
  svg.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const box = svg.getBoundingClientRect();
    const px = ev.clientX - box.left;
    const py = ev.clientY - box.top;
    const factor = Math.exp(-ev.deltaY * 0.0015);
    view.x = px - (px - view.x) * factor;
    view.y = py - (py - view.y) * factor;
    view.k *= factor;
    applyView();
  }, {passive: false});
  let drag = null;
  svg.addEventListener('mousedown', (ev) => {
    drag = {x: ev.clientX - view.x, y: ev.clientY - view.y};
    svg.classList.add('dragging');
  });
  window.addEventListener('mousemove', (ev) => {
    if (!drag) return;
    view.x = ev.clientX - drag.x;
    view.y = ev.clientY - drag.y;
    applyView();
  });
  window.addEventListener('mouseup', () => {
    drag = null;
    svg.classList.remove('dragging');
  });

  // ---- properties panel
  function addText(parent, tag, text, cls) {
    const e = document.createElement(tag);
    e.textContent = text;
    if (cls) e.className = cls;
    parent.appendChild(e);
    return e;
  }
  function table(parent, heading, rows, build) {
    if (!rows || !rows.length) return;
    addText(parent, 'h3', heading);
    const t = document.createElement('table');
    rows.forEach((r) => t.appendChild(build(r)));
    parent.appendChild(t);
  }
  function row(cells, cls) {
    const tr = document.createElement('tr');
    if (cls) tr.className = cls;
    cells.forEach(([tag, text, c]) => addText(tr, tag, text, c));
    return tr;
  }
  function select(i) {
    selected = i;
    document.querySelectorAll('.node.selected').forEach((n) => n.classList.remove('selected'));
    const box = viewport.querySelector('.node[data-unit="' + i + '"]');
    if (box) box.classList.add('selected');
    const u = units[i];
    const schema = data.ops[u.o];
    const panel = document.getElementById('properties');
    panel.textContent = '';
    addText(panel, 'h2', u.n);
    const kinds = {stream: 'stream node', resource: 'model resource', call: 'function call',
                   repeat: 'repeated call (\u00d7' + u.c + ')', copy: 'one copy of a repeat',
                   op: 'tensor op', argument: 'function input', result: 'function output'};
    addText(panel, 'div', u.o + (schema ? '  \u00b7  plugin ' + schema.plugin : ''), 'op');
    addText(panel, 'div', kinds[u.k], 'tag');
    if (u.s) addText(panel, 'div', 'pipeline stage ' + u.s, 'tag');
    if (u.d) addText(panel, 'div', 'device ' + u.d, 'tag');
    if (schema && schema.doc) addText(panel, 'p', schema.doc, 'doc');
    if (u.doc) addText(panel, 'p', u.doc, 'doc');
    table(panel, 'Attributes', u.a, ([key, value, isDefault]) => {
      const tr = row([['th', key], ['td', value, 'value'],
                      ['td', isDefault ? 'default' : '', 'tag']], isDefault ? 'default' : '');
      tr.dataset.attr = key;
      if (schema && schema.attrs[key]) tr.title = schema.attrs[key];
      return tr;
    });
    const portDoc = (list, name) => {
      const found = schema && schema[list].find((p) => p[0] === name);
      return found ? found[1] : '';
    };
    table(panel, 'Inputs', u.i, ([name, type]) =>
      row([['th', name], ['td', type, 'value'], ['td', portDoc('inputs', name), 'tag']]));
    table(panel, 'Outputs', u.out, ([name, type]) =>
      row([['th', name], ['td', type, 'value'], ['td', portDoc('outputs', name), 'tag']]));
    table(panel, 'Parameters', u.w, ([name, type]) => row([['th', name], ['td', type, 'value']]));
    if (isGroup(i)) {
      addText(panel, 'p', children[i].length + ' units inside; ' +
                              (open.has(i) ? 'click its title to fold it.' : 'click to open.'),
              'hint');
    }
  }

  // ---- search
  const search = document.getElementById('search');
  const results = document.getElementById('results');
  let matches = [];
  function runSearch() {
    const q = search.value.trim().toLowerCase();
    results.textContent = '';
    matches = [];
    if (!q) {
      results.hidden = true;
      return;
    }
    for (let i = 0; i < units.length && matches.length < 100; i++) {
      if (units[i].n.toLowerCase().includes(q) || units[i].o.toLowerCase().includes(q)) {
        matches.push(i);
      }
    }
    matches.forEach((i, k) => {
      const li = document.createElement('li');
      li.textContent = units[i].n;
      addText(li, 'span', units[i].o);
      if (k === 0) li.className = 'active';
      li.addEventListener('click', () => reveal(i));
      results.appendChild(li);
    });
    if (!matches.length) addText(results, 'li', 'no node or op matches');
    results.hidden = false;
  }
  // Opens every box around unit i, draws, and marks and centers it.
  function reveal(i) {
    for (let p = units[i].p; p >= 0; p = units[p].p) open.add(p);
    highlighted = i;
    results.hidden = true;
    render();
    select(i);
    centerOn(i);
  }
  search.addEventListener('input', runSearch);
  search.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && matches.length) reveal(matches[0]);
    if (ev.key === 'Escape') results.hidden = true;
  });

  // ---- export
  function pageStyles() {
    let css = '';
    for (const sheet of document.styleSheets) {
      for (const rule of sheet.cssRules) {
        if (/^(\.node|\.cluster|\.edge|marker)/.test(rule.selectorText || '')) {
          css += rule.cssText + '\n';
        }
      }
    }
    return css;
  }
  // The current view as a standalone SVG document: the whole laid-out graph, unscaled.
  function svgText() {
    const g = layout.graph();
    const copy = svg.cloneNode(true);
    copy.removeAttribute('id');
    copy.setAttribute('width', g.width);
    copy.setAttribute('height', g.height);
    copy.setAttribute('viewBox', '0 0 ' + g.width + ' ' + g.height);
    copy.querySelector('#viewport').removeAttribute('transform');
    const style = document.createElementNS(SVG_NS, 'style');
    style.textContent = 'text { font-family: Helvetica, Arial, sans-serif; }\n' + pageStyles();
    copy.insertBefore(style, copy.firstChild);
    return new XMLSerializer().serializeToString(copy);
  }
  function download(name, blob) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }
  const baseName = (data.name || 'graph').replace(/[^\w.-]+/g, '_');
  document.getElementById('export-svg').addEventListener('click', () => {
    download(baseName + '.svg', new Blob([svgText()], {type: 'image/svg+xml'}));
  });
  document.getElementById('export-png').addEventListener('click', () => {
    const g = layout.graph();
    const image = new Image();
    image.onload = () => {
      const scale = Math.min(2, 16000 / Math.max(g.width, g.height));
      const canvas = document.createElement('canvas');
      canvas.width = Math.ceil(g.width * scale);
      canvas.height = Math.ceil(g.height * scale);
      const ctx = canvas.getContext('2d');
      ctx.fillStyle = '#fff';
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.scale(scale, scale);
      ctx.drawImage(image, 0, 0);
      canvas.toBlob((blob) => download(baseName + '.png', blob), 'image/png');
    };
    image.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(svgText());
  });

  // ---- settings
  const colorBy = document.getElementById('color-by');
  const direction = document.getElementById('direction');
  colorBy.value = settings.colorBy;
  direction.value = settings.direction;
  colorBy.addEventListener('change', () => {
    settings.colorBy = colorBy.value;
    store('weir.viz.colorBy', settings.colorBy);
    keyColors.clear();
    render();
  });
  direction.addEventListener('change', () => {
    settings.direction = direction.value;
    store('weir.viz.direction', settings.direction);
    render();
    fit();
  });
  document.getElementById('fold-all').addEventListener('click', () => {
    open = initiallyOpen();
    highlighted = -1;
    render();
    fit();
  });

  document.getElementById('title').textContent = data.name || data.file;
  if (data.notes.length) {
    const panel = document.getElementById('properties');
    data.notes.forEach((n) => addText(panel, 'p', n, 'note'));
  }
  window.weirViz = {
    units: units,
    open: (name) => {
      const i = units.findIndex((u) => u.n === name);
      if (i >= 0 && isGroup(i)) open.add(i);
      render();
    },
    svgText: svgText,
  };
  render();
  fit();
  // From navigation start to the first drawing: what "opens in" means for the page.
  window.weirViz.firstRenderMs = performance.now();
  document.body.dataset.ready = 'true';
})();
