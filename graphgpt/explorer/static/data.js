/* The explorer's data: unpacks the model the page carries (gzip, base64; graphgpt/explorer/model.py) and builds,
   for one graph, its values with named fields, its box tree, and per-stage views (which values exist, their
   operands, counts and FLOPs per box). Everything here is per page: no state outside the objects returned. */
"use strict";
var GraphExplorer = window.GraphExplorer || {};
window.GraphExplorer = GraphExplorer;

GraphExplorer.loadModel = async function (elementId) {
  const text = document.getElementById(elementId).textContent.trim();
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
};

/* One graph of the model, ready to draw. values[i]: {index, id, label, kind, op, type, role, box, source, module,
   flops, bytes, differentiates, saved, variants, plan, attributes, operandsAll, kernel (the generated kernel computing
   it, if any: {number, source, computed})}. boxes[b]: {index, name, path,
   parent, kind, twin, childBoxes, leaves, depth}; the root is boxes.root. */
GraphExplorer.buildGraph = function (model, graphIndex) {
  const raw = model.graphs[graphIndex];
  const strings = model.strings;
  const field = {};
  model.fields.forEach((name, position) => { field[name] = position; });
  const root = { index: -1, name: "", path: "", parent: null, kind: "root", twin: -1, childBoxes: [], leaves: [],
                 depth: 0 };
  const boxes = raw.boxes.map((row, index) => ({
    index, name: row[0], parentIndex: row[1], kind: model.box_kinds[row[2]], twinIndex: row[3],
    childBoxes: [], leaves: [], expanded: false,
  }));
  for (const box of boxes) {
    box.parent = box.parentIndex >= 0 ? boxes[box.parentIndex] : root;
    box.parent.childBoxes.push(box);
    box.twin = box.twinIndex >= 0 ? boxes[box.twinIndex] : null;
  }
  for (const box of boxes) {  // parents come before children in the model's order
    box.depth = box.parent.depth + 1;
    box.path = box.parent === root ? box.name : `${box.parent.path} / ${box.name}`;
  }
  for (const box of boxes) if (box.twin) box.twin.backwardTwin = box;
  const values = raw.values.map((row, index) => {
    const value = {
      index, id: row[field.id], label: row[field.label], kind: model.kinds[row[field.kind]],
      op: strings[row[field.op]], type: strings[row[field.type]], role: strings[row[field.role]],
      box: row[field.box] >= 0 ? boxes[row[field.box]] : root, source: strings[row[field.source]],
      module: strings[row[field.module]], flops: row[field.flops], bytes: row[field.bytes],
      differentiates: row[field.differentiates], saved: row[field.saved], variants: row[field.variants],
      plan: row[field.plan], attributes: strings[row[field.attributes]],
    };
    const operands = new Set();
    for (const variant of value.variants) {
      for (const operand of variant[1]) operands.add(operand);
      variant.op = strings[variant[5]];
      variant.type = strings[variant[6]];
      variant.attributes = strings[variant[7]];
    }
    value.operandsAll = Array.from(operands);
    value.box.leaves.push(value);
    return value;
  });
  const kernels = (raw.kernels || []).map(([number, source, computed]) => ({ number, source, computed }));
  for (const kernel of kernels) for (const position of kernel.computed) values[position].kernel = kernel;
  const differentiatedBy = new Map();  // forward value index -> backward values differentiating it
  for (const value of values) {
    if (value.differentiates >= 0) {
      if (!differentiatedBy.has(value.differentiates)) differentiatedBy.set(value.differentiates, []);
      differentiatedBy.get(value.differentiates).push(value);
    }
  }
  // Static values: parameters, constants and what is computed from them alone (the causal mask's slice). One read
  // by many modules (after common subexpressions merge) is drawn light and left out of the layout (layout.js).
  const isStatic = new Uint8Array(values.length);
  for (let pass = 0; pass < 2; pass += 1) {  // values created by a pass come last: a second sweep settles them
    for (const value of values) {
      isStatic[value.index] = value.kind === "param" || value.op === "constant"
        || (value.kind === "node" && value.operandsAll.length > 0 && value.operandsAll.every((i) => isStatic[i])) ? 1 : 0;
    }
  }
  for (const value of values) value.isStatic = isStatic[value.index] === 1;
  const readers = values.map(() => []);
  for (const value of values) for (const operand of value.operandsAll) readers[operand].push(value);
  return { raw, name: raw.name, values, boxes, root, stages: raw.stages, differentiatedBy, readers,
           buffers: raw.buffers, updates: raw.updates, viewOps: new Set(raw.view_ops), kernels };
};

