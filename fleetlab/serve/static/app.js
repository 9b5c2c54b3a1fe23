// fleetlab dashboard: draws what the JSON API returns. Every figure comes from the library (status = the session's
// facts, experiments = `results --json`); this file only lays them out, and refetches when the store changes.
"use strict";

const COLORS = {keep: "#1a9850", discard: "#9aa0a6", crash: "#d73027", pending: "#f39c12"};
const SYMBOLS = ["circle", "square", "diamond", "triangle-up", "star", "hexagon", "cross", "pentagon"];
const state = {status: null, exps: [], version: null, sort: {col: "id", dir: 1}, open: null, against: "parent",
               seen: new Set(), first: true};

// -- fetching ---------------------------------------------------------------------------------------------------------
function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) localStorage.setItem("fleetlab-token", decodeURIComponent(m[1]));
  return localStorage.getItem("fleetlab-token") || "";
}
async function get(path, text = false) {
  const t = token();
  const r = await fetch(path, {headers: t ? {Authorization: "Bearer " + t} : {}, cache: "no-store"});
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  return text ? r.text() : r.json();
}

// -- formatting -------------------------------------------------------------------------------------------------------
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
function num(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  return Math.abs(x) >= 1000 ? x.toLocaleString("en-US", {maximumFractionDigits: 1}) : x.toPrecision(digits);
}
const metricFmt = x => num(x, 6);
const pctFmt = x => (x === null || x === undefined) ? "–" : (100 * x).toFixed(1) + " %";
const ciFmt = (ci, f = metricFmt) => Array.isArray(ci) && ci.length === 2 ? `[${f(ci[0])}, ${f(ci[1])}]` : "–";
const when = t => t ? new Date(t * 1000).toLocaleString() : "–";
const pick = (obj, path) => path.split(".").reduce((o, k) => (o === null || o === undefined) ? undefined : o[k], obj);

// A displayed figure carries its key in the status object and the raw value, so a test (or a person) can check
// that the page shows exactly what `fleetlab status --json` says.
function fig(key, text, cls = "big") {
  const v = pick(state.status, key);
  const tag = cls === "big" ? "div" : "span";
  return `<${tag} class="${cls}" data-key="${key}" data-value="${esc(JSON.stringify(v ?? null))}">${esc(text(v))}</${tag}>`;
}
function card(label, body, cls = "") { return `<div class="card ${cls}"><div class="label">${esc(label)}</div>${body}</div>`; }

