// The queuectl dashboard: plain JavaScript, no build step, no third-party code.
// Every value from the store is put in the page as text (textContent), never as HTML.
"use strict";

const STATES = ["pending", "processing", "completed", "failed", "dead", "canceled"];
const main = document.getElementById("main");
const message = document.getElementById("message");
let actions = false;

function token() { return sessionStorage.getItem("queuectl-token") || ""; }

// el("td", {class: "x"}, "text", child): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch("/api/" + path, { ...(options || {}), headers });
  const body = await response.json();
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function jobLink(id) { return el("a", { href: "#/job/" + encodeURIComponent(id), class: "job-link" }, id); }
function when(value) { return value ? value.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—"; }
function command(cmd) { return Array.isArray(cmd) ? JSON.stringify(cmd) : cmd; }
function labels(map) { return Object.entries(map || {}).map(([k, v]) => k + "=" + v).join(", "); }
function duration(ms) {
  for (const [unit, size] of [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000]]) {
    if (ms >= size && ms % size === 0) return ms / size + unit;
  }
  return ms + "ms";
}
function stateCell(state) { return el("td", { class: "state state-" + state }, state); }

async function act(path, done) {
  message.textContent = "";
  try {
    await api(path, { method: "POST" });
    await done();
  } catch (error) {
    message.textContent = error.message;
  }
}

function actionButton(label, path, done) {
  if (!actions) return null;
  return el("button", { type: "button", "data-action": label, onclick: () => act(path, done) }, label);
}

// -- pages ------------------------------------------------------------------------------

