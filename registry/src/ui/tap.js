// A sidecar's live tap, on its panel: Start opens the registry's relay of the sidecar's
// /tap with fetch() and reads it as it comes; each call that arrives becomes a row of a
// table that keeps the last MAX_ROWS, newest first; Stop aborts it. Filter fields (path
// prefix, status) are the tap's query: the registry checks them and names a bad one.
//
// Events are as hostile as anything a sidecar sends: request paths and header values are
// chosen by whoever calls the service. They enter the page as text only (view.js `el`,
// text nodes and attribute values), each line is parsed on its own, and only known
// fields, as strings or numbers, are used; a line that is not a call is counted, not
// shown.
//
// One tap at a time on the page: the browser's six connections to the registry also carry
// the two blocking queries and the sidecar panels' reads. The registry ends a relayed tap
// after 10 minutes; a started panel opens it again, as it does after a sidecar restarts.
//
// A registry with credentials lets only the operator tap (the operator token, --token).
// The panel says so (from /readyz's `writes`, or a 401 or 403) and offers a field for the
// token, kept in sessionStorage (this tab only, gone when it closes) and sent as
// Authorization: Bearer.

import { el } from "./view.js";

// Rows kept on a panel (a new start, with its filters, begins a new table).
const MAX_ROWS = 100;
// Calls a second the sidecar sends at most (it drops the rest): more than a table can
// show anyway.
const MAX_RPS = 20;
// A line longer than this is no call: the tap is stopped.
const MAX_LINE = 64 * 1024;
// Between attempts to open the tap again: from a second, doubling, up to ten.
const BACKOFF_MS = [1_000, 2_000, 4_000, 8_000, 10_000];
const TOKEN_KEY = "mesh-operator-token";

const root = new URL("../", document.baseURI);

// Whether the registry asks for credentials (its /readyz `writes` is not ["open"]); null
// until /readyz has been read.
let guarded = null;
// The panel whose tap is open, if any.
let current = null;

// Called with /readyz's `writes` each time it is read.
export function tapAccess(writes) {
  guarded = Array.isArray(writes) ? !(writes.length === 1 && writes[0] === "open") : null;
  for (const panel of panels) panel.drawAuth();
}

// The panels of the sidecars followed, for tapAccess.
const panels = new Set();

export class TapPanel {
  // A closed <details> until it is opened: a page of thousands of sidecars builds one
  // element each, the rest on demand. Closing it stops the tap.
  constructor(service, id) {
    this.service = service;
    this.id = id;
    this.state = "stopped";
    this.status = "";
    this.refused = false;
    this.controller = null;
    this.failures = 0;
    this.skipped = 0;
    this.pending = [];
    this.scheduled = false;
    this.built = false;
    this.element = el("details", { class: "tap", "data-tap": `${service}/${id}` }, el("summary", {}, "live tap"));
    this.element.addEventListener("toggle", () => {
      if (this.element.open) this.build();
      else if (this.built) this.stop();
    });
  }

  build() {
    if (this.built) return;
    this.built = true;
    this.button = el("button", { type: "button", "data-tap-toggle": "" }, "Start");
    this.button.addEventListener("click", () => (this.running() ? this.stop() : this.start()));
    this.prefix = el("input", { "data-tap-filter": "path_prefix", placeholder: "/api", size: 12, autocomplete: "off" });
    this.statusFilter = el("input", { "data-tap-filter": "status", placeholder: "5xx", size: 4, autocomplete: "off" });
    for (const input of [this.prefix, this.statusFilter]) {
      input.addEventListener("change", () => {
        if (this.running()) this.start();
      });
    }
    this.token = el("input", { type: "password", "data-tap-token": "", size: 16, autocomplete: "off" });
    this.token.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
    this.auth = el(
      "p",
      { class: "tap-auth", "data-tap-auth": "" },
      "This registry lets only the operator tap: a tap shows the calls of every service this sidecar serves or calls. ",
      el("label", {}, "Operator token (--token) ", this.token),
    );
    this.statusLine = el("span", { class: "muted", "data-tap-status": "" });
    const head = el("tr", {}, ["time", "dir", "method", "path", "status", "ms", "tries", "endpoint", "mesh-error"].map((h) => el("th", { scope: "col" }, h)));
    this.rows = el("tbody");
    this.table = el("table", { class: "tap" }, el("thead", {}, head), this.rows);
    this.element.append(
      el("p", { class: "tap-controls" }, this.button, " ", el("label", {}, "path prefix ", this.prefix), " ", el("label", {}, "status ", this.statusFilter), " ", this.statusLine),
      this.auth,
      this.table,
    );
    panels.add(this);
    this.draw();
    this.drawAuth();
  }

  // Opens the tap (again, with the filters as they are now).
  start() {
    if (current && current !== this) current.stop();
    this.abort();
    current = this;
    this.failures = 0;
    // Rows of another filter would read as this one's.
    this.rows.replaceChildren();
    this.pending = [];
    this.skipped = 0;
    const token = this.token.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    this.open();
  }

  // Open, or about to be (opening, or waiting to open again).
  running() {
    return ["opening", "open", "waiting"].includes(this.state);
  }

  stop() {
    this.abort();
    if (current === this) current = null;
    this.set("stopped", this.rows.childElementCount ? "stopped" : "");
  }

  // Called when its sidecar is no longer followed.
  forget() {
    if (this.built) this.stop();
    panels.delete(this);
  }

  abort() {
    this.controller?.abort();
    this.controller = null;
    clearTimeout(this.retry);
  }