// -- overview ---------------------------------------------------------------------------------------------------------
function renderOverview() {
  const s = state.status;
  document.getElementById("title-tag").textContent = s.tag ? `session ${s.tag}` : "no session yet";
  document.getElementById("session-state").textContent =
    `${s.session_status ?? ""}${s.serving ? " · serving" : ""}${s.stop_reason ? " · " + s.stop_reason : ""}`;
  document.getElementById("metric-col").textContent = s.metric;
  const g = s.confirmed_gain || s.gain;
  const gainKey = s.confirmed_gain ? "confirmed_gain" : "gain";
  const cards = [
    card(`incumbent ${s.metric}`, fig("incumbent.mean", metricFmt) +
      `<div class="sub">${fig("incumbent.id", v => v ?? "none kept yet", "sub")} n=${num(pick(s, "incumbent.n"))} ` +
      `95 % ${ciFmt(pick(s, "incumbent.ci"))}</div><div class="sub">${esc(pick(s, "incumbent.description") || "")}</div>`, "hero"),
    card(`baseline ${s.metric}`, fig("baseline.mean", metricFmt) +
      `<div class="sub">${esc(pick(s, "baseline.id") || "")} n=${num(pick(s, "baseline.n"))} sd ${num(pick(s, "baseline.sd"))}</div>`),
    card(s.confirmed_gain ? "gain (confirmed)" : "gain (not yet confirmed)",
      fig(gainKey + ".pct", v => v === null || v === undefined ? "–" : (v >= 0 ? "+" : "") + v.toFixed(2) + " %") +
      `<div class="sub">${fig(gainKey + ".abs", metricFmt, "sub")} 95 % ${ciFmt(g && g.ci)}</div>`,
      g && g.abs !== null ? (g.ci && g.ci[0] > 0 ? "gain-pos" : (g.abs < 0 ? "gain-neg" : "")) : ""),
    card("experiments", fig("experiments", num) +
      `<div class="sub">${Object.entries(pick(s, "counts.by_decision") || {}).map(([k, v]) => `${v} ${k}`).join(", ")}</div>` +
      `<div class="sub">queue ${fig("queue_depth", num, "sub")} running ${(s.running || []).length}</div>`),
    card("experiments / hour", fig("experiments_per_hour", v => num(v, 3)) +
      `<div class="sub">wall ${fig("wall_hours", v => num(v, 3) + " h", "sub")}</div>`),
    card("utilization", fig("utilization", pctFmt) +
      `<div class="sub">training share ${fig("training_share", pctFmt, "sub")}</div>`),
    card("GPU-hours", fig("gpu_hours", v => num(v, 3)) +
      `<div class="sub">busy ${fig("gpu_hours_busy", v => num(v, 3), "sub")}; to best ${fig("hours_to_best", v => num(v, 3) + " h", "sub")}</div>`),
    card("cost", fig("cost_usd", v => v === null || v === undefined ? "–" : "$" + v.toFixed(2))),
    card("workers", fig("workers", num) + `<div class="sub">idle ${fig("idle_workers", num, "sub")}; noise σ ${fig("noise_sigma", num, "sub")}</div>`),
    card("stop rule", stopRule(s)),
  ];
  document.getElementById("cards").innerHTML = cards.join("");
  document.getElementById("warnings").innerHTML = (s.warnings || []).map(w => `<li>${esc(w)}</li>`).join("");
}
function stopRule(s) {
  const p = s.stop || s.stop_rule || s.projection;
  if (p && typeof p === "object") {
    return Object.entries(p).filter(([, v]) => v !== null && typeof v !== "object")
      .map(([k, v]) => `<div class="sub">${esc(k)}: ${esc(num(v, 3))}</div>`).join("") || `<div class="sub">no projection yet</div>`;
  }
  return `<div class="sub">${esc(s.stop_reason || (s.session_status === "running" ? "running; no stop yet" : "–"))}</div>`;
}

// -- progress chart ---------------------------------------------------------------------------------------------------
function hwSymbol() {
  const classes = [...new Set(state.exps.map(e => e.hardware).filter(Boolean))].sort();
  return [classes, hw => SYMBOLS[Math.max(0, classes.indexOf(hw)) % SYMBOLS.length]];
}
async function renderProgress() {
  const s = state.status, prog = await get("/api/progress");
  const mine = state.exps.filter(e => e.tag === s.tag && e.metric !== null && e.finished_at);
  const [classes, sym] = hwSymbol();
  const groups = {};
  for (const e of mine) {
    const status = e.status || "pending", key = `${status} · ${e.role}`;
    (groups[key] = groups[key] || {status, role: e.role, rows: []}).rows.push(e);
  }
  const traces = Object.entries(groups).sort().map(([name, g]) => ({
    type: "scatter", mode: "markers", name, x: g.rows.map(e => new Date(e.finished_at * 1000)), y: g.rows.map(e => e.metric),
    customdata: g.rows.map(e => [e.id, e.description, e.hardware || "-", e.status || "-", e.role, metricFmt(e.metric)]),
    hovertemplate: "<b>%{customdata[0]}</b> %{customdata[3]} (%{customdata[4]})<br>%{customdata[1]}<br>" +
      s.metric + " %{customdata[5]} on %{customdata[2]}<extra></extra>",
    marker: {color: COLORS[g.status] || "#555", size: g.role === "explore" ? 9 : 7, opacity: g.status === "discard" ? 0.6 : 0.95,
             symbol: g.rows.map(e => sym(e.hardware) + (g.role === "explore" ? "" : "-open")), line: {width: 1.5, color: COLORS[g.status]}},
  }));
  const inc = prog.incumbents.filter(i => i.mean !== null);
  if (inc.length) {
    const end = Math.max(...mine.map(e => e.finished_at), inc[inc.length - 1].at);
    const xs = inc.map(i => new Date(i.at * 1000)).concat([new Date(end * 1000)]);
    const ys = inc.map(i => i.mean).concat([inc[inc.length - 1].mean]);
    const sigma = s.noise_sigma ?? pick(prog, "noise.pooled.sigma");
    if (sigma) {
      traces.push({type: "scatter", mode: "lines", x: xs, y: ys.map(y => y + sigma), line: {width: 0, shape: "hv"},
                   hoverinfo: "skip", showlegend: false});
      traces.push({type: "scatter", mode: "lines", x: xs, y: ys.map(y => y - sigma), line: {width: 0, shape: "hv"},
                   fill: "tonexty", fillcolor: "rgba(26,152,80,0.13)", name: `noise ±σ (${num(sigma, 3)})`, hoverinfo: "skip"});
    }
    traces.push({type: "scatter", mode: "lines", name: "validated best", x: xs, y: ys, line: {color: COLORS.keep, width: 2.5, shape: "hv"},
                 customdata: inc.map(i => [i.id, i.description, i.n ?? "-"]).concat([[inc[inc.length - 1].id, "", ""]]),
                 hovertemplate: "best %{y:.6g}: %{customdata[0]} (n=%{customdata[2]})<br>%{customdata[1]}<extra></extra>"});
  }
  for (const hw of classes) {  // legend entries for the hardware markers
    traces.push({type: "scatter", mode: "markers", x: [null], y: [null], name: `hw ${hw}`, marker: {symbol: sym(hw), color: "#444", size: 9}});
  }
  const crashes = state.exps.filter(e => e.tag === s.tag && e.status === "crash").length;
  const layout = {margin: {l: 60, r: 10, t: 28, b: 40}, hovermode: "closest", legend: {orientation: "h", y: -0.15},
                  title: {text: `${s.metric} (${s.goal}); ${crashes} crashed runs have no point`, font: {size: 12}, x: 0},
                  xaxis: {type: "date"}, yaxis: {title: s.metric}};
  const el = document.getElementById("progress-plot");
  await Plotly.react(el, traces, layout, {displaylogo: false, responsive: true});
  if (!el.dataset.bound) {
    el.on("plotly_click", ev => { const id = ev.points[0] && ev.points[0].customdata && ev.points[0].customdata[0]; if (id) openExp(id); });
    el.dataset.bound = "1";
  }
}