function chart(minutes) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 600, height = 120, bar = width / minutes.length;
  const top = Math.max(1, ...minutes.map(m => m.completed + m.failed + m.dead));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  minutes.forEach((m, i) => {
    let y = height;
    for (const outcome of ["completed", "failed", "dead"]) {
      const h = (m[outcome] / top) * (height - 10);
      if (!h) continue;
      y -= h;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("class", outcome);
      rect.setAttribute("x", i * bar + 1);
      rect.setAttribute("y", y);
      rect.setAttribute("width", Math.max(1, bar - 2));
      rect.setAttribute("height", h);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${when(m.minute)}: ${m[outcome]} ${outcome}`;
      rect.append(title);
      svg.append(rect);
    }
  });
  return svg;
}

async function overview() {
  const [status, throughput] = await Promise.all([api("status"), api("throughput")]);
  const total = throughput.minutes.reduce(
    (sum, m) => ({ completed: sum.completed + m.completed, failed: sum.failed + m.failed, dead: sum.dead + m.dead }),
    { completed: 0, failed: 0, dead: 0 });
  const queues = Object.entries(status.queues);
  return [
    el("h1", {}, "Overview"),
    el("div", { class: "cards" }, STATES.map(state =>
      el("a", { class: "card " + state, href: "#/jobs?state=" + state, "data-state": state },
        el("span", { class: "n" }, status.counts[state]), state))),
    el("h2", {}, "Throughput, last hour"),
    el("p", { class: "legend" },
      el("span", {}, `${total.completed} completed`), el("span", {}, `${total.failed} failed`),
      el("span", {}, `${total.dead} dead`)),
    chart(throughput.minutes),
    el("h2", {}, "Queues"),
    queues.length ? el("table", {},
      el("tr", {}, el("th", {}, "queue"), STATES.map(s => el("th", {}, s))),
      queues.map(([name, counts]) => el("tr", {}, el("td", {}, name),
        STATES.map(s => el("td", {}, counts[s]))))) : el("p", { class: "muted" }, "No jobs yet."),
    el("h2", {}, "Schedules and workers"),
    el("p", {}, `${status.schedules.active} active schedule(s), ${status.schedules.suspended} suspended, `,
      el("span", { class: status.schedules.overdue ? "overdue" : "" }, `${status.schedules.overdue} overdue`),
      ` · ${status.workers.length} live worker(s)`),
  ];
}

function jobsTable(jobs, done) {
  if (!jobs.length) return el("p", { class: "muted" }, "No jobs.");
  return el("table", { class: "jobs" },
    el("tr", {}, ["id", "state", "queue", "command", "labels", "attempts", "created", "finished", "last error", ""]
      .map(h => el("th", {}, h))),
    jobs.map(job => el("tr", { "data-id": job.id },
      el("td", {}, jobLink(job.id)), stateCell(job.state), el("td", {}, job.queue),
      el("td", { class: "cmd" }, command(job.command)), el("td", {}, labels(job.labels)),
      el("td", {}, job.attempts), el("td", {}, when(job.created_at)), el("td", {}, when(job.finished_at)),
      el("td", { class: "err" }, job.last_error || ""),
      el("td", {}, job.state === "dead" ? actionButton("retry", `jobs/${encodeURIComponent(job.id)}/retry`, done) : null))));
}

async function jobs(params, dlq) {
  const state = dlq ? "dead" : (params.get("state") || "");
  const query = new URLSearchParams();
  if (!dlq && state) query.set("state", state);
  for (const name of ["queue", "cursor"]) if (params.get(name)) query.set(name, params.get(name));
  if (params.get("label")) query.append("label", params.get("label"));
  const page = await api((dlq ? "dlq" : "jobs") + "?" + query);
  const reload = () => route();
  const next = new URLSearchParams(params);
  if (page.next) next.set("cursor", page.next);
  const form = dlq ? null : el("form", { class: "filters", id: "filters", onsubmit: event => {
      event.preventDefault();
      const data = new URLSearchParams();
      for (const [k, v] of new FormData(event.target)) if (v) data.set(k, v);
      location.hash = "#/jobs?" + data;
    } },
    el("label", {}, "State ", el("select", { name: "state" }, el("option", { value: "" }, "any"),
      STATES.map(s => el("option", { value: s, selected: s === state }, s)))),
    el("label", {}, "Queue ", el("input", { name: "queue", value: params.get("queue") || "" })),
    el("label", {}, "Label ", el("input", { name: "label", placeholder: "key=value", value: params.get("label") || "" })),
    el("button", { type: "submit" }, "Filter"));
  return [
    el("h1", {}, dlq ? "Dead letter queue" : "Jobs" + (state ? ": " + state : "")),
    form,
    jobsTable(page.jobs, reload),
    el("p", {}, params.get("cursor") ? el("a", { href: "#/" + (dlq ? "dlq" : "jobs") }, "First page") : null, " ",
      page.next ? el("a", { href: "#/" + (dlq ? "dlq" : "jobs") + "?" + next, id: "next-page" }, "Next page") : null),
  ];
}

async function job(id) {
  const path = "jobs/" + encodeURIComponent(id);
  const [detail, log] = await Promise.all([api(path), api(path + "/log")]);
  const reload = () => route();
  const fields = ["id", "state", "queue", "priority", "attempts", "max_retries", "exit_code", "last_error",
    "created_at", "started_at", "finished_at", "available_at", "worker_id", "source", "schedule"];
  return [
    el("h1", {}, "Job ", el("span", { id: "job-id" }, detail.id)),
    el("p", {},
      detail.state === "dead" ? actionButton("retry", path + "/retry", reload) : null,
      ["pending", "failed"].includes(detail.state) ? actionButton("cancel", path + "/cancel", reload) : null),
    el("dl", { class: "fields" },
      el("dt", {}, "command"), el("dd", { id: "job-command" }, command(detail.command)),
      el("dt", {}, "labels"), el("dd", {}, labels(detail.labels)),
      fields.map(name => [el("dt", {}, name),
        el("dd", name === "state" ? { id: "job-state", class: "state state-" + detail.state } : {},
          detail[name] === null || detail[name] === undefined ? "—" : String(detail[name]))])),
    el("h2", {}, "Log" + (log.truncated ? " (the end)" : "")),
    el("pre", { class: "log", id: "log" }, log.text || "(no output)"),
  ];
}

async function schedules() {
  const data = await api("schedules");
  const reload = () => route();
  if (!data.schedules.length) return [el("h1", {}, "Schedules"), el("p", { class: "muted" }, "No schedules.")];
  return [
    el("h1", {}, "Schedules"),
    el("table", {},
      el("tr", {}, ["id", "when", "state", "next run", "next slots", "last success", "missed", ""].map(h => el("th", {}, h))),
      data.schedules.map(s => {
        const base = "schedules/" + encodeURIComponent(s.id) + "/";
        const spec = s.schedule;
        return el("tr", { "data-id": s.id },
          el("td", {}, s.id),
          el("td", {}, spec.cron ? [].concat(spec.cron).join(" | ") : "every " + duration(spec.every_ms)),
          el("td", { class: s.overdue ? "overdue" : "" }, s.overdue ? "OVERDUE" : s.suspended ? "suspended" : "active"),
          el("td", {}, when(s.next_run)),
          el("td", { class: "muted" }, s.next_slots.slice(1).join(", ")),
          el("td", {}, when(s.last_success_at)),
          el("td", {}, s.missed),
          el("td", {},
            s.suspended ? actionButton("resume", base + "resume", reload) : actionButton("pause", base + "pause", reload),
            " ", actionButton("trigger", base + "trigger", reload)));
      })),
  ];
}

async function workers() {
  const data = await api("workers");
  return [
    el("h1", {}, "Workers"),
    data.workers.length ? el("table", {},
      el("tr", {}, ["id", "host", "pid", "queues", "started", "heartbeat", "current job"].map(h => el("th", {}, h))),
      data.workers.map(w => el("tr", {}, el("td", {}, w.id), el("td", {}, w.host), el("td", {}, w.pid),
        el("td", {}, (w.queues || []).join(", ") || "all"), el("td", {}, when(w.started_at)),
        el("td", {}, when(w.heartbeat_at)), el("td", {}, w.current_job ? jobLink(w.current_job) : "—"))))
      : el("p", { class: "muted" }, "No live workers."),
  ];
}

// -- routing ----------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const [page, ...rest] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === (page || "overview") || (page === "job" && link.dataset.page === "jobs"));
  }
  try {
    let content;
    if (page === "jobs") content = await jobs(params, false);
    else if (page === "dlq") content = await jobs(params, true);
    else if (page === "job") content = await job(decodeURIComponent(rest.join("/")));
    else if (page === "schedules") content = await schedules();
    else if (page === "workers") content = await workers();
    else content = await overview();
    main.replaceChildren(...[].concat(content).filter(Boolean));
    document.body.dataset.page = page || "overview";
  } catch (error) {
    main.replaceChildren(el("h1", {}, "Error"), el("p", { class: "error" }, error.message));
    if (error.status === 401) document.getElementById("token-form").hidden = false;
  }
}

async function refreshMode(form) {
  try {
    const status = await api("status");
    actions = status.actions;
    form.hidden = !actions;
    document.getElementById("mode").textContent = actions ? "actions allowed (with the token)" : "read-only";
  } catch (error) {
    if (error.status === 401) form.hidden = false;  // beyond loopback, reads need the token too
  }
}

async function start() {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", async event => {
    event.preventDefault();
    sessionStorage.setItem("queuectl-token", document.getElementById("token").value);
    await refreshMode(form);
    await route();
  });
  await refreshMode(form);
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "1";
}

start();