  async open() {
    const controller = new AbortController();
    this.controller = controller;
    this.set("opening", "opening…");
    const query = new URLSearchParams({ max_rps: String(MAX_RPS) });
    const prefix = this.prefix.value.trim();
    const status = this.statusFilter.value.trim();
    if (prefix) query.set("path_prefix", prefix);
    if (status) query.set("status", status);
    const path =
      `v1/services/${encodeURIComponent(this.service)}/instances/${encodeURIComponent(this.id)}` +
      `/admin/tap?${query}`;
    const headers = {};
    const token = this.token.value.trim();
    if (token && guarded !== false) headers.Authorization = `Bearer ${token}`;
    let why;
    try {
      const response = await fetch(new URL(path, root), { headers, cache: "no-store", signal: controller.signal });
      if (!response.ok) {
        const refusal = await refused(response);
        if (response.status === 401 || response.status === 403) {
          this.refused = true;
          this.drawAuth();
          this.set("needs-token", refusal);
          return;
        }
        if (response.status === 400 || response.status === 404) {
          this.set("failed", refusal);
          return;
        }
        why = refusal;
      } else {
        this.refused = false;
        this.drawAuth();
        this.failures = 0;
        this.set("open", "open: calls appear as they complete");
        why = await this.read(response.body.getReader(), controller.signal);
      }
    } catch (e) {
      if (controller.signal.aborted) return;
      why = `the registry is unreachable (${e?.message ?? e})`;
    }
    if (controller.signal.aborted || this.controller !== controller) return;
    // Ended (the registry's 10 minutes, a sidecar restart) or failed for now: again soon.
    const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    this.failures += 1;
    this.set("waiting", `${why}; opening it again in ${delay / 1000}s`);
    this.retry = setTimeout(() => {
      if (this.controller === controller) this.open();
    }, delay);
  }

  // Reads lines until the stream ends; returns why it ended.
  async read(reader, signal) {
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return "the tap ended";
      pending += decoder.decode(value, { stream: true });
      let end;
      while ((end = pending.indexOf("\n")) >= 0) {
        this.take(pending.slice(0, end));
        pending = pending.slice(end + 1);
      }
      if (pending.length > MAX_LINE) {
        reader.cancel();
        return "the sidecar sent a line too long to be a call";
      }
    }
  }

  // One line: a call, shown at the next frame (many may arrive in one).
  take(line) {
    if (line.trim() === "") return;
    const call = parseCall(line);
    if (!call) {
      this.skipped += 1;
      return;
    }
    this.pending.push(call);
    if (this.pending.length > MAX_ROWS) this.pending.shift();
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    const fresh = this.pending.reverse().map(callRow);
    this.pending = [];
    this.rows.prepend(...fresh);
    while (this.rows.childElementCount > MAX_ROWS) this.rows.lastElementChild.remove();
    this.draw();
  }

  set(state, status) {
    this.state = state;
    this.status = status;
    this.draw();
  }

  draw() {
    this.element.dataset.tapState = this.state;
    this.element.dataset.tapRows = this.rows.childElementCount;
    this.button.textContent = this.running() ? "Stop" : "Start";
    const skipped = this.skipped ? ` (${this.skipped} lines that were no call left out)` : "";
    this.statusLine.textContent = `${this.status}${skipped}`;
    this.statusLine.className = ["failed", "needs-token", "waiting"].includes(this.state) ? "unreachable" : "muted";
    this.table.hidden = this.rows.childElementCount === 0;
  }

  // The token field shows where the registry has credentials, or refused a tap.
  drawAuth() {
    this.auth.hidden = !(guarded === true || this.refused);
  }
}

// The registry's message of a refusal, or its status.
async function refused(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // The status says enough.
  }
  try {
    const message = JSON.parse(text)?.error?.message;
    if (typeof message === "string") return message;
  } catch {
    // Not the registry's error JSON.
  }
  return `the registry answered HTTP ${response.status}`;
}

// A line as a call, its fields as plain strings and numbers; null if it is none.
function parseCall(line) {
  let value;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  return {
    time: text(value.time),
    direction: text(value.direction),
    kind: text(value.kind),
    method: text(value.method),
    path: text(value.path),
    status: number(value.status),
    grpcStatus: number(value.grpc_status),
    durationMs: number(value.duration_ms),
    tries: number(value.tries),
    endpoint: text(value.endpoint),
    meshError: text(value.mesh_error),
    failed: value.failed === true,
  };
}

// One call as a row: text cells only. The path is shown decoded, to be read (it
// arrives percent-encoded as sent); the title keeps it as sent.
function callRow(call) {
  const at = Date.parse(call.time);
  const time = Number.isNaN(at) ? call.time : new Date(at).toLocaleTimeString();
  const status = call.status === null ? "—" : call.grpcStatus === null ? call.status : `${call.status} grpc ${call.grpcStatus}`;
  const failing = call.failed || (call.status !== null && call.status >= 500) || (call.grpcStatus ?? 0) > 0;
  return el(
    "tr",
    { "data-tap-row": "", "data-direction": call.direction, "data-path": call.path, "data-status": call.status },
    el("td", { title: call.time }, time),
    el("td", {}, call.direction === "outbound" ? "out" : call.direction === "inbound" ? "in" : call.direction),
    el("td", {}, call.method || call.kind),
    el("td", { class: "path", title: call.path }, readable(call.path)),
    el("td", { class: failing ? "critical" : "" }, call.failed ? `${status} broken` : status),
    el("td", {}, call.durationMs === null ? "—" : call.durationMs.toFixed(1)),
    el("td", {}, call.tries || "—"),
    el("td", { class: "endpoint" }, call.endpoint || "—"),
    el("td", { class: "mesh-error" }, call.meshError || "—"),
  );
}

function readable(path) {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

const text = (x) => (typeof x === "string" ? x : typeof x === "number" ? String(x) : "");
const number = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);
