// The daemon's status page: the upgrades, one upgrade's phases and a grid of
// its hosts, updated live from the event stream, and the control buttons.
// No build step: plain JavaScript served as it is written.
//
// The token is typed once, kept in sessionStorage (this tab only) and sent as
// a bearer header; it is never put in a URL. EventSource cannot send headers,
// so the event stream is read with fetch(), resuming with Last-Event-ID.
"use strict";

const TOKEN_KEY = "orchestrator-token";
const $ = (selector) => document.querySelector(selector);
let current = null; // {id, controller, lastEvent, refreshing, again}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("the daemon refused that token");
    throw new ApiError(401, "unauthorized");
  }
  if (!response.ok) {
    throw new ApiError(response.status, body.detail || `HTTP ${response.status}`);
  }
  return body;
}

function showLogin(message) {
  stopStream();
  $("#login").hidden = false;
  $("#upgrades").hidden = true;
  $("#upgrade").hidden = true;
  $("#forget").hidden = true;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function showList() {
  const { upgrades } = await api("GET", "/v1/upgrades");
  const body = $("#upgrade-list tbody");
  body.replaceChildren();
  for (const up of upgrades.slice().reverse()) {
    const row = document.createElement("tr");
    row.dataset.id = up.id;
    row.append(
      cell(up.id),
      cell(up.state, `s-${up.state}`),
      cell(up.name),
      cell(`${up.from_version} → ${up.to_version}`),
    );
    row.addEventListener("click", () => { location.hash = up.id; });
    body.append(row);
  }
  $("#upgrades").hidden = false;
}

function render(doc) {
  $("#title").textContent =
    `${doc.id}: ${doc.name} ${doc.from_version} → ${doc.to_version} on ${doc.inventory}`;
  const state = $("#state");
  state.textContent = doc.state + (doc.reason ? `: ${doc.reason}` : "");
  state.className = `s-${doc.state}`;
  state.dataset.state = doc.state;
  $("#next").textContent = `next: ${doc.next}`;

  const failure = $("#failure");
  const first = doc.first_failure;
  failure.hidden = !first;
  failure.textContent = first
    ? `first failure: ${first.summary}\n${first.output || ""}`.trimEnd()
    : "";

  const phases = $("#phases tbody");
  phases.replaceChildren();
  for (const phase of doc.phases) {
    const row = document.createElement("tr");
    const flag = phase.irreversible ? " (point of no return)" : "";
    row.append(
      cell(phase.name + flag),
      cell(phase.kind),
      cell(phase.state, `s-${phase.state}`),
      cell(`${phase.hosts_finished}/${phase.hosts_total}`),
    );
    phases.append(row);
  }

  // the grid: a row per host, a column per phase, each cell the host's state there
  const hosts = [];
  const states = new Map();
  for (const phase of doc.phases) {
    for (const batch of phase.batches) {
      for (const host of batch.hosts) {
        if (!states.has(host.host)) {
          hosts.push(host.host);
          states.set(host.host, new Map());
        }
        states.get(host.host).set(phase.name, host);
      }
    }
  }
  const head = document.createElement("tr");
  head.append(cell("host"), ...doc.phases.map((p) => cell(p.name)));
  $("#grid thead").replaceChildren(head);
  const grid = $("#grid tbody");
  grid.replaceChildren();
  for (const name of hosts) {
    const row = document.createElement("tr");
    row.append(cell(name));
    for (const phase of doc.phases) {
      const host = states.get(name).get(phase.name);
      const td = cell(host ? host.state : "", host ? `s-${host.state}` : "");
      td.dataset.host = name;
      td.dataset.phase = phase.name;
      if (host) {
        td.dataset.state = host.state;
        if (host.error) td.title = host.error;
      }
      row.append(td);
    }
    grid.append(row);
  }

  const allowed = {
    pause: ["running", "waiting_approval"],
    resume: ["paused"],
    abort: ["pending", "preflight", "running", "paused", "waiting_approval"],
    approve: ["waiting_approval"],
    rollback: ["running", "paused", "waiting_approval", "failed", "aborted"],
  };
  for (const button of document.querySelectorAll("#controls button")) {
    button.disabled = !allowed[button.dataset.action].includes(doc.state);
  }
  current.doc = doc;
}

async function refresh() {
  // at most one status request at a time; events meanwhile ask for one more
  if (current.refreshing) {
    current.again = true;
    return;
  }
  current.refreshing = true;
  try {
    do {
      current.again = false;
      const id = current.id;
      const doc = await api("GET", `/v1/upgrades/${encodeURIComponent(id)}`);
      if (current && current.id === id) render(doc);
    } while (current && current.again);
  } finally {
    if (current) current.refreshing = false;
  }
}

function stopStream() {
  if (current && current.controller) current.controller.abort();
}

async function follow(state) {
  // reconnects after a dropped stream (a daemon restart, a takeover) from the last event seen
  while (!state.controller.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" };
      if (state.lastEvent) headers["Last-Event-ID"] = state.lastEvent;
      const response = await fetch(`/v1/upgrades/${encodeURIComponent(state.id)}/events`, {
        headers,
        signal: state.controller.signal,
      });
      if (!response.ok) throw new ApiError(response.status, "event stream refused");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) state.lastEvent = line.slice(4);
            else if (line.startsWith("event: ")) kind = line.slice(7);
          }
          if (kind === "end") {
            await refresh();
            return;
          }
          refresh();
        }
      }
    } catch (error) {
      if (state.controller.signal.aborted) return;
      if (error instanceof ApiError && error.status === 401) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function showUpgrade(id) {
  stopStream();
  current = { id, controller: new AbortController(), lastEvent: null, doc: null };
  $("#upgrade").hidden = false;
  $("#action-result").textContent = "";
  await refresh();
  follow(current);
}

function confirmation(action, doc) {
  if (action === "approve") {
    const phase = doc.point_of_no_return || "the next phase";
    return `Approve ${doc.id}? Phase ${phase} is the point of no return: ` +
      "once it has run, the upgrade can no longer be rolled back, only fixed forward.";
  }
  const words = {
    pause: "Pause it? Running steps finish; nothing new starts until you resume.",
    resume: "Resume it?",
    abort: "Abort it? Running steps finish; it then stops where it is.",
    rollback: "Roll it back? Every host and pin is undone, newest first.",
  };
  return `${words[action]} (${doc.id})`;
}

async function control(action) {
  const doc = current && current.doc;
  if (!doc || !window.confirm(confirmation(action, doc))) return;
  const result = $("#action-result");
  try {
    const answer = await api("POST", `/v1/upgrades/${encodeURIComponent(doc.id)}/${action}`);
    result.textContent = `${action}: ${answer.state}`;
    result.className = "";
  } catch (error) {
    result.textContent = `${action} refused: ${error.message}`;
    result.className = "error";
  }
  await refresh();
}

async function route() {
  if (!token()) {
    showLogin();
    return;
  }
  $("#login").hidden = true;
  $("#forget").hidden = false;
  try {
    await showList();
    const id = decodeURIComponent(location.hash.slice(1));
    if (id) await showUpgrade(id);
    else $("#upgrade").hidden = true;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      $("#action-result").textContent = error.message;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    route();
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  });
  for (const button of document.querySelectorAll("#controls button")) {
    button.addEventListener("click", () => control(button.dataset.action));
  }
  window.addEventListener("hashchange", route);
  route();
});
