// foxtive dashboard: plain JavaScript over the JSON API (/api/openapi.json).
// Every value from the API reaches the page through textContent, never HTML.
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  const REFRESH_MS = 5000;
  const PAGE = 50;
  const state = { token: sessionStorage.getItem("foxtive-token") || "", offset: 0, total: 0,
                  items: [], selected: new Set(), filters: {}, firstRender: false };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return node;
  }

  function say(text, isError) {
    const s = $("#status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  async function api(path, body) {
    const headers = { "Accept": "application/json" };
    if (state.token) headers["Authorization"] = "Bearer " + state.token;
    const init = { headers, credentials: "omit" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) $("#token-form").hidden = false;
    if (!res.ok) throw new Error((data && data.error) || ("HTTP " + res.status));
    return data;
  }

  const fmt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString());
  const when = (t) => new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");

  // ------------------------------------------------------------------ queues
  function chart(history) {
    const w = 160, h = 36;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("role", "img");
    const pts = history.filter((s) => s.ready !== null);
    const last = pts.length ? pts[pts.length - 1] : null;
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = last
      ? `${pts.length} samples; ready now ${fmt(last.ready)}, in progress ${fmt(last.in_progress)}`
      : "no samples yet";
    svg.append(title);
    if (pts.length < 2) return svg;
    const t0 = pts[0].t, t1 = pts[pts.length - 1].t || t0 + 1;
    const max = Math.max(1, ...pts.map((s) => Math.max(s.ready || 0, s.in_progress || 0)));
    for (const [key, cls] of [["ready", "ready"], ["in_progress", "progress"]]) {
      const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      line.setAttribute("class", cls);
      line.setAttribute("points", pts.map((s) => {
        const x = ((s.t - t0) / Math.max(t1 - t0, 1e-9)) * (w - 2) + 1;
        const y = h - 2 - ((s[key] || 0) / max) * (h - 4);
        return x.toFixed(1) + "," + y.toFixed(1);
      }).join(" "));
      svg.append(line);
    }
    return svg;
  }

  async function loadQueues() {
    const data = await api("/api/queues");
    const body = $("#queue-table tbody");
    const rows = data.queues.map((q) => {
      const c = q.counts;
      const rate = q.net_rate === null ? "—" : (q.net_rate > 0 ? "+" : "") + q.net_rate.toFixed(2) + "/s";
      return el("tr", { "data-queue": q.name },
        el("th", { scope: "row" }, q.name),
        el("td", {}, q.backend),
        el("td", { class: "num c-ready" }, fmt(c.ready)),
        el("td", { class: "num c-delayed" }, fmt(c.delayed)),
        el("td", { class: "num c-in-progress" }, fmt(c.in_progress)),
        el("td", { class: "num c-dead" }, fmt(c.dead)),
        el("td", { class: "num c-consumers" }, fmt(c.consumers)),
        q.error ? el("td", { class: "err" }, q.error) : el("td", {}, chart(q.history)),
        el("td", { class: "num" }, rate));
    });
    body.replaceChildren(...rows);
    const sel = $("#f-queue");
    if (sel.options.length === 1) {
      for (const q of data.queues) if (q.has_dead_letters) sel.append(el("option", { value: q.name }, q.name));
    }
  }

  // ------------------------------------------------------------------- pools
  async function loadPools() {
    const data = await api("/api/pools");
    if (!data.pools.length) return;
    const list = data.pools.map((p) => {
      const waited = p.rate_limit && p.rate_limit.wait_seconds != null ? ` (${p.rate_limit.wait_seconds.toFixed(2)} s in all)` : "";
      const rl = p.rate_limit ? `${p.rate_limit.per_second}/s, burst ${p.rate_limit.burst}; waits ${fmt(p.rate_limit.waits)}${waited}` : "none";
      const meta = el("dl", { class: "meta" },
        el("dt", {}, "State"), el("dd", {}, el("span", { class: "badge " + (p.state || "") }, p.state || "—")),
        el("dt", {}, "Health"), el("dd", {}, el("span", { class: "badge " + (p.health || "") }, p.health || "—")),
        el("dt", {}, "In flight"), el("dd", {}, `${fmt(p.in_flight)} of ${fmt(p.concurrency_limit)}`),
        el("dt", {}, "Circuit breaker"), el("dd", {}, p.circuit_breaker ? el("span", { class: "badge " + p.circuit_breaker }, p.circuit_breaker) : "none"),
        el("dt", {}, "Rate limit"), el("dd", {}, rl),
        el("dt", {}, "Completed"), el("dd", {}, `${fmt(p.counters.processed)} (${p.completed_per_second === null ? "—" : p.completed_per_second.toFixed(2)}/s); failed ${fmt(p.counters.failed)}, dead-lettered ${fmt(p.counters.dead_lettered)}`),
        el("dt", {}, "Watched for"), el("dd", {}, `${Math.round(p.uptime_seconds)} s`),
        el("dt", {}, "Workers"), el("dd", {}, p.workers.map((w) => `${w.id}: ${w.in_flight}`).join(", ") || "—"));
      return el("article", { class: "pool", "data-pool": p.name }, el("h3", {}, p.name), meta);
    });
    $("#pool-list").replaceChildren(...list);
  }

  // --------------------------------------------------------------- schedules
  async function loadSchedules() {
    const data = await api("/api/schedules");
    for (const e of data.errors) say("Schedules: " + e, true);
    if (!data.schedules.length) return;
    const rows = data.schedules.map((s) => {
      const trigger = s.cron !== null ? `cron ${s.cron}` : (s.every !== null ? `every ${s.every} s` : "—");
      const runs = s.next.map((r) => el("li", {}, el("time", { datetime: r.utc }, r.local), el("br"),
                                        el("span", { class: "muted" }, r.utc)));
      const leader = s.leader ? `${s.leader.host} pid ${s.leader.pid}` : "none";
      return el("tr", { "data-schedule": s.name },
        el("th", { scope: "row" }, s.name), el("td", {}, s.app),
        el("td", {}, trigger, el("br"), el("span", { class: "muted" }, s.tz)),
        el("td", {}, el("ul", { class: "runs" }, ...runs)),
        el("td", {}, s.last_tick || "none"), el("td", {}, leader));
    });
    $("#schedule-table tbody").replaceChildren(...rows);
  }

  // ------------------------------------------------------------ dead letters
  function filterQuery() {
    const f = state.filters, q = new URLSearchParams();
    if (f.queue) q.set("queue", f.queue);
    if (f.error_type) q.set("error_type", f.error_type);
    if (f.since) q.set("since", f.since);
    if (f.until) q.set("until", f.until);
    q.set("offset", state.offset);
    q.set("limit", PAGE);
    return q.toString();
  }

  async function loadDeadLetters() {
    const data = await api("/api/dead-letters?" + filterQuery());
    state.items = data.items;
    state.total = data.total;
    state.selected.clear();
    const types = $("#f-type"), chosen = types.value;
    types.replaceChildren(el("option", { value: "" }, "Any"),
      ...data.error_types.map((t) => el("option", { value: t, selected: t === chosen }, t)));
    const rows = data.items.map((d) => el("tr", { "data-id": d.id, "data-queue": d.queue },
      el("td", {}, el("input", { type: "checkbox", class: "pick", "aria-label": "Select " + d.id,
        onchange: (e) => { e.target.checked ? state.selected.add(d) : state.selected.delete(d); syncSelection(); } })),
      el("td", {}, el("code", {}, d.id)),
      el("td", {}, d.queue),
      el("td", {}, el("strong", {}, d.error_type), " ", d.error_message),
      el("td", {}, when(d.failed_at)),
      el("td", { class: "num" }, d.attempts),
      el("td", {},
        el("button", { type: "button", class: "view", onclick: () => showDeadLetter(d) }, "View"), " ",
        el("button", { type: "button", class: "replay", "aria-label": "Replay " + d.id, onclick: () => replay(d.queue, [d.id]) }, "Replay"))));
    $("#dl-table tbody").replaceChildren(...rows);
    $("#dl-all").checked = false;
    const end = Math.min(state.offset + data.items.length, data.total);
    $("#dl-range").textContent = data.total ? `${state.offset + 1}–${end} of ${data.total}` : "none";
    $("#dl-count").textContent = `${data.total} dead letter${data.total === 1 ? "" : "s"}${data.truncated ? " (only the oldest 10,000 read)" : ""}`;
    $("#dl-prev").disabled = state.offset === 0;
    $("#dl-next").disabled = end >= data.total;
    syncSelection();
  }

  function syncSelection() {
    $("#replay-selected").disabled = state.selected.size === 0;
    $("#replay-selected").textContent = state.selected.size ? `Replay selected (${state.selected.size})` : "Replay selected";
  }

  let detail = null;
  async function showDeadLetter(d) {
    detail = await api(`/api/dead-letter?queue=${encodeURIComponent(d.queue)}&id=${encodeURIComponent(d.id)}`);
    const meta = $("#dl-meta");
    const pairs = [["Message id", detail.id], ["Queue", detail.queue], ["Source queue", detail.source_queue],
      ["Error", detail.error_type + ": " + detail.error_message], ["Failed at", when(detail.failed_at)],
      ["Attempts", detail.attempts], ["Poison pill", detail.poison_pill ? "yes" : "no"],
      ["Worker", detail.worker_id], ["Body size", detail.body.size + " bytes" + (detail.body.truncated ? " (shown: the first 64 KiB)" : "")]];
    meta.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const best = detail.body.json !== null ? "json" : (detail.body.text !== null ? "text" : "hex");
    document.querySelector(`input[name=view][value=${best}]`).checked = true;
    renderBody();
    $("#dl-headers").textContent = JSON.stringify(detail.headers, null, 2);
    $("#dl-detail").hidden = false;
    $("#dl-detail-h").focus();
  }

  function renderBody() {
    if (!detail) return;
    const view = document.querySelector("input[name=view]:checked").value;
    const b = detail.body;
    const text = view === "json" ? (b.json ?? "(not JSON)") : view === "text" ? (b.text ?? "(not UTF-8 text)") :
      b.hex.replace(/(.{2})/g, "$1 ").replace(/((?:\S\S ){16})/g, "$1\n");
    $("#dl-body").textContent = text;
  }

  // Ask with the confirm dialog; `word` must be typed when given.
  function ask(title, text, word) {
    return new Promise((resolve) => {
      const dlg = $("#confirm"), input = $("#confirm-input"), ok = $("#confirm-ok");
      $("#confirm-h").textContent = title;
      $("#confirm-text").textContent = text;
      $("#confirm-type-p").hidden = !word;
      $("#confirm-word").textContent = word || "";
      input.value = "";
      ok.disabled = !!word;
      input.oninput = () => { ok.disabled = input.value !== word; };
      dlg.onclose = () => resolve(dlg.returnValue === "ok" && (!word || input.value === word));
      dlg.returnValue = "";
      dlg.showModal();
      (word ? input : $("#confirm-cancel")).focus();
    });
  }

  async function replay(queue, ids) {
    try {
      const r = await api("/api/dead-letters/replay", { queue, ids });
      say(`Replayed ${r.replayed} dead letter${r.replayed === 1 ? "" : "s"} to ${queue}.`);
    } catch (e) { say("Replay failed: " + e.message, true); }
    await refreshAll();
  }

  async function replaySelected() {
    const byQueue = new Map();
    for (const d of state.selected) byQueue.set(d.queue, [...(byQueue.get(d.queue) || []), d.id]);
    for (const [queue, ids] of byQueue) await replay(queue, ids);
  }

  async function replayAll() {
    const queue = state.filters.queue;
    if (!queue) { say("Choose a queue in the filter first: replay all works on one queue.", true); return; }
    if (await ask("Replay every dead letter?", `Every dead letter of ${queue} goes back to its queue.`, null)) await replay(queue, null);
  }

  async function purge() {
    const queue = state.filters.queue;
    if (!queue) { say("Choose a queue in the filter first: purge works on one queue.", true); return; }
    if (!(await ask("Purge dead letters?", `Every dead letter of ${queue} is deleted for good.`, queue))) { say("Purge cancelled."); return; }
    try {
      const r = await api("/api/dead-letters/purge", { queue, confirm: queue });
      say(`Purged ${r.purged} dead letter${r.purged === 1 ? "" : "s"} of ${queue}.`);
    } catch (e) { say("Purge failed: " + e.message, true); }
    await refreshAll();
  }

  // ------------------------------------------------------------------- tasks
  async function lookUpTask(ev) {
    ev.preventDefault();
    const id = $("#task-id").value.trim();
    const out = $("#task-result");
    try {
      const t = await api("/api/tasks/" + encodeURIComponent(id));
      const pairs = [["Status", t.status], ["Attempts", t.attempts ?? "—"],
        ["Result", t.result === null ? "—" : JSON.stringify(t.result, null, 2)],
        ["Error", t.error ? `${t.error.type}: ${t.error.message}` : "—"]];
      out.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      out.hidden = false;
    } catch (e) { say("Task look-up failed: " + e.message, true); }
  }

  // ------------------------------------------------------------------- setup
  async function refreshAll() {
    await Promise.all([loadQueues(), loadDeadLetters(), loadPools(), loadSchedules()]);
  }

  function toUnix(value) { return value ? String(Date.parse(value + "Z") / 1000) : ""; }

  async function start() {
    $("#dl-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      state.filters = { queue: $("#f-queue").value, error_type: $("#f-type").value,
                        since: toUnix($("#f-since").value), until: toUnix($("#f-until").value) };
      state.offset = 0;
      loadDeadLetters().catch((err) => say(err.message, true));
    });
    $("#dl-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadDeadLetters(); });
    $("#dl-next").addEventListener("click", () => { state.offset += PAGE; loadDeadLetters(); });
    $("#dl-all").addEventListener("change", (e) => {
      for (const box of document.querySelectorAll("#dl-table .pick")) {
        box.checked = e.target.checked;
        box.dispatchEvent(new Event("change"));
      }
    });
    $("#replay-selected").addEventListener("click", replaySelected);
    $("#replay-all").addEventListener("click", replayAll);
    $("#purge").addEventListener("click", purge);
    for (const r of document.querySelectorAll("input[name=view]")) r.addEventListener("change", renderBody);
    $("#dl-detail-h").setAttribute("tabindex", "-1");
    $("#task-form").addEventListener("submit", lookUpTask);
    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      // Kept for this tab only; the page starts again with it.
      sessionStorage.setItem("foxtive-token", $("#token").value);
      location.reload();
    });
    // The data is asked for at once, with the info (no round trip first).
    const data = refreshAll();
    data.catch(() => {});
    try {
      const info = await api("/api/info");
      $("#broker").textContent = info.broker ? "Broker: " + info.broker : "";
      if (!info.tasks) $("#tasks").append(el("p", { class: "muted" }, "No result store: start the dashboard with --app module:app to look tasks up."));
      if (info.token_required && !state.token) { $("#token-form").hidden = false; say("This dashboard needs its token."); return; }
      await data;
      window.foxtiveFirstRender = performance.now();
      document.body.dataset.ready = "1";
    } catch (e) { say(e.message, true); }
    setInterval(() => { Promise.all([loadQueues(), loadPools(), loadSchedules()]).catch((e) => say(e.message, true)); }, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
