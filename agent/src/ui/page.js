"use strict";
// The bluegreen dashboard: reads /api/stream (server-sent events over a
// fetch() body, so that the bearer token travels in a header, never in a
// URL) and draws every service. Stable data-k / data-service attributes
// are what tests read.
const KEY = "bg-token";
const RING = 900;
const COLORS = ["blue", "green"];
const rings = new Map(); // service -> samples, oldest first
const sections = new Map(); // service -> its <section>
const conn = document.getElementById("conn");
const form = document.getElementById("token-form");

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function setConn(state, text) {
  conn.dataset.state = state;
  conn.textContent = text;
}

function fmt(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  return x.toFixed(digits);
}

function skeleton(name) {
  const graphs = el("div", { class: "graphs" });
  for (const [key, title] of [["rps", "requests/s"], ["err", "5xx/s"], ["p99_ms", "p99 ms"]]) {
    graphs.append(el("div", { class: "graph" },
      el("div", { class: "cap" }, el("span", {}, title), el("span", { "data-k": "max-" + key }, "")),
      el("canvas", { "data-graph": key, width: "300", height: "90" })));
  }
  const s = el("section", { class: "svc", "data-service": name },
    el("h2", {}, name),
    el("div", { class: "facts" }),
    el("div", { class: "op", "data-k": "op" }),
    el("table", {}, el("thead", {}, el("tr", {},
      el("th", {}, "replica"), el("th", {}, "health"), el("th", {}, "state"), el("th", {}, "in flight"))),
      el("tbody", { "data-k": "replicas" })),
    graphs,
    el("div", { class: "totals", "data-k": "totals" }),
    el("ul", { class: "outcomes", "data-k": "outcomes" }));
  document.getElementById("services").append(s);
  return s;
}