// -- fleet timeline ---------------------------------------------------------------------------------------------------
function renderFleet() {
  const s = state.status, now = Date.now() / 1000;
  const runs = state.exps.filter(e => e.tag === s.tag && e.started_at && e.worker);
  const lanes = [...new Set(runs.map(e => e.worker))].sort();
  const kinds = {setup: [], training: [], pruned: [], failed: [], running: [], cancelled: []};
  for (const e of runs) {
    const end = e.finished_at || now, total = end - e.started_at;
    const train = e.extras && typeof e.extras.training_seconds === "number" ? Math.min(total, e.extras.training_seconds) : null;
    const k = e.state === "running" ? "running" : e.state === "pruned" ? "pruned" : e.state === "cancelled" ? "cancelled"
      : e.status === "crash" ? "failed" : "training";
    if (k === "training" && train !== null && total - train > 0) {
      kinds.setup.push([e, e.started_at, total - train]);
      kinds.training.push([e, e.started_at + total - train, train]);
    } else kinds[k].push([e, e.started_at, total]);
  }
  const color = {setup: "#c9ced6", training: "#3b82c4", pruned: "#f39c12", failed: "#d73027", running: "#9ad1ff", cancelled: "#777"};
  const traces = Object.entries(kinds).filter(([, v]) => v.length).map(([k, v]) => ({
    type: "bar", orientation: "h", name: k, y: v.map(r => r[0].worker), base: v.map(r => new Date(r[1] * 1000)),
    x: v.map(r => r[2] * 1000), marker: {color: color[k]},
    customdata: v.map(r => [r[0].id, r[0].description, num(r[2], 3), r[0].state]),
    hovertemplate: "<b>%{customdata[0]}</b> " + k + " %{customdata[2]} s (%{customdata[3]})<br>%{customdata[1]}<extra></extra>",
  }));
  const layout = {barmode: "overlay", margin: {l: 90, r: 10, t: 10, b: 40}, xaxis: {type: "date"},
                  yaxis: {categoryorder: "array", categoryarray: lanes}, legend: {orientation: "h", y: -0.2},
                  height: Math.max(180, 60 + 34 * lanes.length)};
  const el = document.getElementById("fleet-plot");
  el.style.height = layout.height + "px";
  Plotly.react(el, traces, layout, {displaylogo: false, responsive: true});
  if (!el.dataset.bound) { el.on("plotly_click", ev => openExp(ev.points[0].customdata[0])); el.dataset.bound = "1"; }
}

