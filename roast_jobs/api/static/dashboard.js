// The migration dashboard: reads the admin routes every 5 s with the API key kept in
// sessionStorage, draws its charts as inline SVG, and sends the admin actions. Plain
// JavaScript, no library: the page must work with no internet access.
"use strict";

(() => {
  const KEY = "roastJobsAdminKey";
  const REFRESH_MS = 5000;
  const WINDOW = 3600;
  const BUCKET = 60;
  const STATES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];
  const BACKENDS = ["legacy", "celery"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const apiKey = () => sessionStorage.getItem(KEY) || "";
  const selectedDead = new Set();
  let refreshing = false;
  let refreshCount = 0;

  // -- HTTP -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(what, status, message) {
      super(`${what}: ${status ? status + " " : ""}${message}`);
      this.status = status;
    }
  }

  // One call to the API with the key; the parsed JSON, or an ApiError carrying the
  // route's {"error": ...} message.
  async function call(method, path, body) {
    const headers = { Authorization: `Bearer ${apiKey()}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const what = `${method} ${path}`;
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(what, 0, `cannot reach the API (${err.message})`);
    }
    const raw = await resp.text();
    let data = null;
    try {
      data = raw ? JSON.parse(raw) : null;
    } catch (_err) {
      data = null;
    }
    if (!resp.ok) {
      const message =
        data && typeof data.error === "string" ? data.error : raw.slice(0, 200) || resp.statusText;
      throw new ApiError(what, resp.status, message);
    }
    return data;
  }

  // -- formatting -----------------------------------------------------------------------

  function text(el, value) {
    el.textContent = value === null || value === undefined ? "-" : String(value);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "-";
    if (value < 60) return `${value.toFixed(1)} s`;
    const m = Math.floor(value / 60);
    if (m < 60) return `${m}m ${Math.round(value % 60)}s`;
    return `${Math.floor(m / 60)}h ${m % 60}m`;
  }

  // Server times are UTC; some come without a zone ("Job"-style naive timestamps).
  function parseTime(iso) {
    return new Date(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  }

  function clock(iso) {
    if (!iso) return "-";
    const d = parseTime(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  function hhmm(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  }

  function cell(row, value, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    text(td, value);
    row.appendChild(td);
    return td;
  }

  function button(label, attrs) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    for (const [k, v] of Object.entries(attrs)) b.setAttribute(k, v);
    return b;
  }

  // -- messages ---------------------------------------------------------------------------

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function sectionError(name, message) {
    const el = document.querySelector(`[data-error="${name}"]`);
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  function actionResult(ok, message) {
    const el = $("action-result");
    el.textContent = message;
    el.className = ok ? "ok" : "err";
    el.dataset.ok = ok ? "true" : "false";
    el.hidden = false;
  }

  // A short line for an action's answer, whatever its shape.
  function summary(data) {
    if (data === null || data === undefined) return "done";
    if (typeof data !== "object") return String(data);
    const parts = [];
    for (const k of ["id", "jobId", "status", "moved", "redriven", "count", "reason"]) {
      if (data[k] !== undefined && typeof data[k] !== "object") parts.push(`${k} ${data[k]}`);
    }
    if (parts.length) return parts.join(", ");
    const json = JSON.stringify(data);
    return json.length > 160 ? json.slice(0, 157) + "..." : json;
  }

  // -- rendering ------------------------------------------------------------------------

  function renderFlags(flags) {
    const percent = flags.celery_rollout_percent;
    text($("rollout-percent"), flags.use_celery ? percent : 0);
    text($("rollout-mode"), flags.mode);
    text($("flag-use-celery"), flags.use_celery ? "on" : "off");
    text($("flag-percent"), percent);
    const over = flags.overridden_by_environment || [];
    text($("flag-overridden"), over.length ? over.join(", ") : "none");
    $("percent-input").placeholder = String(percent);
  }

  function renderRollout(data) {
    // Jobs by backend and state.
    const jobs = $("jobs-table").tBodies[0];
    jobs.replaceChildren();
    for (const backend of BACKENDS) {
      const figures = (data.backends[backend] || {}).jobs || {};
      const row = jobs.insertRow();
      row.dataset.backend = backend;
      cell(row, backend, `backend-${backend}`);
      for (const state of STATES) {
        cell(row, figures[state] ?? 0, "num").dataset.testid = `jobs-${backend}-${state}`;
      }
    }
    const oldest = [data.oldest.running, data.oldest.pending]
      .filter(Boolean)
      .map((j) => `oldest ${j.status}: job ${j.job_id} (${j.backend}), ${seconds(j.age_seconds)}`);
    text($("oldest"), oldest.join("; ") || "no PENDING or RUNNING job");

    // The rollback check, as `roast-jobs rollout check` judges it.
    const check = data.check;
    const verdict = $("verdict");
    verdict.textContent =
      check.verdict === "healthy" ? "healthy" : `UNHEALTHY: ${check.fired.join(", ")}`;
    verdict.className = check.verdict;
    verdict.dataset.verdict = check.verdict;
    text($("check-window"), `(jobs that ended in the last ${seconds(check.windowSeconds)})`);
    const triggers = $("triggers").tBodies[0];
    triggers.replaceChildren();
    for (const t of check.triggers) {
      const row = triggers.insertRow();
      row.dataset.trigger = t.name;
      row.dataset.fired = String(t.fired);
      if (t.fired) row.className = "fired";
      cell(row, t.fired ? "FIRED" : "ok");
      cell(row, t.name);
      cell(row, t.value === null ? null : Number(t.value.toFixed(3)), "num");
      cell(row, t.threshold, "num");
      cell(row, t.detail);
    }

    // Migration progress.
    const m = data.migration;
    text($("migration-remaining"), m.remaining);
    const moves = $("migration-table").tBodies[0];
    moves.replaceChildren();
    for (const c of m.counts) {
      const row = moves.insertRow();
      row.dataset.route = `${c.from}-${c.to}-${c.status}`;
      cell(row, c.from);
      cell(row, c.to);
      cell(row, c.status);
      cell(row, c.count, "num");
    }
    if (!m.counts.length) {
      const row = moves.insertRow();
      cell(row, "nothing moved yet").colSpan = 4;
    }
    text(
      $("migration-last"),
      m.last_run
        ? `last run ${m.last_run.run_id} at ${clock(m.last_run.at)}: ` +
            `${m.last_run.moved} moved, ${m.last_run.failed} failed`
        : "no migrator run yet",
    );

    // The latest failures, each with a retry button.
    const failures = $("failures").tBodies[0];
    failures.replaceChildren();
    for (const f of data.latestFailures) {
      const row = failures.insertRow();
      row.dataset.jobId = f.id;
      const code = document.createElement("code");
      code.textContent = f.id;
      cell(row, "").replaceChildren(code);
      cell(row, f.backend, `backend-${f.backend}`);
      cell(row, clock(f.at));
      cell(row, f.error);
      cell(row, "").appendChild(button("Retry", { "data-action": "rerun", "data-job-id": f.id }));
    }
    if (!data.latestFailures.length) {
      const row = failures.insertRow();
      cell(row, "no failed job").colSpan = 5;
    }
  }

  function renderPause(pause) {
    const el = $("pause-state");
    el.textContent = pause.paused
      ? `PAUSED since ${clock(pause.startedAt)}: ${pause.reason}`
      : "open (not paused)";
    el.dataset.paused = String(pause.paused);
  }

  function renderDeadLetters(data) {
    const list = data.deadLetters;
    text($("dead-count"), data.count);
    const body = $("dead-letters").tBodies[0];
    body.replaceChildren();
    const ids = new Set(list.map((d) => String(d.id)));
    for (const id of [...selectedDead]) if (!ids.has(id)) selectedDead.delete(id);
    for (const d of list) {
      const row = body.insertRow();
      row.dataset.deadId = String(d.id);
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = String(d.id);
      box.checked = selectedDead.has(String(d.id));
      box.setAttribute("aria-label", `select dead letter ${d.id}`);
      cell(row, "").replaceChildren(box);
      cell(row, d.id, "num");
      cell(row, d.queue);
      cell(row, d.task);
      cell(row, d.reason);
      cell(row, clock(d.dead_at));
    }
    if (!list.length) {
      const row = body.insertRow();
      cell(row, "no dead letter").colSpan = 6;
    }
  }

  function renderMetrics(data) {
    const minute = 60 / data.bucket;
    const starts = data.backends[BACKENDS[0]].series.map((p) => parseTime(p.start));
    const span = { from: parseTime(data.from), to: parseTime(data.to) };
    const until = hhmm(parseTime(data.takenAt));
    text($("metrics-range"), `(${hhmm(span.from)} to ${until}, ${data.bucket} s buckets)`);
    const byBackend = (field, scale, extra) =>
      BACKENDS.map((b) => ({
        backend: b,
        label: b + (extra ? ` ${extra}` : ""),
        values: data.backends[b].series.map((p) => (p[field] === null ? null : p[field] * scale)),
        ...(extra === "p95" ? { dashed: true } : {}),
      }));
    lineChart($("chart-throughput"), starts, data.bucket, span, byBackend("finished", minute), "/min");
    lineChart(
      $("chart-pickup"),
      starts,
      data.bucket,
      span,
      [...byBackend("pickupP50", 1, "p50"), ...byBackend("pickupP95", 1, "p95")],
      "s",
    );
    const body = $("metrics-totals").tBodies[0];
    body.replaceChildren();
    for (const b of BACKENDS) {
      const t = data.backends[b].totals;
      const row = body.insertRow();
      row.dataset.backend = b;
      cell(row, b, `backend-${b}`);
      for (const [name, value] of [
        ["finished", t.finished],
        ["completed", t.completed],
        ["failed", t.failed],
        ["started", t.started],
        ["p50", seconds(t.pickupP50)],
        ["p95", seconds(t.pickupP95)],
      ]) {
        cell(row, value, "num").dataset.testid = `totals-${b}-${name}`;
      }
    }
  }

  // -- charts ---------------------------------------------------------------------------

  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // A step of 1, 2 or 5 times a power of ten, giving about `count` ticks up to `max`.
  function niceStep(max, count) {
    const raw = max / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    return step || power * 10;
  }

  // Lines over time, one per series (points at bucket middles; a null is a gap).
  function lineChart(svg, starts, bucket, span, series, unit) {
    const W = 640;
    const H = 220;
    const pad = { left: 46, right: 12, top: 24, bottom: 24 };
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    const values = series.flatMap((s) => s.values).filter((v) => v !== null);
    const top = Math.max(1, ...values);
    const step = niceStep(top, 4);
    const yMax = Math.ceil(top / step) * step;
    const t0 = span.from.getTime();
    const t1 = span.to.getTime();
    const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (W - pad.left - pad.right);
    const y = (v) => H - pad.bottom - (v / yMax) * (H - pad.top - pad.bottom);

    for (let v = 0; v <= yMax + step / 2; v += step) {
      el("line", { x1: pad.left, x2: W - pad.right, y1: y(v), y2: y(v), class: "grid" }, svg);
      const label = el("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, svg);
      label.textContent = `${Number(v.toPrecision(6))}${v === yMax ? " " + unit : ""}`;
    }
    const tick = bucket * 1000 * Math.max(1, Math.round(starts.length / 6));
    for (let t = t0; t <= t1; t += tick) {
      el("line", { x1: x(t), x2: x(t), y1: H - pad.bottom, y2: H - pad.bottom + 4, class: "axis" }, svg);
      const label = el("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, svg);
      label.textContent = hhmm(new Date(t));
    }
    el("line", { x1: pad.left, x2: W - pad.right, y1: H - pad.bottom, y2: H - pad.bottom, class: "axis" }, svg);
    el("line", { x1: pad.left, x2: pad.left, y1: pad.top, y2: H - pad.bottom, class: "axis" }, svg);

    let legendX = pad.left;
    for (const s of series) {
      let d = "";
      let pen = false;
      const group = el("g", { class: s.backend, "data-series": s.label }, svg);
      s.values.forEach((v, i) => {
        if (v === null) {
          pen = false;
          return;
        }
        const px = x(starts[i].getTime() + (bucket * 1000) / 2);
        d += `${pen ? "L" : "M"}${px.toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
        if (v > 0 || s.dashed) {
          const dot = el("circle", { cx: px, cy: y(v), r: 2.2, class: s.backend }, group);
          el("title", {}, dot).textContent = `${hhmm(starts[i])} ${s.label}: ${Number(v.toFixed(2))} ${unit}`;
        }
      });
      el("path", { d, class: `line ${s.backend}${s.dashed ? " dashed" : ""}` }, group);
      const legend = el("text", { x: legendX, y: 14, class: `legend-${s.backend}` }, svg);
      legend.textContent = `${s.dashed ? "- - " : "\u2014 "}${s.label}`;
      legendX += 14 + s.label.length * 7 + 24;
    }
  }

  // -- refresh ----------------------------------------------------------------------------

  const SOURCES = [
    ["flags", "/api/admin/flags", renderFlags],
    ["rollout", "/api/admin/rollout", renderRollout],
    ["metrics", `/api/admin/jobs/metrics?window=${WINDOW}&bucket=${BUCKET}`, renderMetrics],
    ["pause", "/api/admin/pause", renderPause],
    ["dead-letters", "/api/admin/dead-letters", renderDeadLetters],
  ];

  async function refresh() {
    if (!apiKey()) {
      showError("Enter an admin API key (rmp_...) to load the dashboard.");
      return;
    }
    if (refreshing) return;
    refreshing = true;
    try {
      const results = await Promise.allSettled(
        SOURCES.map(([, path, render]) => call("GET", path).then(render)),
      );
      // Refused keys and an unreachable API concern the whole page; anything else,
      // the section it broke.
      const global = [];
      results.forEach((r, i) => {
        const [name] = SOURCES[i];
        const message = r.status === "rejected" ? r.reason.message || String(r.reason) : "";
        sectionError(name, message);
        if (r.status === "rejected" && [0, 401, 403].includes(r.reason.status)) {
          global.push(message);
        }
      });
      showError([...new Set(global)].join("\n"));
      const now = new Date();
      const stamp = $("last-refresh");
      stamp.textContent =
        now.toLocaleTimeString() +
        (results.some((r) => r.status === "rejected") ? " (with errors)" : "");
      stamp.setAttribute("datetime", now.toISOString());
      stamp.dataset.count = String(++refreshCount);
    } finally {
      refreshing = false;
    }
  }

  // -- actions --------------------------------------------------------------------------

  // Runs one admin action; its outcome (or the route's error) shows on the page, then
  // the figures are read again.
  async function act(describe, method, path, body) {
    try {
      const data = await call(method, path, body);
      actionResult(true, describe(data));
    } catch (err) {
      actionResult(false, err.message);
    }
    await refresh();
  }

  function setPercent(raw) {
    const n = Number(raw);
    const value = raw !== "" && Number.isFinite(n) ? n : raw;
    return act(
      (f) => `rollout set to ${f.celery_rollout_percent}% (mode ${f.mode})`,
      "PUT",
      "/api/admin/flags",
      { rolloutPercent: value },
    );
  }

  function jobAction(action, id, reason) {
    const path = `/api/monitor/jobs/${encodeURIComponent(id)}/${action}`;
    const body = action === "cancel" ? (reason ? { reason } : {}) : undefined;
    const done =
      action === "cancel"
        ? (d) => `job ${id} cancelled: ${summary(d)}`
        : (d) => `job ${id} retried as job ${d.job.id} on ${d.job.backend}`;
    return act(done, "POST", path, body);
  }

  function wire() {
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("api-key").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      $("api-key").value = "";
      showKey();
      refresh();
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      showKey();
      showError("Enter an admin API key (rmp_...) to load the dashboard.");
    });
    $("refresh-now").addEventListener("click", refresh);

    $("percent-form").noValidate = true; // the API says what is wrong with a value
    $("percent-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setPercent($("percent-input").value.trim());
    });
    for (const b of document.querySelectorAll("[data-percent]")) {
      b.addEventListener("click", () => setPercent(b.dataset.percent));
    }

    $("pause-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const reason = $("pause-reason").value.trim();
      act(() => `job creation paused: ${reason}`, "POST", "/api/admin/pause", { reason });
    });
    $("resume-btn").addEventListener("click", () =>
      act(() => "job creation resumed", "DELETE", "/api/admin/pause"),
    );

    $("job-form").noValidate = true;
    $("job-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = $("job-id").value.trim();
      if (!id) {
        actionResult(false, "enter a job id");
        return;
      }
      const action = e.submitter && e.submitter.value === "cancel" ? "cancel" : "rerun";
      jobAction(action, id, $("job-reason").value.trim());
    });
    $("failures").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-action]");
      if (b) jobAction(b.dataset.action, b.dataset.jobId);
    });

    $("dead-letters").addEventListener("change", (e) => {
      if (e.target.type !== "checkbox") return;
      if (e.target.checked) selectedDead.add(e.target.value);
      else selectedDead.delete(e.target.value);
    });
    const redriven = (d) =>
      `${d.redriven.length} dead letter(s) redriven, ${d.heldBack.length} held back` +
      d.heldBack.map((h) => `; ${h.dead_id}: ${h.reason}`).join("");
    $("redrive-selected").addEventListener("click", () => {
      const ids = [...selectedDead].map(Number);
      if (!ids.length) {
        actionResult(false, "select the dead letters to redrive first");
        return;
      }
      selectedDead.clear();
      act(redriven, "POST", "/api/admin/dead-letters/redrive", { ids });
    });
    $("redrive-all").addEventListener("click", () =>
      act(redriven, "POST", "/api/admin/dead-letters/redrive", { all: true }),
    );
  }

  function showKey() {
    $("key-state").textContent = apiKey() ? "key kept in this tab" : "no key";
  }

  wire();
  showKey();
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
