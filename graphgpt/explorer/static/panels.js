/* The panels around the drawing: the details of the selected node or box (its text IR line, op, type, attributes,
   source line, module path, FLOPs, bytes, planned buffer and live range, the generated kernel running it and its
   source; the backward nodes differentiating a
   forward node and the saved activations they read, or the forward node a backward node differentiates), the
   search box and its results, and the pass stepper with its per-pass table. Each renders into its own element
   from the explorer's state; links carry data-goto="<item key>" for the explorer to follow. */
"use strict";

GraphExplorer.Panels = {
  link(value) {
    const E = GraphExplorer.escape;
    const what = value.kind === "node" ? `${value.op}${value.module ? " · " + value.module : ""}` : value.kind;
    return `<a href="#" data-goto="v${value.index}">${E(value.label)}</a> <span class="muted">${E(what)}</span>`;
  },

  rows(pairs) {
    const E = GraphExplorer.escape;
    return "<table class=\"facts\">" + pairs.filter(([, text]) => text !== "" && text !== undefined)
      .map(([name, html]) => `<tr><th>${E(name)}</th><td>${html}</td></tr>`).join("") + "</table>";
  },

  planText(graph, value) {
    const plan = value.plan;
    const steps = graph.stages[graph.stages.length - 1].nodes;
    if (!plan) return "not in the graph that runs (removed by a pass)";
    const [kind, buffer, madeAt, lastAt, shares] = plan;
    const life = madeAt < 0 ? `from the start to step ${lastAt} of ${steps}` : `live from step ${madeAt} to step ${lastAt} of ${steps}`;
    const other = shares >= 0 ? graph.values[shares].label : "";
    const described = {
      buffer: `buffer #${buffer} of ${graph.buffers.length} (${GraphExplorer.formatBytes(graph.buffers[buffer])})`,
      view: `a view of ${other} (no memory of its own)`,
      into_param: `computed straight into parameter ${other}`,
      constant: "a constant (kept with the schedule)",
      input: "a graph input (the caller's array)", param: "a parameter (an array the model or the optimizer holds)",
    }[kind] || kind;
    return `${GraphExplorer.escape(described)}, ${life}`;
  },

  valueDetails(app, value) {
    const E = GraphExplorer.escape, P = GraphExplorer.Panels, view = app.view, graph = app.graph;
    const variant = view.variantOf(value);
    const present = graph.stages.map((stage, index) => (value.variants.some((v) => v[0] & (1 << index)) ? stage.name : null)).filter(Boolean);
    let html = `<h2>${E(value.label)} ${E(value.kind === "node" ? variant.op : value.kind)}</h2>`;
    if (!view.present[value.index]) html += `<p class="warn">not in the graph at this step (${E(view.record.name)})</p>`;
    html += `<pre class="ir">${E(variant[2])}</pre>`;
    const source = value.source ? `<code>${E(value.source)}</code>` : "";
    html += P.rows([
      ["op", value.kind === "node" ? E(variant.op) : ""], ["type", E(variant.type)], ["attributes", E(variant.attributes)],
      ["role", E(value.role)], ["module", E(value.module || (value.kind === "node" ? "(top level)" : ""))],
      ["box", E(value.box.path || "(top)")], ["source", source],
      ["FLOPs", value.kind === "node" ? E(GraphExplorer.formatFlops(variant[3])) : ""],
      ["bytes", E(GraphExplorer.formatBytes(variant[4]))],
      ["saved", view.isSaved(value) ? `saved activation: kept from the forward pass for the backward, ${E(GraphExplorer.formatBytes(value.bytes))}` : ""],
      ["planned", P.planText(graph, value)], ["in stages", E(present.join(", "))],
      ["runs as", value.kernel ? E(`generated kernel ${value.kernel.number} (compiled.kernels()), shared by ` +
        `${value.kernel.computed.length} node${value.kernel.computed.length > 1 ? "s" : ""}`) : ""],
    ]);
    if (value.kernel) html += `<details class="kernel"><summary>kernel ${value.kernel.number} source</summary>` +
      `<pre class="ir">${E(value.kernel.source)}</pre></details>`;
    const operands = (variant[1] || []).map((index) => `<li>${P.link(graph.values[index])}</li>`).join("");
    if (operands) html += `<h3>Operands</h3><ul>${operands}</ul>`;
    const readers = graph.readers[value.index].filter((reader) => view.present[reader.index]);
    if (readers.length) html += `<h3>Read by ${readers.length}</h3><ul>${readers.slice(0, 12).map((r) => `<li>${P.link(r)}</li>`).join("")}${readers.length > 12 ? "<li>…</li>" : ""}</ul>`;
    const backward = (graph.differentiatedBy.get(value.index) || []).filter((b) => view.present[b.index]);
    if (backward.length) {
      const saved = app.savedReadBy(backward);
      const total = saved.reduce((sum, s) => sum + s.bytes, 0);
      html += `<h3 class="bwd">Differentiated by ${backward.length} backward node${backward.length > 1 ? "s" : ""}</h3>` +
        `<button data-reveal="backward">Show them</button><ul>${backward.map((b) => `<li>${P.link(b)}</li>`).join("")}</ul>`;
      if (saved.length) html += `<h3 class="saved">Saved activations they read: ${E(GraphExplorer.formatBytes(total))}</h3><ul>` +
        saved.map((s) => `<li>${P.link(s)} <b>${E(GraphExplorer.formatBytes(s.bytes))}</b></li>`).join("") + "</ul>";
    }
    if (value.differentiates >= 0) {
      const forward = graph.values[value.differentiates];
      html += `<h3 class="fwd">Differentiates</h3><ul><li>${P.link(forward)}</li></ul><button data-goto="v${forward.index}">Go to the forward node</button>`;
    }
    return html;
  },

  boxDetails(app, box) {
    const E = GraphExplorer.escape, P = GraphExplorer.Panels;
    const stats = app.view.stats.get(box);
    let html = `<h2>${E(box.name)}</h2><p class="muted">${E(box.path)} · ${E(box.kind === "module" ? "module" : box.kind)}</p>`;
    html += P.rows([
      ["nodes", String(stats.nodes)], ["FLOPs", E(GraphExplorer.formatFlops(stats.flops))],
      ["bytes", E(GraphExplorer.formatBytes(stats.bytes))],
      ["saved", stats.saved ? `${stats.saved} saved activations, ${E(GraphExplorer.formatBytes(stats.savedBytes))}` : ""],
      ["this step", stats.removed || stats.created ? `${stats.removed} removed, ${stats.created} created` : ""],
    ]);
    html += `<button data-toggle="b${box.index}">${box.expanded ? "Collapse" : "Expand"}</button>`;
    if (box.backwardTwin) html += ` <button data-goto="b${box.backwardTwin.index}">Its backward: ${E(box.backwardTwin.name)}</button>`;
    if (box.twin) html += ` <button data-goto="b${box.twin.index}">Its forward: ${E(box.twin.name)}</button>`;
    return html;
  },

  details(app) {
    const element = document.getElementById("details");
    const item = app.selectedItem();
    if (!item) {
      element.innerHTML = "<h2>Details</h2><p class=\"muted\">Click a box to expand it, a node to see it here. " +
        "Drag to pan, wheel to zoom. A forward node lights up the backward nodes that differentiate it " +
        "(red) and the saved activations they read (amber).</p>";
      return;
    }
    element.innerHTML = item.leaves === undefined ? GraphExplorer.Panels.valueDetails(app, item) : GraphExplorer.Panels.boxDetails(app, item);
  },

  passes(app) {
    const E = GraphExplorer.escape, graph = app.graph, last = graph.stages.length - 1;
    const rows = graph.stages.map((stage, index) => [index, stage.name, stage.nodes, stage.flops, stage.planned, stage.changes || "-"]);
    rows.push([last + 1, "planned", graph.stages[last].nodes, graph.stages[last].flops, graph.stages[last].planned,
               `${graph.buffers.length} buffers`]);
    const mb = (bytes) => (typeof bytes === "number" ? (bytes / 2 ** 20).toFixed(2) : bytes);
    const mf = (flops) => (typeof flops === "number" ? (flops / 1e6).toFixed(1) : flops);
    document.getElementById("step-name").textContent = `${app.step + 1}/${rows.length}: ${rows[app.step][1]}`;
    document.getElementById("pass-table").innerHTML =
      "<tr><th>step</th><th>nodes</th><th>MFLOP</th><th>planned<br>MiB</th></tr>" +
      rows.map(([index, name, nodes, flops, planned, changes]) =>
        `<tr data-step="${index}" class="${index === app.step ? "current" : ""}"><td>${E(name)}` +
        `<div class="changes">${E(changes)}</div></td><td>${nodes}</td><td>${mf(flops)}</td><td>${mb(planned)}</td></tr>`).join("");
  },

  /* Values and boxes matching a query (op, module path, value name or box name), best first. */
  search(graph, query) {
    const q = query.trim().toLowerCase();
    if (!q) return [];
    const exact = [], starts = [], contains = [];
    for (const value of graph.values) {
      const label = value.label.toLowerCase();
      const fields = [label, value.op.toLowerCase(), value.module.toLowerCase()];
      if (label === q || label === "%" + q) exact.push(value);
      else if (fields.some((f) => f.startsWith(q))) starts.push(value);
      else if (fields.some((f) => f.includes(q))) contains.push(value);
    }
    const boxes = graph.boxes.filter((box) => box.path.toLowerCase().includes(q));
    return [...exact, ...boxes, ...starts, ...contains];
  },

  searchResults(app, matches) {
    const E = GraphExplorer.escape;
    const element = document.getElementById("search-results");
    if (!matches) { element.hidden = true; return; }
    element.hidden = false;
    element.innerHTML = matches.length ? `<div class="muted">${matches.length} match${matches.length > 1 ? "es" : ""}</div>` +
      matches.slice(0, 40).map((item) => (item.leaves === undefined
        ? `<div class="result" data-goto="v${item.index}">${E(item.label)} <b>${E(item.op || item.kind)}</b> <span class="muted">${E(item.box.path || "(top)")}</span></div>`
        : `<div class="result" data-goto="b${item.index}">▣ <b>${E(item.path)}</b> <span class="muted">${item.kind}</span></div>`)).join("")
      : "<div class=\"muted\">no match</div>";
  },
};