// -- experiments table ------------------------------------------------------------------------------------------------
function renderTable() {
  const q = document.getElementById("filter").value.toLowerCase(), st = document.getElementById("filter-status").value;
  const {col, dir} = state.sort;
  let rows = state.exps.filter(e => {
    if (st === "-" ? e.status : st && e.status !== st) return false;
    return !q || [e.id, e.tag, e.description, e.hardware, e.role, e.strategy, e.state, e.status, e.worker]
      .some(v => String(v ?? "").toLowerCase().includes(q));
  });
  rows = rows.slice().sort((a, b) => {
    const x = a[col], y = b[col];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === "number" ? x - y : String(x).localeCompare(String(y))) * dir;
  });
  const tb = document.querySelector("#exp-table tbody");
  tb.innerHTML = rows.map(e => `<tr data-id="${esc(e.id)}" class="${state.first || state.seen.has(e.id) ? "" : "new"}">
    <td>${esc(e.id)}</td><td>${esc(e.tag)}</td><td class="st-${esc(e.status)}">${esc(e.status || "–")}</td>
    <td>${esc(e.state)}</td><td class="num">${esc(metricFmt(e.metric))}${e.metric_observed ? "*" : ""}</td><td>${esc(e.role)}</td>
    <td>${esc(e.hardware || "–")}</td><td>${esc(e.worker || "–")}</td><td>${esc(e.strategy)}</td>
    <td class="num">${esc(num(e.runtime_s, 3))}</td><td class="desc">${esc(e.description)}</td></tr>`).join("");
  for (const e of state.exps) state.seen.add(e.id);
  document.getElementById("exp-count").textContent = `${rows.length} of ${state.exps.length}`;
  document.querySelectorAll("#exp-table th").forEach(th => {
    th.classList.toggle("asc", th.dataset.col === col && dir === 1);
    th.classList.toggle("desc", th.dataset.col === col && dir === -1);
  });
}

// -- one experiment ---------------------------------------------------------------------------------------------------
function kv(obj) {
  return Object.entries(obj).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" ? JSON.stringify(v) : num(v, 6))}</td></tr>`).join("");
}
function diffHtml(text) {
  return text.split("\n").map(l => {
    const c = l.startsWith("@@") ? "hunk" : l.startsWith("+") && !l.startsWith("+++") ? "add" : l.startsWith("-") && !l.startsWith("---") ? "del" : "";
    return `<span class="${c}">${esc(l)}</span>`;
  }).join("\n");
}
async function openExp(id) {
  if (location.hash !== "#/exp/" + id) history.replaceState(null, "", "#/exp/" + id);
  state.open = id;
  const d = await get(`/api/experiments/${encodeURIComponent(id)}`);
  const sec = document.getElementById("detail");
  sec.hidden = false;
  document.getElementById("detail-title").textContent = `${d.id} · ${d.status || d.state} · ${d.role}`;
  document.getElementById("detail-description").textContent = d.description;
  const dec = d.decision || {};
  document.getElementById("detail-decision").innerHTML =
    `<tr><td>verdict</td><td class="st-${esc(dec.status)}">${esc(dec.status || "none yet")}</td></tr>` +
    `<tr><td>reason</td><td>${esc(dec.reason || "")}</td></tr>` + kv(dec.numbers || {});
  document.getElementById("detail-record").innerHTML = kv({metric: d.metric, state: d.state, hardware: d.hardware,
    worker: d.worker, strategy: d.strategy, agent: d.agent, parent: d.parent, seed: d.seed, runtime_s: d.runtime_s,
    exit_code: d.exit_code, "lines +/-": `${d.lines_added}/${d.lines_removed}`, queued: when(d.queued_at),
    started: when(d.started_at), finished: when(d.finished_at), reason: d.reason, knobs: d.knobs, extras: d.extras});
  document.getElementById("detail-arm").innerHTML = "<tr><th>run</th><th>state</th><th>metric</th><th>hw</th><th>role</th><th>status</th></tr>" +
    d.arm.map(a => `<tr><td>${esc(a.id)}</td><td>${esc(a.state)}</td><td class="num">${esc(metricFmt(a.metric))}</td>
      <td>${esc(a.hardware || "–")}</td><td>${esc(a.role)}</td><td>${esc(a.status || "–")}</td></tr>`).join("");
  document.getElementById("detail-lineage").innerHTML = d.lineage.map(p =>
    `<li><a href="#/exp/${esc(p.id)}">${esc(p.id)}</a> ${esc(p.status || p.role)} ${esc(metricFmt(p.metric))}: ${esc(p.description)}</li>`).join("")
    || "<li>no parent: the project's own files</li>";
  const obs = d.observations || [];
  Plotly.react("detail-curve", obs.length ? [{type: "scatter", mode: "lines+markers", x: obs.map(o => o.step), y: obs.map(o => o.metric),
    name: "observed"}] : [], {margin: {l: 50, r: 10, t: 10, b: 30}, xaxis: {title: "step"},
    annotations: obs.length ? [] : [{text: "this run printed no progress lines", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}]},
    {displaylogo: false, responsive: true});
  await Promise.all([showDiff(id, state.against), get(`/api/experiments/${encodeURIComponent(id)}/log`, true)
    .then(t => { document.getElementById("detail-log").textContent = t.split("\n").slice(-60).join("\n") || "(no log)"; })]);
  sec.scrollIntoView({behavior: "instant", block: "start"});
}
async function showDiff(id, against) {
  state.against = against;
  document.querySelectorAll("#diff-tabs button").forEach(b => b.classList.toggle("on", b.dataset.against === against));
  const d = await get(`/api/experiments/${encodeURIComponent(id)}/diff?against=${against}`);
  const pre = document.getElementById("detail-diff");
  pre.dataset.against = d.against_id || "";
  pre.innerHTML = d.diff ? diffHtml(d.diff) : esc(d.note || `(no change against ${d.against_id || "the project's files"})`);
}

