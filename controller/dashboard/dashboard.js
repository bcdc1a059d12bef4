"use strict";
const $ = (s, el = document) => el.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const pct = (x) => x == null ? "–" : (x * 100).toFixed(2) + " %";
const ms = (x) => x == null ? "–" : x.toFixed(1) + " ms";
const time = (t) => new Date(t).toLocaleTimeString();
const tokenInput = $("#token");
// The operator token lives in this tab's sessionStorage only: gone when the
// tab closes, never in localStorage (which outlives it, for any later user
// of the browser profile) nor in a URL. Older pages kept it in
// localStorage: it is removed from there.
const TOKEN_KEY = "coalmine.token";
localStorage.removeItem(TOKEN_KEY);
tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
tokenInput.addEventListener("input", () => {
  const token = tokenInput.value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
});

function say(text, kind) { const m = $("#message"); m.textContent = text; m.className = kind || ""; }

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}

// Every change the page can make goes through here, and only after the
// operator confirmed a question naming the deployment and what changes;
// cancelling sends nothing.
async function act(path, method, body, question) {
  const token = tokenInput.value.trim();
  if (!token) { say("Enter the operator token (top right) to act.", "error"); return; }
  if (!question || !confirm(question)) { say("Cancelled: nothing was changed."); return; }
  try {
    const r = await fetch(path, { method, headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
                                  body: JSON.stringify(body || {}) });
    const out = await r.json();
    if (!r.ok) { say(out.message || r.statusText, "error"); return; }
    say("Done: " + method + " " + path.replace(/^\/v1\/deployments\//, ""), "ok");
    refresh();
  } catch (e) { say("The controller cannot be reached: " + e.message, "error"); }
}

function splitBar(d) {
  const c = d.canary_percent, b = 100 - c;
  return `<div class="split" title="baseline ${b} % / canary ${c} %">
    <div class="b" data-width="${b}">${b >= 15 ? esc(d.baseline.version) + " " + b + "%" : ""}</div>
    <div class="c" data-width="${c}">${c >= 15 && d.canary ? esc(d.canary.version) + " " + c + "%" : ""}</div></div>`;
}
// The page's markup carries no style attributes (the Content-Security-Policy
// refuses them); the split's widths are set through the DOM once drawn.
function show(html) {
  const view = $("#view");
  view.innerHTML = html;
  for (const el of view.querySelectorAll("[data-width]")) el.style.width = el.dataset.width + "%";
}
const badge = (v) => `<span class="badge v-${esc(v)}">${esc(v)}</span>`;
// Rolled back, or marked unhealthy: not a canary or a shadow again until an
// operator lifts the bar.
const barred = (v) => v.state === "rolled_back" || !v.healthy;

async function overview() {
  const ds = await get("/v1/deployments");
  show(`<section><h2>Deployments</h2>${ds.length === 0 ? `<p class="dim">No deployments yet: create one with <code>coalmine deployments create</code>.</p>` : `
    <table id="deployments"><tr><th>deployment</th><th>state</th><th>baseline</th><th>canary</th><th>shadow</th><th>split</th><th>verdict</th></tr>
    ${ds.map((d) => `<tr data-name="${esc(d.name)}"><td><a href="#/deployments/${encodeURIComponent(d.name)}">${esc(d.name)}</a></td>
      <td>${esc(d.state)}</td><td>${esc(d.baseline.version)}</td>
      <td>${d.canary ? esc(d.canary.version) + " @ " + d.canary_percent + " %" : "–"}</td>
      <td>${d.shadow ? esc(d.shadow.version) + " @ " + d.shadow.percent + " %" : "–"}</td>
      <td>${splitBar(d)}</td><td>${badge(d.health.verdict)}</td></tr>`).join("")}</table>`}</section>`);
}

function chart(samples, pick, fmt, floor) {
  const W = 560, H = 180, P = 30;
  const series = ["baseline", "canary"].map((r) => samples.map((s) => [s.at, pick(s[r])]).filter((p) => p[1] != null));
  const all = series.flat();
  if (all.length < 2) return `<svg viewBox="0 0 ${W} ${H}"><text x="${W/2}" y="${H/2}" fill="#6e7681" text-anchor="middle">collecting…</text></svg>`;
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const ymax = Math.max(floor, Math.max(...all.map((p) => p[1])) * 1.15);
  const x = (t) => P + (t - t0) / Math.max(1, t1 - t0) * (W - P - 8), y = (v) => H - 18 - v / ymax * (H - 30);
  const line = (pts, color) => pts.length ? `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ")}"/>` : "";
  return `<svg viewBox="0 0 ${W} ${H}">
    <text x="4" y="14" fill="#9aa3b2" font-size="11">${esc(fmt(ymax))}</text><text x="4" y="${H - 20}" fill="#9aa3b2" font-size="11">0</text>
    <text x="${P}" y="${H - 4}" fill="#9aa3b2" font-size="11">${time(t0)}</text><text x="${W - 8}" y="${H - 4}" fill="#9aa3b2" font-size="11" text-anchor="end">${time(t1)}</text>
    ${line(series[0], "#5b9cf6")}${line(series[1], "#f6a55b")}</svg>`;
}

// An output field's counts as [category, count] pairs: labels (and other),
// or score slots with their ranges.
function categories(fc) {
  if (!fc) return [];
  if (fc.class) {
    const e = Object.entries(fc.class.labels);
    if (fc.class.other) e.push(["other", fc.class.other]);
    return e;
  }
  const { min, max, counts } = fc.score, bins = counts.length - 2, w = (max - min) / bins, r = (v) => +v.toFixed(3);
  return counts.map((n, i) => [i === 0 ? `< ${min}` : i > bins ? `> ${max}` : `${r(min + w * (i - 1))}–${r(min + w * i)}`, n]);
}

// Each role's share of every category of one output field, side by side.
function mix(field, b, c) {
  const cb = categories(b), cc = categories(c);
  const names = [...new Set([...cb, ...cc].map(([k]) => k))];
  if (!b || !c) names.sort();
  const total = (e) => e.reduce((a, [, n]) => a + n, 0) || 1;
  const share = (e, k) => (e.find(([n]) => n === k)?.[1] ?? 0) / total(e);
  const W = 560, H = 180, bottom = 34, slot = (W - 20) / Math.max(1, names.length), bw = Math.min(48, Math.max(2, slot * 0.38));
  const y = (v) => (H - bottom) * (1 - v);
  const bars = names.map((k, i) => {
    const x = 10 + i * slot, sb = share(cb, k), sc = share(cc, k);
    return `<rect x="${x}" y="${y(sb)}" width="${bw}" height="${(H - bottom) * sb}" fill="#5b9cf6"><title>baseline ${esc(k)}: ${pct(sb)}</title></rect>
      <rect x="${x + bw + 1}" y="${y(sc)}" width="${bw}" height="${(H - bottom) * sc}" fill="#f6a55b"><title>canary ${esc(k)}: ${pct(sc)}</title></rect>
      <text x="${x + bw}" y="${H - bottom + 14}" fill="#9aa3b2" font-size="10" text-anchor="middle">${esc(k)}</text>`;
  }).join("");
  return `<div><h2>${esc(field)} <span class="dim">· ${total(cb)} baseline, ${total(cc)} canary answers</span></h2>
    <svg class="mix" id="outputs-${esc(field)}" viewBox="0 0 ${W} ${H}">${bars}</svg></div>`;
}

function outputs(h) {
  const fields = [...new Set([...Object.keys(h.baseline.outputs || {}), ...Object.keys(h.canary.outputs || {})])].sort();
  if (!fields.length) return "";
  const skipped = (s) => { const o = s.outputs_skipped || {}; return (o.too_large || 0) + (o.encoded || 0); };
  return `<section id="outputs"><h2>What the models answer</h2><div class="legend"><span><i class="b"></i>baseline</span><span><i class="c"></i>canary</span>
    <span class="dim">skipped (too large or compressed): ${skipped(h.baseline)} baseline, ${skipped(h.canary)} canary</span></div>
    <div class="grid">${fields.map((f) => mix(f, (h.baseline.outputs || {})[f], (h.canary.outputs || {})[f])).join("")}</div></section>`;
}

// What clients reported back (labels, outcomes): each metric's rate per
// role, with how many observations it rests on and the newest one's age.
function feedback(h) {
  const metrics = [...new Set([...Object.keys(h.baseline.feedback || {}), ...Object.keys(h.canary.feedback || {})])].sort();
  if (!metrics.length) return "";
  const cell = (s, role, m) => {
    const f = (s.feedback || {})[m];
    if (!f || !f.observations) return `<td class="num dim" id="feedback-${esc(m)}-${role}">${f ? "none yet" : "–"}</td>`;
    const age = f.newest_age_seconds == null ? "" : `, newest ${f.newest_age_seconds} s ago`;
    return `<td class="num" id="feedback-${esc(m)}-${role}"><b>${f.rate.toFixed(3)}</b> <span class="dim">of ${f.observations}${age}</span></td>`;
  };
  return `<section id="feedback"><h2>What clients report back</h2><table><tr><th>metric</th><th class="num">baseline</th><th class="num">canary</th></tr>
    ${metrics.map((m) => `<tr><th>${esc(m)}</th>${cell(h.baseline, "baseline", m)}${cell(h.canary, "canary", m)}</tr>`).join("")}</table></section>`;
}

// Where a shadow field stands against the minimum, as the engine judged it
// (health's `standing`): the words and the class shown.
const STANDING = {
  below: ["below", "below"],
  unproven: ["not yet established", "dim"],
  collecting: ["collecting", "dim"],
  agrees: ["agrees", ""],
};
function standing(f) {
  return STANDING[f.standing] || [f.standing || "–", "dim"];
}

// Copies not made, every reason health names ("too_large" → "too large").
function skipped(s) {
  return Object.entries(s || {}).map(([why, n]) => `${n} ${esc(why.replace(/_/g, " "))}`).join(", ");
}

// The shadow: a version that gets copies of the baseline's requests and
// never answers; its numbers beside the baseline's, each output field's
// agreement with what users got, and (with the token) start, change, stop.
function shadowPanel(d, h, versions) {
  const v = d.shadow, s = h.shadow;
  const candidates = versions.filter((x) => x.version !== d.baseline.version && !(d.canary && d.canary.version === x.version)
    && x.healthy && x.state !== "rolled_back");
  const controls = `<div class="actions">
    <select id="shadow-version">${candidates.map((x) => `<option ${v && v.version === x.version ? "selected" : ""}>${esc(x.version)}</option>`).join("")}</select>
    <input id="shadow-percent" type="number" min="1" max="100" step="1" value="${v ? v.percent : 100}">
    <button id="shadow-start" ${candidates.length ? "" : "disabled"}>${v ? "change shadow" : "start shadow"}</button>
    <button id="shadow-stop" class="danger" ${v ? "" : "disabled"}>stop shadow</button></div>`;
  if (!v || !s) return `<section id="shadow"><h2>Shadow</h2><p class="dim">No shadow: a registered version can get a copy of the baseline's requests, never answering users, and its answers are compared with theirs.</p>${controls}</section>`;
  const fields = s.fields.length ? `<table id="shadow-fields"><tr><th>field</th><th class="num">compared</th><th class="num">agreed</th><th class="num">agreement</th><th class="num">bounds</th><th class="num">minimum</th><th></th></tr>
    ${s.fields.map((f) => { const [what, cls] = standing(f);
      return `<tr data-field="${esc(f.field)}"><th>${esc(f.field)}</th><td class="num">${f.compared}</td><td class="num">${f.agreed}</td>
        <td class="num ${cls}" id="shadow-agreement-${esc(f.field)}">${pct(f.agreement)}</td>
        <td class="num dim">${f.lower == null ? "–" : pct(f.lower) + " – " + pct(f.upper)}</td><td class="num">${pct(f.min_agreement)}</td>
        <td class="${cls}">${esc(what)}</td></tr>`; }).join("")}</table>`
    : `<p class="dim">No output fields compared: the proxies read no outputs of ${esc(d.name)}, or no copy has been answered yet.</p>`;
  return `<section id="shadow"><h2>Shadow</h2>
    <p>shadow <b>${esc(v.version)}</b> (${esc(v.cluster)}) gets a copy of <b id="shadow-percent-now">${v.percent} %</b> of the requests ${esc(d.baseline.version)} serves, never answering
      · <span id="shadow-verdict">${badge(s.verdict)}</span></p>
    <table><tr><th></th><th class="num">requests</th><th class="num">errors</th><th class="num">error rate</th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th></tr>
      ${roleRow("baseline", h.baseline, "shadow-base")}${roleRow("shadow " + v.version, s, "shadow")}</table>
    ${fields}
    <p class="dim">${s.uncompared} answers not compared · copies not made: ${skipped(s.skipped)}</p>
    ${controls}</section>`;
}

// The post-promotion watch: until when the new baseline is judged, the old
// baseline's last window it is compared with, and where it stands now.
function watchPanel(h) {
  const w = h.watch;
  if (!w) return "";
  const ref = w.reference;
  return `<section id="watch"><h2>Watch after the promotion</h2>
    <p><b>${esc(w.version)}</b> is watched until ${time(w.until)} <span class="dim">(<span id="watch-left">${w.seconds_left}</span> s left)</span>
      · <span id="watch-verdict">${badge(w.verdict)}</span>${w.breach_reported ? " · breach reported, automatic rollback is off" : ""}</p>
    <table><tr><th></th><th class="num">requests</th><th class="num">errors</th><th class="num">error rate</th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th></tr>
      ${roleRow(ref.version + " before the promotion", { ...ref, p50_ms: null, p99_ms: null }, "watch-old")}${roleRow(w.version + " since the promotion", w.current, "watch-new")}</table>
    <ul class="reasons">${w.reasons.map((r) => `<li>${esc(r.message)}</li>`).join("")}</ul></section>`;
}

function roleRow(name, s, id) {
  id = id || name;
  return `<tr><th>${esc(name)}</th><td class="num" id="${id}-requests">${s.requests}</td><td class="num" id="${id}-errors">${s.errors}</td>
    <td class="num" id="${id}-error-rate">${pct(s.error_rate)}</td><td class="num">${ms(s.p50_ms)}</td>
    <td class="num" id="${id}-p95">${ms(s.p95_ms)}</td><td class="num">${ms(s.p99_ms)}</td></tr>`;
}

function numbers(n) {
  const flat = Object.entries(n || {}).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${esc(k)}=${esc(typeof v === "number" ? +v.toFixed(4) : v)}`);
  return flat.length ? `<br><code>${flat.join("  ")}</code>` : "";
}

// The planned ramp, the current share marked (one set by hand off the plan
// shown where it falls).
function ramp(c) {
  const shares = c.steps.map((s, i) => i === c.step_index ? `<b class="now">${s}</b>` : `${s}`);
  if (c.step_index == null) shares.splice(c.steps.filter((s) => s < c.percent).length, 0, `<b class="now">${c.percent} (by hand)</b>`);
  return `<span id="ramp" title="the planned shares, each held ${c.bake_seconds} s healthy; promoted after the last">ramp ${shares.join(" → ")} % · ${c.bake_seconds} s each</span>`;
}

async function deployment(name) {
  const p = "/v1/deployments/" + encodeURIComponent(name);
  const [d, history, events, versions] = await Promise.all([get(p), get(p + "/history"), get(p + "/events?order=newest&limit=200"), get(p + "/versions")]);
  const h = d.health, c = d.canary;
  const next = c && c.next_step_percent;
  show(`
  <section><h2>${esc(d.name)} · ${esc(d.state)}</h2>
    <div class="grid"><div>${splitBar(d)}<p>baseline <b>${esc(d.baseline.version)}</b> (${esc(d.baseline.cluster)})
      ${c ? ` · canary <b>${esc(c.version)}</b> (${esc(c.cluster)}) at <b id="canary-percent">${c.percent} %</b>, ${ramp(c)}${c.paused ? " · <b>paused</b>" : ""}` : " · no canary in progress"}
      ${d.pinned ? ` · pinned <span class="pinned">★ ${esc(d.pinned.version)}</span>` : ""}</p></div>
    <div><p id="verdict">${badge(h.verdict)} recommendation <b>${esc(h.recommendation)}</b> <span class="dim">(window ${h.window_seconds} s)</span></p>
      <ul class="reasons">${h.reasons.map((r) => `<li>${esc(r.message)}</li>`).join("")}</ul></div></div>
    <table><tr><th></th><th class="num">requests</th><th class="num">errors</th><th class="num">error rate</th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th></tr>
      ${roleRow("baseline", h.baseline)}${roleRow("canary", h.canary)}</table>
  </section>
  ${watchPanel(h)}
  <section><h2>Actions</h2><div class="actions">
    <button id="step" ${next ? "" : "disabled"}>step to ${next ?? "–"} %</button>
    <input id="percent" type="number" min="0" max="100" step="1" value="${c ? c.percent : 0}"><button id="set-traffic" ${c ? "" : "disabled"}>set canary %</button>
    <button id="pause" ${c && !c.paused ? "" : "disabled"}>pause</button><button id="resume" ${c && c.paused ? "" : "disabled"}>resume</button>
    <button id="promote" ${c ? "" : "disabled"}>promote</button><button id="rollback" class="danger">rollback</button>
  </div></section>
  <section class="grid">
    <div><h2>p95 latency</h2><div class="legend"><span><i class="b"></i>baseline</span><span><i class="c"></i>canary</span></div>${chart(history, (s) => s.p95_ms, ms, 1)}</div>
    <div><h2>error rate</h2><div class="legend"><span><i class="b"></i>baseline</span><span><i class="c"></i>canary</span></div>${chart(history, (s) => s.requests ? s.error_rate : null, pct, 0.05)}</div>
  </section>
  ${shadowPanel(d, h, versions)}
  ${outputs(h)}
  ${feedback(h)}
  <section><h2>Events</h2><table id="events"><tr><th>#</th><th>time</th><th>event</th><th>actor</th><th>reason and numbers</th></tr>
    ${events.map((e) => `<tr data-kind="${esc(e.kind)}"><td>${e.id}</td><td>${time(e.at)}</td><td>${esc(e.kind)}</td><td>${esc(e.actor)}</td><td>${esc(e.reason)}${numbers(e.numbers)}</td></tr>`).join("")}</table></section>
  <section><h2>Versions</h2><table id="versions"><tr><th>version</th><th>cluster</th><th>state</th><th>healthy</th><th>pinned</th><th>metadata</th><th></th></tr>
    ${versions.map((v) => `<tr><td>${esc(v.version)}</td><td>${esc(v.cluster)}</td><td>${esc(v.state)}</td><td>${v.healthy ? "yes" : "<b>no</b>"}</td>
      <td>${v.pinned ? '<span class="pinned">★ last known good</span>' : ""}</td><td><code>${esc(JSON.stringify(v.metadata))}</code></td>
      <td>${barred(v) ? `<button id="unbar-${esc(v.version)}" class="unbar" data-version="${esc(v.version)}" title="let it be a canary or a shadow again">unbar</button>` : ""}</td></tr>`).join("")}</table></section>`);
  // Each button asks what exactly it changes (the page as drawn is what
  // the operator saw) before anything is sent.
  const go = (suffix, method, body, question) => act(p + suffix, method, body, question);
  const on = (id, f) => $(id).addEventListener("click", f);
  const canary = c && `canary ${c.version} at ${c.percent} %`;
  on("#step", () => go("/traffic", "PUT", { canary_percent: next }, `Step ${d.name}: ${canary} → ${next} %?`));
  on("#set-traffic", () => {
    const percent = $("#percent").valueAsNumber;
    if (!(percent >= 0 && percent <= 100)) { say("The canary's share is a number from 0 to 100.", "error"); return; }
    go("/traffic", "PUT", { canary_percent: percent }, `Set the traffic of ${d.name}: ${canary} → ${percent} %?`);
  });
  on("#pause", () => go("/pause", "POST", { reason: "paused from the dashboard" },
    `Pause ${d.name}: ${canary} stays there and stops stepping up (an automatic rollback still happens)?`));
  on("#resume", () => go("/resume", "POST", { reason: "resumed from the dashboard" },
    `Resume ${d.name}: ${canary} bakes again from the start, then steps up as planned?`));
  on("#promote", () => go("/promote", "POST", { reason: "promoted from the dashboard" },
    `Promote on ${d.name}: ${canary} → baseline at 100 %, replacing baseline ${d.baseline.version}?`));
  on("#rollback", () => go("/rollback", "POST", { reason: "rolled back from the dashboard" },
    c ? `Roll back ${d.name}: ${canary} → 0 %, marked unhealthy?`
      : d.pinned ? `Roll back ${d.name}: baseline ${d.baseline.version} → pinned ${d.pinned.version} at 100 %?`
        : `Roll back ${d.name} to its pinned version (baseline now ${d.baseline.version})?`));
  on("#shadow-start", () => {
    const version = $("#shadow-version").value, percent = $("#shadow-percent").valueAsNumber;
    if (!(percent > 0 && percent <= 100)) { say("The shadow's share is a number above 0, at most 100.", "error"); return; }
    const v = d.shadow;
    go("/shadow", "POST", { version, percent }, v
      ? `Change the shadow of ${d.name}: ${v.version} at ${v.percent} % → ${version} at ${percent} %?`
      : `Start a shadow on ${d.name}: copy ${percent} % of its baseline ${d.baseline.version}'s requests to ${version} (never answering users)?`);
  });
  // A barred version (rolled back, or marked unhealthy) may be tried again
  // once an operator says why: the reason goes into the timeline.
  for (const el of document.querySelectorAll("#versions button.unbar")) el.addEventListener("click", () => {
    const version = el.dataset.version;
    if (!tokenInput.value.trim()) { say("Enter the operator token (top right) to act.", "error"); return; }
    const reason = prompt(`Why may ${version} be tried again on ${d.name}? (The reason goes into the timeline.)`);
    if (reason == null || !reason.trim()) { say("Cancelled: lifting a bar needs a reason; nothing was changed."); return; }
    go("/unbar", "POST", { version, reason: reason.trim() },
      `Lift the bar on ${version} of ${d.name}: registered and healthy again, so it may be a canary or a shadow (the cooldown stays)?`);
  });
  on("#shadow-stop", () => go("/shadow", "DELETE", null,
    `Stop the shadow of ${d.name}: ${d.shadow && d.shadow.version} at ${d.shadow && d.shadow.percent} % → no shadow?`));
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  const route = location.hash.match(/^#\/deployments\/(.+)$/);
  try {
    if (route) await deployment(decodeURIComponent(route[1])); else await overview();
    $("#live").textContent = "live · updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#live").textContent = "cannot reach the controller: " + e.message;
  } finally { busy = false; }
}
window.addEventListener("hashchange", () => { say(""); refresh(); });
refresh();
setInterval(() => { if (!document.activeElement || !["INPUT", "SELECT"].includes(document.activeElement.tagName)) refresh(); }, 1000);
