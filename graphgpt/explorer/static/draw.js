/* Drawing: the visible boxes, nodes and edges as SVG (rebuilt in one go: a few thousand elements at most take
   milliseconds), pan and zoom with the mouse, and the minimap. Marks for the pass step (created, removed, fused,
   absent) and for the selection (the backward nodes of a forward node, the saved activations they read) are CSS
   classes on the drawn items. */
"use strict";

GraphExplorer.escape = (text) => String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

GraphExplorer.Drawing = class {
  constructor(svg, viewport, minimap, onTransform) {
    this.svg = svg;
    this.viewport = viewport;
    this.minimap = minimap;
    this.onTransform = onTransform;
    this.transform = { x: 20, y: 20, scale: 1 };
    this.bounds = { width: 1, height: 1 };
    this.placed = new Map();
  }

  /* The visible item standing for a value: the value itself, or the outermost closed box holding it. */
  static visibleItem(value) {
    for (const box of value.chain) if (!box.expanded) return box;
    return value;
  }

  boxStats(stats) {
    return `${stats.nodes} node${stats.nodes === 1 ? "" : "s"} · ${GraphExplorer.formatFlops(stats.flops)} · ${GraphExplorer.formatBytes(stats.bytes)}`;
  }

  draw(graph, layout, view, highlight) {
    const { placed, width, height } = layout.place();
    this.placed = placed;
    this.bounds = { width, height };
    const E = GraphExplorer.escape, key = GraphExplorer.Layout.key;
    const containers = [], items = [], edges = [];
    for (const [itemKey, rect] of placed) {
      const item = rect.item;
      const classes = [...(highlight.classes.get(itemKey) || [])];
      if (item.leaves !== undefined) {
        const stats = view.stats.get(item);
        if (rect.open) {
          containers.push(`<g class="box open k-${item.kind} ${classes.join(" ")}" data-key="${itemKey}">` +
            `<rect x="${rect.x}" y="${rect.y}" width="${rect.w}" height="${rect.h}" rx="8"/>` +
            `<text class="head" x="${rect.x + 10}" y="${rect.y + 21}">− ${E(item.name)}` +
            `<tspan class="stats" dx="10">${E(this.boxStats(stats))}</tspan></text></g>`);
        } else {
          const changes = (stats.removed ? ` −${stats.removed}` : "") + (stats.created ? ` +${stats.created}` : "");
          if (changes) classes.push(stats.removed ? "changed" : "changed grown");
          if (!stats.nodes && !stats.removed) classes.push("absent");
          items.push(`<g class="box closed k-${item.kind} ${classes.join(" ")}" data-key="${itemKey}">` +
            `<rect x="${rect.x}" y="${rect.y}" width="${rect.w}" height="${rect.h}" rx="6"/>` +
            `<text class="name" x="${rect.x + 10}" y="${rect.y + 19}">+ ${E(item.name)}</text>` +
            `<text class="stats" x="${rect.x + 10}" y="${rect.y + 37}">${E(this.boxStats(stats))}</text>` +
            (changes ? `<text class="badge" x="${rect.x + rect.w - 8}" y="${rect.y + 19}">${changes}</text>` : "") + "</g>");
        }
      } else {
        const mark = view.marks.get(item.index);
        if (mark) classes.push(mark);
        else if (!view.present[item.index]) classes.push("absent");
        const saved = view.present[item.index] && view.isSaved(item);
        if (saved) classes.push("saved");
        const role = item.kind === "node" ? (item.op === "constant" ? "constant" : item.role) : item.kind;
        const variant = view.variantOf(item);
        const title = item.kind === "node" ? `${item.label} ${variant.op}` : item.label;
        const detail = saved ? `${variant.type} · saved ${GraphExplorer.formatBytes(variant[4])}`
          : view.planned && item.plan && item.plan[1] >= 0 ? `${variant.type} · buf ${item.plan[1]}` : variant.type;
        items.push(`<g class="leaf r-${role} ${classes.join(" ")}" data-key="${itemKey}">` +
          `<rect x="${rect.x}" y="${rect.y}" width="${rect.w}" height="${rect.h}" rx="5"/>` +
          `<text class="name" x="${rect.x + 8}" y="${rect.y + 15}">${E(title)}</text>` +
          `<text class="type" x="${rect.x + 8}" y="${rect.y + 29}">${E(detail)}</text></g>`);
      }
    }
    const seen = new Set();
    const fanOut = new Map();  // a leaf feeding many items is drawn lighter (it took no part in the layout)
    for (const reader of graph.values) {
      if (!view.present[reader.index]) continue;
      for (const operand of view.operands[reader.index][1]) {
        const source = graph.values[operand];
        if (source.isStatic) fanOut.set(source, (fanOut.get(source) || new Set()).add(key(GraphExplorer.Drawing.visibleItem(reader))));
      }
    }
    for (const value of graph.values) {
      if (!view.present[value.index]) continue;
      const target = GraphExplorer.Drawing.visibleItem(value);
      const targetKey = key(target);
      for (const operand of view.operands[value.index][1]) {
        const sourceValue = graph.values[operand];
        const source = GraphExplorer.Drawing.visibleItem(sourceValue);
        const sourceKey = key(source);
        const edgeKey = `${sourceKey}>${targetKey}`;
        if (sourceKey === targetKey || seen.has(edgeKey)) continue;
        seen.add(edgeKey);
        const from = placed.get(sourceKey), to = placed.get(targetKey);
        if (!from || !to) continue;
        if (GraphExplorer.Drawing.secondary(sourceValue, value) && (source !== sourceValue || target !== value)) continue;
        const crossing = sourceValue.role === "forward" && value.role !== "forward" && sourceValue.kind === "node";
        const fan = sourceValue.isStatic && fanOut.get(sourceValue).size > GraphExplorer.Layout.FAN_OUT;
        const classes = [crossing ? "saved-edge" : "", fan ? "fan" : "", highlight.edges.has(edgeKey) ? "lit" : ""].join(" ");
        edges.push(`<path class="edge ${classes}" d="${GraphExplorer.Drawing.curve(from, to)}"/>`);
      }
    }
    const links = [];
    for (const [fromValue, toValue] of highlight.links) {
      const from = placed.get(key(GraphExplorer.Drawing.visibleItem(fromValue)));
      const to = placed.get(key(GraphExplorer.Drawing.visibleItem(toValue)));
      if (from && to && from !== to) links.push(`<path class="link" d="${GraphExplorer.Drawing.curve(from, to)}"/>`);
    }
    this.viewport.innerHTML = containers.join("") + `<g class="edges">${edges.join("")}</g>` + items.join("") +
      `<g class="links">${links.join("")}</g>`;
    this.drawMinimapBase();
    this.apply();
  }

  /* An edge drawn only between the two nodes themselves, not between the boxes holding them: the optimizer's
     reads of parameters, which would join every module to the optimizer's box. */
  static secondary(source, target) { return source.kind === "param" && target.role === "optimizer"; }

  /* A curve from one rectangle to another: sideways between the columns of the top level (forward, backward,
     optimizer) or beside each other, else down or up as they lie. */
  static curve(a, b) {
    let x1, y1, x2, y2, horizontal = false;
    const beside = (a.column !== b.column && (b.x >= a.x + a.w || b.x + b.w <= a.x))
      || (b.y < a.y + a.h && a.y < b.y + b.h);
    if (beside) horizontal = true;
    else if (b.y >= a.y + a.h) { x1 = a.x + a.w / 2; y1 = a.y + a.h; x2 = b.x + b.w / 2; y2 = b.y; }
    else if (b.y + b.h <= a.y) { x1 = a.x + a.w / 2; y1 = a.y; x2 = b.x + b.w / 2; y2 = b.y + b.h; }
    if (horizontal) {
      y1 = a.y + a.h / 2; y2 = b.y + b.h / 2;
      if (b.x >= a.x + a.w) { x1 = a.x + a.w; x2 = b.x; } else { x1 = a.x; x2 = b.x + b.w; }
    }
    const r = (n) => Math.round(n * 10) / 10;
    if (horizontal) {
      const bend = (x2 - x1) / 2;
      return `M${r(x1)},${r(y1)} C${r(x1 + bend)},${r(y1)} ${r(x2 - bend)},${r(y2)} ${r(x2)},${r(y2)}`;
    }
    const bend = (y2 - y1) / 2;
    return `M${r(x1)},${r(y1)} C${r(x1)},${r(y1 + bend)} ${r(x2)},${r(y2 - bend)} ${r(x2)},${r(y2)}`;
  }

  apply() {
    const t = this.transform;
    this.viewport.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.scale})`);
    this.drawMinimapView();
    if (this.onTransform) this.onTransform();
  }

  /* Screen position (in the SVG's pixels) of a point of the drawing. */
  toScreen(x, y) { return { x: this.transform.x + x * this.transform.scale, y: this.transform.y + y * this.transform.scale }; }

  zoomAt(screenX, screenY, factor) {
    const t = this.transform;
    const scale = Math.min(4, Math.max(0.02, t.scale * factor));
    t.x = screenX - (screenX - t.x) * (scale / t.scale);
    t.y = screenY - (screenY - t.y) * (scale / t.scale);
    t.scale = scale;
    this.apply();
  }

  fit() {
    const box = this.svg.getBoundingClientRect();
    const scale = Math.min(1, (box.width - 40) / this.bounds.width, (box.height - 40) / this.bounds.height);
    this.transform = { x: (box.width - this.bounds.width * scale) / 2, y: 20, scale: Math.max(scale, 0.02) };
    this.apply();
  }

  /* Centre the view on a rectangle, zooming in to at least `scale`. */
  centerOn(rect, scale) {
    const box = this.svg.getBoundingClientRect();
    const t = this.transform;
    if (scale !== undefined) t.scale = Math.max(t.scale, scale);
    t.x = box.width / 2 - (rect.x + rect.w / 2) * t.scale;
    t.y = box.height / 2 - (rect.y + rect.h / 2) * t.scale;
    this.apply();
  }

  attachMouse(onClick) {
    let drag = null;
    this.svg.addEventListener("mousedown", (event) => {
      drag = { x: event.clientX, y: event.clientY, tx: this.transform.x, ty: this.transform.y, moved: false };
    });
    window.addEventListener("mousemove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
      if (drag.moved) { this.transform.x = drag.tx + dx; this.transform.y = drag.ty + dy; this.apply(); }
    });
    window.addEventListener("mouseup", (event) => {
      if (drag && !drag.moved) {
        const target = event.target.closest ? event.target.closest("[data-key]") : null;
        onClick(target ? target.getAttribute("data-key") : null, event);
      }
      drag = null;
    });
    this.svg.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = this.svg.getBoundingClientRect();
      this.zoomAt(event.clientX - box.left, event.clientY - box.top, Math.exp(-event.deltaY * 0.0015));
    }, { passive: false });
    const jump = (event) => {
      const box = this.minimap.getBoundingClientRect();
      const m = this.minimapScale;
      const x = (event.clientX - box.left - m.x) / m.scale, y = (event.clientY - box.top - m.y) / m.scale;
      this.centerOn({ x, y, w: 0, h: 0 });
    };
    let mapDrag = false;
    this.minimap.addEventListener("mousedown", (event) => { mapDrag = true; jump(event); event.stopPropagation(); });
    window.addEventListener("mousemove", (event) => { if (mapDrag) jump(event); });
    window.addEventListener("mouseup", () => { mapDrag = false; });
  }

  drawMinimapBase() {
    const canvas = this.minimap, context = canvas.getContext("2d");
    const scale = Math.min((canvas.width - 8) / this.bounds.width, (canvas.height - 8) / this.bounds.height);
    this.minimapScale = { scale, x: (canvas.width - this.bounds.width * scale) / 2, y: 4 };
    const base = document.createElement("canvas");
    base.width = canvas.width; base.height = canvas.height;
    const paint = base.getContext("2d");
    paint.fillStyle = "#ffffff";
    paint.fillRect(0, 0, base.width, base.height);
    const colours = { module: "#c9c9c9", backward: "#e6a5a5", optimizer: "#a9cf9b", loss: "#f0d58c", combine: "#f3c08f" };
    for (const rect of this.placed.values()) {
      const item = rect.item;
      const m = this.minimapScale;
      if (item.leaves !== undefined && rect.open) {
        paint.strokeStyle = colours[item.kind] || "#bbbbbb";
        paint.strokeRect(m.x + rect.x * scale, m.y + rect.y * scale, rect.w * scale, rect.h * scale);
      } else {
        paint.fillStyle = item.leaves !== undefined ? (colours[item.kind] || "#cccccc") : item.role === "backward" ? "#e06666" : "#888888";
        paint.fillRect(m.x + rect.x * scale, m.y + rect.y * scale, Math.max(1, rect.w * scale), Math.max(1, rect.h * scale));
      }
    }
    this.minimapBase = base;
  }

  drawMinimapView() {
    if (!this.minimapBase) return;
    const context = this.minimap.getContext("2d");
    context.drawImage(this.minimapBase, 0, 0);
    const box = this.svg.getBoundingClientRect(), t = this.transform, m = this.minimapScale;
    context.strokeStyle = "#1a73e8";
    context.lineWidth = 2;
    context.strokeRect(m.x + (-t.x / t.scale) * m.scale, m.y + (-t.y / t.scale) * m.scale,
                       (box.width / t.scale) * m.scale, (box.height / t.scale) * m.scale);
  }
};
