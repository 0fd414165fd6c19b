// Small inline-SVG line charts of the last few minutes: no library. The SVG holds only
// the grid and the lines (stretched to the box, strokes kept thin); the scale and the
// legend are HTML beside it, so text stays sharp at any width.

import { h } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 160;
const COLOURS = ['#4cc9f0', '#f72585', '#b8e986', '#ffb703', '#c77dff', '#ff6b6b', '#80ffdb',
  '#f4a261'];

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** A step of 1, 2 or 5 x 10^n at or above `max`, so the scale reads well. */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

export class LineChart {
  /**
   * @param {HTMLElement} host an empty element (a <figure>) to draw into
   * @param {{title: string, unit: string, windowS?: number, format?: (v: number) => string}} opts
   */
  constructor(host, opts) {
    this.opts = { windowS: 300, format: (v) => `${Math.round(v)} ${opts.unit}`, ...opts };
    this.series = new Map(); // name -> {colour, points: [[t, v|null]], legend}
    host.classList.add('chart');
    this.scale = h('span', { class: 'chart-scale' });
    host.append(h('figcaption', {}, h('span', { text: opts.title }), this.scale));
    this.svg = svg('svg', {
      viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
      'aria-label': `${opts.title} over the last ${Math.round(this.opts.windowS / 60)} minutes`,
    });
    this.grid = svg('g', { class: 'chart-grid' });
    this.lines = svg('g', { class: 'chart-lines' });
    this.svg.append(this.grid, this.lines);
    for (let i = 1; i < 4; i++) {
      this.grid.append(svg('line', { x1: 0, x2: W, y1: (H * i) / 4, y2: (H * i) / 4,
        'vector-effect': 'non-scaling-stroke' }));
    }
    this.legend = h('ul', { class: 'chart-legend' });
    host.append(this.svg, this.legend);
  }

  /** Add a sample at `t` (seconds, any monotonic clock) for each named series; a null
   * value leaves a gap, and so does a series not given at `t`. */
  push(t, values) {
    for (const [name, v] of Object.entries(values)) {
      let s = this.series.get(name);
      if (!s && !Number.isFinite(v)) continue; // a series starts with its first value
      if (!s) {
        const colour = COLOURS[this.series.size % COLOURS.length];
        const value = h('span', { class: 'chart-value' });
        const item = h('li', {}, h('span', { class: 'swatch' }), ` ${name} `, value);
        item.firstChild.style.background = colour;
        this.legend.append(item);
        const path = svg('path', { stroke: colour, fill: 'none',
          'vector-effect': 'non-scaling-stroke' });
        this.lines.append(path);
        s = { colour, points: [], value, path, item };
        this.series.set(name, s);
      }
      s.points.push([t, Number.isFinite(v) ? v : null]);
    }
    for (const [name, s] of this.series) {
      if (!(name in values)) s.points.push([t, null]);
    }
    this.now = t;
    this.render();
  }

  render() {
    const start = this.now - this.opts.windowS;
    let max = 0;
    for (const s of this.series.values()) {
      while (s.points.length && s.points[0][0] < start) s.points.shift();
      for (const [, v] of s.points) if (v !== null && v > max) max = v;
    }
    const top = niceMax(max);
    this.scale.textContent = `0 – ${this.opts.format(top)}`;
    const x = (t) => ((t - start) / this.opts.windowS) * W;
    const y = (v) => H - (v / top) * H;
    for (const [name, s] of this.series) {
      let d = '';
      let pen = false;
      for (const [t, v] of s.points) {
        if (v === null) {
          pen = false;
          continue;
        }
        d += `${pen ? 'L' : 'M'}${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
        pen = true;
      }
      s.path.setAttribute('d', d);
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      s.value.textContent = last === null ? '—' : this.opts.format(last);
      // A series with no value in the whole window (a removed rung or uplink) goes.
      if (!s.points.some(([, v]) => v !== null) && s.points.length > 1) {
        s.path.remove();
        s.item.remove();
        this.series.delete(name);
      }
    }
  }
}