function render(view) {
  const st = view.status;
  const name = st.name;
  let s = sections.get(name);
  if (!s) { s = skeleton(name); sections.set(name, s); }
  const ring = rings.get(name) || [];
  const last = ring[ring.length - 1];

  const facts = s.querySelector(".facts");
  facts.replaceChildren(
    el("span", {}, "active ", el("b", { "data-k": "active", class: "c-" + (st.active || "none") }, st.active || "none")),
    el("span", {}, "revision ", el("b", { "data-k": "revision" }, String(st.revision))),
    el("span", { "data-k": "weights", "data-blue": String(st.weights.blue), "data-green": String(st.weights.green) },
      "weights ", el("b", { class: "c-blue" }, st.weights.blue + "%"), " / ", el("b", { class: "c-green" }, st.weights.green + "%")));
  for (const c of COLORS) {
    const cur = last ? last[c] : null;
    facts.append(el("span", { class: "c-" + c }, c + " ",
      el("b", { "data-k": "rps-" + c, "data-value": cur ? String(cur.rps) : "0" }, fmt(cur ? cur.rps : 0, 1)), " req/s, ",
      el("b", { "data-k": "err-" + c, "data-value": cur ? String(cur.err) : "0" }, fmt(cur ? cur.err : 0, 1)), " 5xx/s, p99 ",
      el("b", { "data-k": "p99-" + c }, cur && cur.p99_ms !== null ? fmt(cur.p99_ms, 1) + " ms" : "–")));
  }

  const op = s.querySelector("[data-k=op]");
  const o = st.operation;
  op.dataset.phase = o ? o.phase : "";
  op.dataset.kind = o ? o.kind : "";
  if (o) {
    const secs = Math.max(0, Math.round((Date.now() - Date.parse(o.started_at)) / 1000));
    const parts = [el("b", {}, o.kind + " #" + o.id), " phase ", el("b", { "data-k": "phase" }, o.phase), " · " + secs + " s"];
    if (o.detail) parts.push(" · " + o.detail);
    op.replaceChildren(...parts);
    if (o.kind === "canary" && st.active) {
      const other = st.active === "blue" ? "green" : "blue";
      op.append(el("progress", { max: "100", value: String(st.weights[other]), "data-k": "progress" }));
    }
  } else {
    op.replaceChildren("no operation running");
  }

  const rows = [];
  for (const c of COLORS) {
    for (const r of (st.colors[c] || { replicas: [] }).replicas) {
      rows.push(el("tr", { "data-replica": c + "-" + r.id },
        el("td", { class: "c-" + c }, c + " " + r.id),
        el("td", { class: r.health }, r.health),
        el("td", {}, r.state),
        el("td", { "data-k": "inflight" }, String(r.inflight))));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4" }, "no replicas")));
  s.querySelector("[data-k=replicas]").replaceChildren(...rows);

  // Responses counted in the samples kept (the last 15 minutes).
  const totals = s.querySelector("[data-k=totals]");
  const kept = ring.length < 120 ? ring.length + " s" : Math.round(ring.length / 60) + " min";
  const parts = ["last " + kept + ": "];
  for (const c of COLORS) {
    const n = ring.reduce((a, x) => a + x[c].n, 0);
    parts.push(el("b", { class: "c-" + c, "data-k": "total-" + c, "data-value": String(n) }, String(n)), " " + c + " responses  ");
  }
  totals.replaceChildren(...parts);

  s.querySelector("[data-k=outcomes]").replaceChildren(...view.outcomes.map(x =>
    el("li", { class: "o-" + x.outcome }, x.at.replace("T", " ").replace(/\..*$/, "") + " " + x.kind + " #" + x.operation + " " + x.outcome + (x.message ? ": " + x.message : ""))));

  for (const canvas of s.querySelectorAll("canvas")) draw(canvas, ring, canvas.dataset.graph, s);
}

function draw(canvas, ring, key, s) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 90;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  let max = 0;
  for (const x of ring) for (const c of COLORS) { const v = x[c][key]; if (v !== null && isFinite(v)) max = Math.max(max, v); }
  const top = max > 0 ? max * 1.1 : 1;
  s.querySelector("[data-k=max-" + key + "]").textContent = "max " + fmt(max, 1);
  g.strokeStyle = "#8884"; g.lineWidth = 1;
  g.strokeRect(0.5, 0.5, w - 1, h - 1);
  const style = getComputedStyle(document.documentElement);
  // The window drawn: what the ring holds, at least a minute, at most 15.
  const span = Math.max(60, Math.min(RING, ring.length)) - 1;
  for (const c of COLORS) {
    g.strokeStyle = style.getPropertyValue("--" + c).trim() || c;
    g.lineWidth = 1.5;
    g.beginPath();
    let pen = false;
    ring.forEach((x, i) => {
      const v = x[c][key];
      if (v === null || !isFinite(v)) { pen = false; return; }
      const px = w - (ring.length - 1 - i) * (w / span) - 1;
      const py = h - 2 - (v / top) * (h - 4);
      if (pen) g.lineTo(px, py); else g.moveTo(px, py);
      pen = true;
    });
    g.stroke();
  }
}

function apply(msg) {
  for (const v of msg.services) {
    const name = v.status.name;
    let ring = msg.full ? v.samples.slice() : (rings.get(name) || []).concat(v.samples);
    if (ring.length > RING) ring = ring.slice(ring.length - RING);
    rings.set(name, ring);
    render(v);
  }
}

async function connect() {
  const token = sessionStorage.getItem(KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let resp;
  try {
    resp = await fetch("/api/stream", { headers, cache: "no-store" });
  } catch (e) {
    setConn("error", "agent unreachable; retrying");
    return setTimeout(connect, 2000);
  }
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    setConn("token", token ? "wrong token" : "token needed");
    form.hidden = false;
    document.getElementById("token").focus();
    return;
  }
  if (!resp.ok || !resp.body) {
    setConn("error", "HTTP " + resp.status + "; retrying");
    return setTimeout(connect, 2000);
  }
  form.hidden = true;
  setConn("live", "live");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = event.split("\n").filter(l => l.startsWith("data: ")).map(l => l.slice(6)).join("\n");
        if (data) apply(JSON.parse(data));
      }
    }
  } catch (e) { /* the connection broke: reconnect below */ }
  setConn("error", "stream ended; reconnecting");
  setTimeout(connect, 1000);
}

form.addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  connect();
});
connect();