// -- lineage, effects, notes ------------------------------------------------------------------------------------------
async function renderLineage() {
  const nodes = await get("/api/lineage"), kids = {};
  for (const n of nodes) (kids[n.parent || ""] = kids[n.parent || ""] || []).push(n);
  const tree = p => (kids[p] || []).map(n => `<li><span class="node ${n.incumbent ? "incumbent" : ""} ${n.role === "baseline" ? "baseline" : ""}"
    data-id="${esc(n.id)}">${esc(n.id)} ${esc(metricFmt(n.mean))}${n.n ? ` (n=${n.n})` : ""}</span> ${esc(n.description)}
    ${kids[n.id] ? `<ul class="tree">${tree(n.id)}</ul>` : ""}</li>`).join("");
  document.getElementById("lineage-tree").innerHTML = nodes.length ? `<ul class="tree root">${tree("")}</ul>` : "<p class='muted'>nothing kept yet</p>";
}
async function renderEffects() {
  const a = await get("/api/analysis");
  const nb = pick(a, "noise.by_hardware") || {};
  document.getElementById("noise-table").innerHTML = "<tr><th>hardware</th><th>σ</th><th>95 % interval</th><th>df</th><th>runs</th></tr>" +
    Object.entries(nb).map(([hw, r]) => `<tr><td>${esc(hw)}</td><td class="num">${esc(num(r.sigma))}</td>
      <td>${esc(r.low === null ? "–" : `[${num(r.low)}, ${num(r.high)}]`)}</td><td class="num">${r.df}</td><td class="num">${r.runs}</td></tr>`).join("") +
    `<tr><td>pooled</td><td class="num">${esc(num(pick(a, "noise.pooled.sigma")))}</td><td></td><td class="num">${esc(num(pick(a, "noise.pooled.df")))}</td><td></td></tr>`;
  const hw = a.hardware || {};
  document.getElementById("hw-table").innerHTML = "<tr><th>class</th><th>tier</th><th>offset</th></tr>" +
    (hw.classes_slowest_first || []).map(c => `<tr><td>${esc(c)}</td><td>${esc((hw.tiers || {})[c] || "")}</td>
      <td>${esc(c in (hw.offsets || {}) ? JSON.stringify(hw.offsets[c]) : "–")}</td></tr>`).join("");
  const main = pick(a, "effects.main") || [];
  document.getElementById("effects-table").innerHTML = main.length ? "<tr><th>term</th><th>effect</th><th>s.e.</th><th>p</th><th>gain</th></tr>" +
    main.map(t => `<tr><td>${esc(t.name)}</td><td class="num">${esc(num(t.effect))}</td><td class="num">${esc(num(t.stderr))}</td>
      <td class="num">${esc(num(t.p_value, 2))}</td><td class="num">${esc(num(t.gain))}</td></tr>`).join("")
    : `<tr><td class="muted">${esc(pick(a, "effects.note") || "no knob effects estimated yet")}</td></tr>`;
  Plotly.react("effects-plot", main.length ? [{type: "bar", orientation: "h", y: main.map(t => t.name), x: main.map(t => t.gain),
    error_x: {type: "data", array: main.map(t => t.stderr || 0)}, marker: {color: main.map(t => t.gain >= 0 ? COLORS.keep : COLORS.crash)}}] : [],
    {margin: {l: 140, r: 10, t: 10, b: 30}, xaxis: {title: "gain (positive is better)"}}, {displaylogo: false, responsive: true});
}
async function renderNotes() {
  const notes = await get("/api/notes?last=200");
  document.getElementById("notes-feed").innerHTML = notes.slice().reverse().map(n => `<li><span class="who">${esc(n.author)}</span>
    <span class="when">${esc(when(n.at))}${n.experiment ? ` on <a href="#/exp/${esc(n.experiment)}">${esc(n.experiment)}</a>` : ""}</span>
    <div>${esc(n.text)}</div></li>`).join("") || "<li class='muted'>no notes yet</li>";
}

