// The status page: draws the graph once (Graphviz SVG from the server), then renders every
// snapshot the server pushes over Server-Sent Events. No external code: works offline.
"use strict";

const $ = (sel) => document.querySelector(sel);
const text = (value) => (value === null || value === undefined ? "-" : String(value));
const num = (value) => (typeof value === "number" ? value.toLocaleString("en") : text(value));
const shown = (value) => {
  if (value && typeof value === "object" && "size" in value) {
    return `${value.size} elements` + (value.items.length ? `: ${value.items.slice(0, 5).join(", ")}` : "");
  }
  return num(value);
};
const previous = new Map();  // what each variable showed last, to flash what changed

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren();
  for (const values of rows) {
    const tr = document.createElement("tr");
    values.forEach((v, i) => cell(tr, v, i === values.length - 1 ? "num" : ""));
    tbody.appendChild(tr);
  }
}

function renderVariables(vars) {
  const tbody = $("#variables tbody");
  tbody.replaceChildren();
  for (const v of vars) {
    const tr = document.createElement("tr");
    tr.id = `row-${v.id}`;
    cell(tr, v.id);
    cell(tr, v.type + (v.keyed ? " [keyed]" : ""));
    const value = v.keyed
      ? `${v.summary}` + (v.values.length ? ` (${v.values.slice(0, 5).map(([k, x]) => `${k}: ${shown(x)}`).join(", ")})` : "")
      : shown(v.value);
    const td = cell(tr, value, "value");
    td.dataset.variable = v.id;
    if (previous.has(v.id) && previous.get(v.id) !== value) {
      td.classList.add("changed");
      const node = document.getElementById(`var-${v.id}`);
      if (node) { node.classList.remove("changed"); void node.getBBox(); node.classList.add("changed"); }
    }
    previous.set(v.id, value);
    tbody.appendChild(tr);
    // The graph's third label line shows the same summary.
    const node = document.getElementById(`var-${v.id}`);
    if (node) {
      const lines = node.querySelectorAll("text");
      if (lines.length) lines[lines.length - 1].textContent = v.summary.slice(0, 40);
    }
  }
}

function renderTriggers(triggers) {
  const box = $("#triggers");
  box.replaceChildren();
  for (const t of triggers) {
    const h = document.createElement("h3");
    h.textContent = `${t.id} on ${t.variable}: fired ${t.fired} time(s)`;
    box.appendChild(h);
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>key</th><th>value</th><th>threshold</th><th>how close</th></tr></thead>";
    const tbody = document.createElement("tbody");
    for (const k of t.keys) {
      const tr = document.createElement("tr");
      cell(tr, k.key);
      cell(tr, shown(k.value), "num");
      cell(tr, text(k.threshold));
      const td = cell(tr, "");
      if (k.pct !== null) {
        const bar = document.createElement("span");
        bar.className = "bar";
        const fillSpan = document.createElement("span");
        fillSpan.style.width = `${k.pct}%`;
        bar.appendChild(fillSpan);
        td.appendChild(bar);
        td.appendChild(document.createTextNode(` ${k.pct.toFixed(1)}%`));
      }
      tbody.appendChild(tr);
    }
    table.appendChild(tbody);
    box.appendChild(table);
  }
}

function render(s) {
  $("#topology").textContent = s.topology;
  $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  renderVariables(s.variables);
  renderTriggers(s.triggers);
  $("#billing").textContent = `${num(s.billing.events)} billing event(s), total value ${num(s.billing.total)}`;
  fill($("#lag tbody"), s.lag.map((l) => [l.variable, l.partition, num(l.records)]));
  fill($("#dlq tbody"), s.dlq.map((d) => [d.variable, d.reason, num(d.records)]));
  if (!s.metrics) {
    fill($("#lag tbody"), [["(this page has no metrics registry)", "", ""]]);
  }
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

async function start() {
  const svg = await fetch("graph.svg");
  $("#graph").innerHTML = svg.ok ? await svg.text() : `<p>graph unavailable: ${svg.status}</p>`;
  const events = new EventSource("events");
  events.onopen = () => { $("#connection").textContent = "live"; $("#connection").className = "up"; };
  events.onerror = () => { $("#connection").textContent = "reconnecting"; $("#connection").className = "down"; };
  events.onmessage = (message) => render(JSON.parse(message.data));
}

start();
