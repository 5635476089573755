/* Layout: each expanded box lays out its own children (sub-boxes drawn at their current size, and its nodes) with
   dagre's layered layout, so expanding or collapsing a box lays out again only that box and the boxes holding it.
   Forward boxes run top to bottom, backward boxes bottom to top (gradients flow back up), and at the top level
   each module's backward box sits beside its forward box, at its height; the optimizer is a column to the right. */
"use strict";

GraphExplorer.Layout = class {
  constructor(graph, measure) {
    this.graph = graph;
    this.measure = measure;  // (text, style: plain, bold or heading) -> width in pixels as drawn
    this.layouts = new Map();  // container (box or root) -> {items: Map(key -> rect), width, height}
    for (const value of graph.values) {
      const chain = [];
      for (let box = value.box; box !== graph.root; box = box.parent) chain.unshift(box);
      value.chain = chain;
    }
    graph.root.members = graph.values;
    for (const box of graph.boxes) box.members = [];
    for (const value of graph.values) for (const box of value.chain) box.members.push(value);
    this.leafSizes = graph.values.map((value) => this.leafSize(value));
    this.statsWidth = measure("9999 nodes · 999.99 MFLOP · 999.9 MiB");
  }

  static get PAD() { return 12; }
  static get HEADER() { return 34; }
  static get FAN_OUT() { return 2; }

  /* Wide enough for the node's label in every stage (one layout for all of them). */
  leafSize(value) {
    let width = 40;
    for (const variant of value.variants) {
      const title = value.kind === "node" ? `${value.label} ${variant.op}` : value.label;
      const detail = value.saved ? `${variant.type} · saved ${GraphExplorer.formatBytes(variant[4])}` : `${variant.type} · buf 9999`;
      width = Math.max(width, this.measure(title, "bold"), this.measure(detail));
    }
    return { w: Math.ceil(width + 18), h: 36 };
  }

  /* The item a value is drawn as inside `container`: itself, or the child box holding it. */
  itemOf(container, value) {
    const depth = container === this.graph.root ? 0 : container.depth;
    if (value.box === container) return value;
    if (depth > 0 && value.chain[depth - 1] !== container) return null;  // outside the container
    return value.chain[depth] || null;
  }

  size(item) {
    if (item.kind !== undefined && item.leaves === undefined) return this.leafSizes[item.index];  // a value
    if (!item.expanded) {
      return { w: Math.ceil(Math.max(this.measure(item.name, "heading") + 30, this.statsWidth) + 20), h: 48 };
    }
    if (!this.layouts.has(item)) this.layoutContainer(item);  // opened while hidden (a search revealed it)
    const own = this.layouts.get(item);
    return { w: Math.max(own.width + 2 * GraphExplorer.Layout.PAD, this.measure(item.name, "heading") + 240),
             h: own.height + GraphExplorer.Layout.HEADER + GraphExplorer.Layout.PAD };
  }

  static key(item) { return item.leaves === undefined ? `v${item.index}` : `b${item.index}`; }

  /* Lay out one expanded container's children; their sizes must be known (sub-boxes laid out first). */
  layoutContainer(container) {
    const items = [...container.childBoxes, ...container.leaves];
    const key = GraphExplorer.Layout.key;
    // A static value read by many items here (the causal mask, read by every block) would pull them apart: it
    // takes no part in the layout, and is drawn lighter (draw.js).
    const readersOf = new Map();  // static value -> the items here reading it
    for (const value of container.members) {
      const target = this.itemOf(container, value);
      for (const operand of value.operandsAll) {
        const source = this.graph.values[operand];
        if (source.isStatic && target) readersOf.set(source, (readersOf.get(source) || new Set()).add(target));
      }
    }
    const edges = new Map();
    for (const value of container.members) {
      const target = this.itemOf(container, value);
      for (const operand of value.operandsAll) {
        const sourceValue = this.graph.values[operand];
        if (GraphExplorer.Drawing.secondary(sourceValue, value) && value.box !== container) continue;
        if (sourceValue.isStatic && readersOf.get(sourceValue).size > GraphExplorer.Layout.FAN_OUT) continue;
        const source = this.itemOf(container, sourceValue);
        if (source && target && source !== target) edges.set(`${key(source)}>${key(target)}`, [source, target]);
      }
    }
    const twins = container === this.graph.root ? items.filter((item) => item.kind === "backward"
                                                                  || item.kind === "optimizer" || item.kind === "combine") : [];
    const main = items.filter((item) => !twins.includes(item));
    const rankdir = container.kind === "backward" ? "BT" : "TB";
    const rects = this.dagreLayout(main, [...edges.values()], rankdir);
    let width = 0, height = 0;
    for (const rect of rects.values()) { width = Math.max(width, rect.x + rect.w); height = Math.max(height, rect.y + rect.h); }
    if (twins.length) ({ width, height } = this.placeColumns(twins, rects, width, height));
    this.layouts.set(container, { items: rects, width, height });
  }

  dagreLayout(items, edges, rankdir) {
    const rects = new Map();
    if (!items.length) return rects;
    const layered = new dagre.graphlib.Graph();
    layered.setGraph({ rankdir, nodesep: 22, ranksep: 34, marginx: 0, marginy: 0 });
    layered.setDefaultEdgeLabel(() => ({}));
    for (const item of items) {
      const size = this.size(item);
      layered.setNode(GraphExplorer.Layout.key(item), { width: size.w, height: size.h });
    }
    for (const [source, target] of edges) {
      const from = GraphExplorer.Layout.key(source), to = GraphExplorer.Layout.key(target);
      if (layered.hasNode(from) && layered.hasNode(to)) layered.setEdge(from, to);
    }
    dagre.layout(layered);
    for (const item of items) {
      const placed = layered.node(GraphExplorer.Layout.key(item));
      rects.set(GraphExplorer.Layout.key(item), { item, x: placed.x - placed.width / 2, y: placed.y - placed.height / 2,
                                                  w: placed.width, h: placed.height });
    }
    return rects;
  }

  /* Backward boxes in a column right of the forward ones, each at its forward twin's height (pushed down where
     two would overlap); the optimizer and a combine in a column right of that. */
  placeColumns(twins, rects, width, height) {
    const gap = 90;
    const backward = twins.filter((item) => item.kind === "backward");
    const wanted = (item) => {
      const twin = item.twin && rects.get(GraphExplorer.Layout.key(item.twin));
      if (twin) return twin.y;
      const targets = item.members.map((value) => value.differentiates).filter((index) => index >= 0)
        .map((index) => this.itemOf(this.graph.root, this.graph.values[index]))
        .map((owner) => owner && rects.get(GraphExplorer.Layout.key(owner))).filter(Boolean);
      return targets.length ? Math.min(...targets.map((rect) => rect.y)) : height;
    };
    const order = backward.map((item) => ({ item, y: wanted(item) })).sort((a, b) => a.y - b.y);
    const column = width + (order.length ? gap : 0);
    let bottom = -Infinity, right = width;
    for (const { item, y } of order) {
      const size = this.size(item);
      const top = Math.max(y, bottom + 16);
      rects.set(GraphExplorer.Layout.key(item), { item, x: column, y: top, w: size.w, h: size.h });
      bottom = top + size.h;
      right = Math.max(right, column + size.w);
      height = Math.max(height, bottom);
    }
    let top = 0;
    for (const item of twins.filter((entry) => entry.kind !== "backward")) {
      const size = this.size(item);
      rects.set(GraphExplorer.Layout.key(item), { item, x: right + gap, y: top, w: size.w, h: size.h });
      top += size.h + 24;
      height = Math.max(height, top);
    }
    const last = twins.filter((entry) => entry.kind !== "backward").map((item) => rects.get(GraphExplorer.Layout.key(item)));
    for (const rect of last) right = Math.max(right, rect.x + rect.w);
    return { width: right, height };
  }

  /* After `box` was expanded or collapsed: lay out it (if open) and every box holding it. */
  relayoutFrom(box) {
    for (let container = box; container; container = container.parent) {
      if (container === this.graph.root || container.expanded) this.layoutContainer(container);
    }
  }

  relayoutAll() {
    const open = this.graph.boxes.filter((box) => box.expanded && this.allOpen(box)).sort((a, b) => b.depth - a.depth);
    for (const box of open) this.layoutContainer(box);
    this.layoutContainer(this.graph.root);
  }

  allOpen(box) {
    for (let up = box; up !== this.graph.root; up = up.parent) if (!up.expanded) return false;
    return true;
  }

  /* Absolute rectangles of everything visible: {key -> {item, x, y, w, h, open}}, in drawing order. */
  place() {
    const placed = new Map();
    const columns = { backward: 1, optimizer: 2, combine: 2 };
    const visit = (container, originX, originY, column) => {
      const own = this.layouts.get(container);
      for (const [key, rect] of own.items) {
        const absolute = { item: rect.item, x: originX + rect.x, y: originY + rect.y, w: rect.w, h: rect.h,
                           open: rect.item.leaves !== undefined && rect.item.expanded,
                           column: column !== undefined ? column : columns[rect.item.kind] || 0 };
        placed.set(key, absolute);
        if (absolute.open) visit(rect.item, absolute.x + GraphExplorer.Layout.PAD, absolute.y + GraphExplorer.Layout.HEADER, absolute.column);
      }
    };
    visit(this.graph.root, 0, 0);
    const root = this.layouts.get(this.graph.root);
    return { placed, width: root.width, height: root.height };
  }
};
