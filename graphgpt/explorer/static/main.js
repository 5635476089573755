/* The explorer: builds the page's parts, keeps what the user chose (graph, pass step, open boxes, selection) and
   ties layout, drawing and panels together. Timings for tests and curious users: window.explorerTiming.openMs
   (navigation start to the first drawing painted) and .expandMs (each expand or collapse, click to paint). */
"use strict";

GraphExplorer.App = class {
  constructor(model) {
    this.model = model;
    this.selected = null;
    const canvas = document.createElement("canvas").getContext("2d");
    const cache = new Map();
    // text -> its width in pixels, in the style the drawing gives it (explorer.css): a leaf's name is bold, a
    // box's name bold and larger, the rest plain. Measured in another style, a long name overran its box.
    const fonts = { plain: "11px", bold: "bold 11px", heading: "bold 12px" };
    this.measure = (text, style = "plain") => {
      const key = `${style}\u0000${text}`;
      if (!cache.has(key)) {
        canvas.font = `${fonts[style]} 'DejaVu Sans', Arial, sans-serif`;
        cache.set(key, canvas.measureText(text).width);
      }
      return cache.get(key);
    };
    this.buildPage();
    this.drawing = new GraphExplorer.Drawing(document.getElementById("graph"), document.getElementById("viewport"),
                                             document.getElementById("minimap"));
    this.drawing.attachMouse((key) => this.clicked(key));
    this.openGraph(model.open.graph, model.open.stage);
    this.wire();
  }

  buildPage() {
    const E = GraphExplorer.escape;
    const options = this.model.graphs.map((graph, index) => `<option value="${index}">${E(graph.name)}</option>`).join("");
    document.body.innerHTML = `
<header id="toolbar"><span class="title">${E(this.model.title || "graph explorer")}</span>
  <select id="graph-choice" title="the graphs that run">${options}</select>
  <button id="expand-all">Expand all</button><button id="collapse-all">Collapse all</button><button id="fit">Fit</button>
  <span class="search"><input id="search" placeholder="search op, module path or %value" autocomplete="off">
  <div id="search-results" hidden></div></span></header>
<aside id="passes"><h2>Passes</h2>
  <div class="stepper"><button id="step-back" title="previous step (←)">◀</button><span id="step-name"></span>
  <button id="step-next" title="next step (→)">▶</button></div>
  <div class="legend"><span class="created">created</span><span class="removed">removed</span><span class="fused">fused</span><span class="absent">not there yet / gone</span></div>
  <table id="pass-table"></table>
  <div class="legend roles"><span class="r-forward">forward</span><span class="r-backward">backward</span><span class="r-optimizer">optimizer</span><span class="r-recompute">recomputed</span><span class="r-input">input</span><span class="r-param">parameter</span><span class="saved">saved activation</span></div>
</aside>
<main id="canvas"><svg id="graph"><g id="viewport"></g></svg><canvas id="minimap" width="220" height="160"></canvas></main>
<aside id="details"></aside>`;
    document.getElementById("graph-choice").hidden = this.model.graphs.length < 2;
  }

  openGraph(index, stage) {
    this.graphIndex = index;
    this.graph = GraphExplorer.buildGraph(this.model, index);
    this.layout = new GraphExplorer.Layout(this.graph, this.measure);
    this.layout.layoutContainer(this.graph.root);
    this.selected = null;
    this.setStep(stage === null || stage === undefined ? this.graph.stages.length - 1 : stage, false);
    document.getElementById("graph-choice").value = String(index);
    this.render();
    this.drawing.fit();
  }

  setStep(step, draw = true) {
    const steps = this.graph.stages.length + 1;
    this.step = Math.max(0, Math.min(steps - 1, step));
    this.view = GraphExplorer.stageView(this.graph, this.step);
    GraphExplorer.Panels.passes(this);
    if (draw) this.render();
  }

  itemByKey(key) {
    if (!key) return null;
    const index = Number(key.slice(1));
    return key[0] === "v" ? this.graph.values[index] : this.graph.boxes[index];
  }

  selectedItem() { return this.itemByKey(this.selected); }

  /* The saved activations a set of backward nodes read at this step (forward values kept for the backward pass),
     directly or through backward views of them (the transposed input of a matmul's weight gradient). */
  savedReadBy(backward) {
    const found = new Map();
    const visit = (node, depth) => {
      const variant = this.view.operands[node.index];
      for (const operand of variant ? variant[1] : []) {
        const value = this.graph.values[operand];
        if (this.view.isSaved(value)) found.set(value.index, value);
        else if (depth < 4 && value.kind === "node" && value.role !== "forward" && this.graph.viewOps.has(value.op)) visit(value, depth + 1);
      }
    };
    for (const node of backward) visit(node, 0);
    return [...found.values()];
  }

  highlight() {
    const result = { classes: new Map(), edges: new Set(), links: [] };
    const key = GraphExplorer.Layout.key, visible = GraphExplorer.Drawing.visibleItem;
    const add = (item, name) => {
      const itemKey = key(item);
      if (!result.classes.has(itemKey)) result.classes.set(itemKey, new Set());
      result.classes.get(itemKey).add(name);
    };
    const item = this.selectedItem();
    if (!item) return result;
    if (item.leaves !== undefined) {
      add(item, "selected");
      if (item.backwardTwin) add(item.backwardTwin, "hl-backward");
      if (item.twin) add(item.twin, "hl-forward");
      return result;
    }
    const shown = visible(item);
    add(shown, "selected");
    const variant = this.view.operands[item.index];
    for (const operand of variant ? variant[1] : []) result.edges.add(`${key(visible(this.graph.values[operand]))}>${key(shown)}`);
    for (const reader of this.graph.readers[item.index]) result.edges.add(`${key(shown)}>${key(visible(reader))}`);
    const backward = (this.graph.differentiatedBy.get(item.index) || []).filter((b) => this.view.present[b.index]);
    for (const node of backward) { add(visible(node), "hl-backward"); result.links.push([item, node]); }
    let readers = backward;
    if (item.differentiates >= 0) {
      const forward = this.graph.values[item.differentiates];
      add(visible(forward), "hl-forward");
      result.links.push([forward, item]);
      readers = [item];
    }
    for (const saved of this.savedReadBy(readers)) add(visible(saved), "hl-saved");
    return result;
  }

  render() {
    this.drawing.draw(this.graph, this.layout, this.view, this.highlight());
    GraphExplorer.Panels.details(this);
  }

  /* Keep the item at the same place on screen across a change of layout. */
  anchored(item, change) {
    const key = GraphExplorer.Layout.key(item);
    const before = this.drawing.placed.get(key);
    const screen = before && this.drawing.toScreen(before.x, before.y);
    change();
    const after = this.drawing.placed.get(key);
    if (screen && after) {
      const t = this.drawing.transform;
      t.x = screen.x - after.x * t.scale;
      t.y = screen.y - after.y * t.scale;
      this.drawing.apply();
    }
  }

  timed(what, action) {
    const started = performance.now();
    action();
    requestAnimationFrame(() => setTimeout(() => {
      window.explorerTiming[what].push(performance.now() - started);
    }, 0));
  }

  toggle(box) {
    this.timed("expandMs", () => this.anchored(box, () => {
      box.expanded = !box.expanded;
      this.layout.relayoutFrom(box);
      this.render();
    }));
  }

  /* Open every box holding an item, select it and bring it to the middle of the view. */
  goTo(key) {
    const item = this.itemByKey(key);
    if (!item) return;
    const chain = item.leaves === undefined ? item.chain : this.boxChain(item).slice(0, -1);
    let deepest = null;
    for (const box of chain) if (!box.expanded) { box.expanded = true; deepest = box; }
    if (deepest) this.layout.relayoutFrom(chain[chain.length - 1]);
    this.selected = key;
    this.render();
    const rect = this.drawing.placed.get(key);
    if (rect) this.drawing.centerOn(rect, 0.9);
  }

  boxChain(box) {
    const chain = [];
    for (let up = box; up !== this.graph.root; up = up.parent) chain.unshift(up);
    return chain;
  }

  revealBackward() {
    const item = this.selectedItem();
    const backward = (this.graph.differentiatedBy.get(item.index) || []).filter((b) => this.view.present[b.index]);
    this.timed("expandMs", () => this.anchored(GraphExplorer.Drawing.visibleItem(item), () => {
      for (const node of backward) for (const box of node.chain) box.expanded = true;
      this.layout.relayoutAll();
      this.render();
    }));
    this.showAll([item, ...backward, ...this.savedReadBy(backward)]);
  }

  /* Zoom and pan so that every one of these values is in view. */
  showAll(values) {
    const rects = values.map((value) => this.drawing.placed.get(GraphExplorer.Layout.key(GraphExplorer.Drawing.visibleItem(value)))).filter(Boolean);
    if (!rects.length) return;
    const left = Math.min(...rects.map((r) => r.x)), top = Math.min(...rects.map((r) => r.y));
    const right = Math.max(...rects.map((r) => r.x + r.w)), bottom = Math.max(...rects.map((r) => r.y + r.h));
    const box = this.drawing.svg.getBoundingClientRect();
    const scale = Math.min(1, (box.width - 60) / (right - left), (box.height - 60) / (bottom - top));
    this.drawing.transform = { x: (box.width - (right - left) * scale) / 2 - left * scale,
                               y: (box.height - (bottom - top) * scale) / 2 - top * scale, scale };
    this.drawing.apply();
  }

  clicked(key) {
    const item = this.itemByKey(key);
    this.selected = key;
    if (item && item.leaves !== undefined) { this.toggle(item); return; }
    this.render();
  }

  setAll(expanded) {
    this.timed("expandMs", () => {
      for (const box of this.graph.boxes) box.expanded = expanded;
      this.layout.relayoutAll();
      this.render();
      this.drawing.fit();
    });
  }

  wire() {
    const on = (id, event, handler) => document.getElementById(id).addEventListener(event, handler);
    on("expand-all", "click", () => this.setAll(true));
    on("collapse-all", "click", () => this.setAll(false));
    on("fit", "click", () => this.drawing.fit());
    on("step-back", "click", () => this.setStep(this.step - 1));
    on("step-next", "click", () => this.setStep(this.step + 1));
    on("graph-choice", "change", (event) => this.openGraph(Number(event.target.value)));
    on("pass-table", "click", (event) => {
      const row = event.target.closest("tr[data-step]");
      if (row) this.setStep(Number(row.getAttribute("data-step")));
    });
    const search = document.getElementById("search");
    let matches = [];
    search.addEventListener("input", () => {
      matches = GraphExplorer.Panels.search(this.graph, search.value);
      GraphExplorer.Panels.searchResults(this, search.value.trim() ? matches : null);
    });
    search.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && matches.length) {
        this.goTo(GraphExplorer.Layout.key(matches[0]));
        GraphExplorer.Panels.searchResults(this, null);
      } else if (event.key === "Escape") GraphExplorer.Panels.searchResults(this, null);
    });
    document.body.addEventListener("click", (event) => {
      const target = event.target.closest("[data-goto],[data-toggle],[data-reveal]");
      if (!target) return;
      event.preventDefault();
      if (target.hasAttribute("data-goto")) {
        this.goTo(target.getAttribute("data-goto"));
        GraphExplorer.Panels.searchResults(this, null);
      } else if (target.hasAttribute("data-toggle")) this.toggle(this.itemByKey(target.getAttribute("data-toggle")));
      else this.revealBackward();
    });
    window.addEventListener("keydown", (event) => {
      if (event.target.tagName === "INPUT") return;
      if (event.key === "ArrowRight") this.setStep(this.step + 1);
      if (event.key === "ArrowLeft") this.setStep(this.step - 1);
    });
    window.addEventListener("resize", () => this.drawing.apply());
  }
};

window.explorerTiming = { openMs: null, expandMs: [] };
(async function start() {
  try {
    const model = await GraphExplorer.loadModel("explorer-model");
    window.explorer = new GraphExplorer.App(model);
    requestAnimationFrame(() => setTimeout(() => {
      window.explorerTiming.openMs = performance.now();
      document.body.setAttribute("data-ready", "1");
    }, 0));
  } catch (error) {
    document.body.textContent = `graph explorer: could not open the graph (${error}). It needs a browser with ` +
      "DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 or newer).";
    throw error;
  }
})();