// -- live -------------------------------------------------------------------------------------------------------------
async function refresh() {
  [state.status, state.exps] = await Promise.all([get("/api/status"), get("/api/experiments")]);
  renderOverview();
  renderTable();
  renderFleet();
  state.first = false;
  await Promise.all([renderProgress(), renderLineage(), renderNotes(), renderEffects().catch(err => {
    document.getElementById("effects-table").innerHTML = `<tr><td class="error">${esc(err.message)}</td></tr>`;
  })]);
  if (state.open) openExp(state.open).catch(() => {});
  document.body.dataset.version = state.version;
}
async function tick() {
  const live = document.getElementById("live");
  try {
    const {version} = await get("/api/version");
    const stale = Date.now() - (state.at || 0) > 15000;  // time-based figures (rates, elapsed) move without writes
    if (version !== state.version || stale) {
      state.version = version;
      state.at = Date.now();
      await refresh();
    }
    live.className = "on";
    live.textContent = "live · " + new Date().toLocaleTimeString();
  } catch (err) {
    live.className = "off";
    live.textContent = "disconnected: " + err.message;
  }
  setTimeout(tick, 1000);
}

document.getElementById("exp-table").addEventListener("click", ev => {
  const th = ev.target.closest("th");
  if (th) { state.sort = {col: th.dataset.col, dir: state.sort.col === th.dataset.col ? -state.sort.dir : 1}; renderTable(); return; }
  const tr = ev.target.closest("tr[data-id]");
  if (tr) openExp(tr.dataset.id);
});
document.getElementById("filter").addEventListener("input", renderTable);
document.getElementById("filter-status").addEventListener("change", renderTable);
document.getElementById("diff-tabs").addEventListener("click", ev => { const b = ev.target.closest("button"); if (b && state.open) showDiff(state.open, b.dataset.against); });
document.getElementById("detail-close").addEventListener("click", () => { state.open = null; document.getElementById("detail").hidden = true; history.replaceState(null, "", "#"); });
document.getElementById("lineage-tree").addEventListener("click", ev => { const n = ev.target.closest(".node"); if (n) openExp(n.dataset.id); });
window.addEventListener("hashchange", () => { const m = location.hash.match(/^#\/exp\/(.+)$/); if (m && m[1] !== state.open) openExp(m[1]); });
document.getElementById("note-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  const t = document.getElementById("note-token").value || token(), err = document.getElementById("note-error");
  if (t) localStorage.setItem("fleetlab-token", t);
  const r = await fetch("/api/notes", {method: "POST", headers: {"Content-Type": "application/json", Authorization: "Bearer " + t},
    body: JSON.stringify({text: document.getElementById("note-text").value, author: document.getElementById("note-author").value || "dashboard"})});
  err.textContent = r.ok ? "" : (await r.json()).error;
  if (r.ok) document.getElementById("note-text").value = "";
});
(function start() {
  const m = location.hash.match(/^#\/exp\/(.+)$/);
  if (m) state.open = m[1];
  tick();
})();