/* The step the page shows: a stage index, or stages.length for "planned" (the last stage with its memory plan). */
GraphExplorer.stageView = function (graph, step) {
  const last = graph.stages.length - 1;
  const stage = Math.min(step, last);
  const bit = 1 << stage;
  const present = new Uint8Array(graph.values.length);
  const operands = new Array(graph.values.length);
  for (const value of graph.values) {
    for (const variant of value.variants) {
      if (variant[0] & bit) { present[value.index] = 1; operands[value.index] = variant; break; }
    }
  }
  const record = graph.stages[stage];
  const marks = new Map();  // value index -> 'created' | 'removed' | 'fused'
  if (step > 0 && step <= last) {
    for (const index of record.created) marks.set(index, record.fused ? "fused" : "created");
    for (const index of record.removed) marks.set(index, "removed");
  }
  // The value as this step has it (its last form where this step has it not: a removed node, drawn faint).
  const variantOf = (value) => operands[value.index] || value.variants[value.variants.length - 1];
  const view = { step, stage, bit, present, operands, marks, record, planned: step > last, variantOf,
                 isSaved: (value) => (value.saved & bit) !== 0, stats: new Map() };
  // Per box: nodes, FLOPs and bytes of the values present, and the changes this step made inside it.
  const blank = () => ({ nodes: 0, flops: 0, bytes: 0, created: 0, removed: 0, saved: 0, savedBytes: 0 });
  view.stats.set(graph.root, blank());
  for (const box of graph.boxes) view.stats.set(box, blank());
  for (const value of graph.values) {
    const here = present[value.index] === 1;
    const mark = marks.get(value.index);
    if (!here && !mark) continue;
    const saved = here && view.isSaved(value);
    for (let box = value.box; box; box = box.parent) {
      const stats = view.stats.get(box);
      if (here && value.kind === "node") {  // this stage's FLOPs and bytes: a pass may change a node it keeps
        const variant = operands[value.index];
        stats.nodes += 1;
        stats.flops += typeof variant[3] === "number" ? variant[3] : 0;
        stats.bytes += typeof variant[4] === "number" ? variant[4] : 0;
      }
      if (saved) { stats.saved += 1; stats.savedBytes += value.bytes; }
      if (mark === "removed") stats.removed += 1;
      else if (mark) stats.created += 1;
    }
  }
  return view;
};

GraphExplorer.formatBytes = function (count) {
  if (typeof count !== "number") return `${count} B`;
  const units = ["B", "KiB", "MiB", "GiB"];
  let unit = 0;
  while (count >= 1024 && unit < units.length - 1) { count /= 1024; unit += 1; }
  return unit === 0 ? `${count} B` : `${count.toFixed(1)} ${units[unit]}`;
};

GraphExplorer.formatFlops = function (count) {
  if (typeof count !== "number") return `${count} FLOP`;
  if (count >= 1e9) return `${(count / 1e9).toFixed(2)} GFLOP`;
  if (count >= 1e6) return `${(count / 1e6).toFixed(2)} MFLOP`;
  if (count >= 1e3) return `${(count / 1e3).toFixed(1)} kFLOP`;
  return `${count} FLOP`;
};
