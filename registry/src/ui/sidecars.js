// What each sidecar sees, read through the registry (browsers cannot reach admin ports):
// its /metrics (sampled for the headline figures), /debug/endpoints and /ready, every few
// seconds. Each sidecar is fetched on its own and at most once at a time, so a slow or
// dead one shows "unreachable" without holding up the page or piling up requests.
//
// A sidecar's answers are read as hostile, by a worker (sidecar-reader.js): however large
// or odd a page, the main thread receives a bounded summary in plain types, and a panel
// shows at most 10 destinations of 20 endpoints each, then how many more there are. Each
// panel is one element its sidecar redraws after each fetch; nothing else on the page is
// redrawn for it. Its live tap (tap.js) is an element of its own, kept across redraws.

import { parseDuration } from "./api.js";
import { computeFigures } from "./figures.js";
import { TapPanel } from "./tap.js";
import { el, span } from "./view.js";

// The second sample comes soon, so rates show a moment after the page opens.
const FIRST_INTERVAL_MS = 2_000;
const INTERVAL_MS = 5_000;
// Past this, a read the worker never answered counts as failed (its three fetches have
// deadlines of their own, well within it).
const READ_DEADLINE_MS = 30_000;
// Below this share of its life left, a certificate is flagged (sidecars renew at a third).
const CERT_WARNING_SHARE = 0.2;

const key = (service, id) => `${service}/${id}`;

// === Reader ===

// The worker that reads sidecars' pages, shared by every panel.
class Reader {
  constructor() {
    this.pending = new Map();
    this.next = 0;
    this.worker = new Worker(new URL("./sidecar-reader.js", import.meta.url), { type: "module" });
    this.worker.onmessage = ({ data }) => this.settle(data.id, data);
    // A worker that cannot start (or broke) answers nothing: every read waiting fails.
    this.worker.onerror = (e) => {
      for (const id of [...this.pending.keys()]) this.settle(id, { error: `the sidecar reader failed: ${e.message ?? "no reason given"}` });
    };
  }

  // Reads the admin pages under `base`: {at, metrics, endpoints, ready} or {error}.
  read(base) {
    const id = ++this.next;
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.settle(id, { error: "the sidecar reader did not answer" }), READ_DEADLINE_MS);
      this.pending.set(id, { resolve, timer });
      this.worker.postMessage({ id, base });
    });
  }

  settle(id, answer) {
    const waiting = this.pending.get(id);
    if (!waiting) return;
    this.pending.delete(id);
    clearTimeout(waiting.timer);
    waiting.resolve(answer);
  }
}

let reader = null;

// === Sidecars ===

export class Sidecars {
  // `onUpdate(sidecar)` is called after each of its fetches.
  constructor(onUpdate) {
    this.byKey = new Map();
    this.byService = new Map();
    this.onUpdate = onUpdate;
  }

  // Follows every instance of `service` that registered an admin address (metadata
  // `admin`), in any status: a failing app's sidecar is the one worth looking at. Forgets
  // the service's others; a null listing forgets them all.
  follow(service, listing) {
    const seen = new Set();
    for (const instance of listing?.instances ?? []) {
      const admin = instance.metadata.admin;
      if (typeof admin !== "string" || admin === "") continue;
      const k = key(service, instance.id);
      seen.add(k);
      const known = this.byKey.get(k);
      if (!known || known.admin !== admin) {
        known?.tap.forget();
        this.byKey.set(k, new Sidecar(service, instance.id, admin));
      }
    }
    for (const k of this.byService.get(service) ?? []) {
      if (seen.has(k)) continue;
      this.byKey.get(k)?.tap.forget();
      this.byKey.delete(k);
    }
    if (seen.size > 0) this.byService.set(service, seen);
    else this.byService.delete(service);
  }

  // Starts the fetches whose turn has come.
  tick(now = Date.now()) {
    for (const sidecar of this.byKey.values()) {
      if (!sidecar.inFlight && now >= sidecar.nextAt) {
        sidecar.refresh().then(() => this.onUpdate(sidecar));
      }
    }
  }

  // The panel of an instance's sidecar (the same element for as long as it is followed),
  // or null when it registered none.
  panel(service, id) {
    return this.byKey.get(key(service, id))?.element ?? null;
  }

  all() {
    return [...this.byKey.values()];
  }
}

// === Sidecar ===

class Sidecar {
  constructor(service, id, admin) {
    this.service = service;
    this.id = id;
    this.admin = admin;
    this.previous = null;
    this.current = null;
    this.figures = null;
    this.endpoints = null;
    this.ready = null;
    this.error = null;
    this.inFlight = false;
    this.nextAt = 0;
    // Fetches completed, on the panel as data-reads (tests watch it move).
    this.reads = 0;
    this.element = el("section", { "data-sidecar": this.key });
    this.tap = new TapPanel(service, id);
    this.draw();
  }

  get key() {
    return key(this.service, this.id);
  }

  async refresh() {
    this.inFlight = true;
    const base =
      `v1/services/${encodeURIComponent(this.service)}` +
      `/instances/${encodeURIComponent(this.id)}/admin/`;
    try {
      reader ??= new Reader();
      this.take(await reader.read(base));
    } catch (e) {
      // Nothing may stop a panel for good: this one tries again at its next turn.
      this.take({ error: `its answer could not be read: ${e?.message ?? e}` });
    } finally {
      this.inFlight = false;
      this.reads += 1;
      this.nextAt = Date.now() + (this.previous ? INTERVAL_MS : FIRST_INTERVAL_MS);
      this.draw();
    }
  }

  // What the reader answered.
  take(answer) {
    const metrics = answer.metrics ?? { ok: false, error: answer.error };
    if (metrics.ok) {
      this.previous = this.current;
      this.current = metrics.sample;
      this.figures = computeFigures(this.previous, this.current);
      this.error = null;
    } else {
      this.error = metrics.error;
      this.previous = this.current = this.figures = null;
    }
    this.endpoints = answer.endpoints ?? null;
    this.ready = answer.ready?.ok ? answer.ready : null;
  }

  state() {
    if (this.error) return "unreachable";
    return this.figures ? "ok" : "pending";
  }

  // Redraws the panel in place.
  draw() {
    const state = this.state();
    const head = el(
      "header",
      {},
      el("h4", {}, "sidecar"),
      el("code", {}, this.admin),
      readyBadges(this.ready),
    );
    const body =
      state === "unreachable"
        ? el("p", { class: "unreachable" }, `unreachable: ${this.error}`)
        : state === "pending"
          ? el("p", { class: "muted" }, "reading its metrics…")
          : [figuresTable(this.figures), counters(this.figures), endpointTables(this.endpoints)];
    this.element.className = `sidecar ${state}`;
    this.element.dataset.state = state;
    this.element.dataset.reads = this.reads;
    const shown = [body].flat(Infinity).filter((x) => x !== null && x !== undefined);
    // The tap stays where it is: moved, it would lose the focus of a field being typed in.
    for (const child of [...this.element.childNodes]) {
      if (child !== this.tap.element) child.remove();
    }
    this.element.prepend(head, ...shown);
    if (this.tap.element.parentNode !== this.element) this.element.append(this.tap.element);
  }
}

const STATUSES = ["passing", "warning", "critical"];

// The sidecar's /ready: whether it is ready, and the health it reports for its app.
function readyBadges(ready) {
  if (!ready) return null;
  const title = ready.reason || (ready.registryConnected ? "connected to the registry" : "not connected to the registry");
  const badges = [
    el("span", { class: `badge ${ready.ready ? "passing" : "warning"}`, title, "data-ready": ready.ready }, ready.ready ? "ready" : "not ready"),
  ];
  if (ready.status) {
    const title = "the app's health, as this sidecar checks it";
    const known = STATUSES.includes(ready.status) ? ready.status : "";
    badges.push(el("span", { class: `badge ${known}`, title, "data-app-status": ready.status }, `app ${ready.status}`));
  }
  return badges;
}

const rate = (rps) => (rps === null ? "…" : `${rps.toFixed(rps < 10 ? 2 : 1)}/s`);
const share = (x) => (x === null ? "idle" : `${(x * 100).toFixed(x > 0.999 || x < 0.9 ? 1 : 2)} %`);
const seconds = (s) => (s === null ? "—" : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`);

function figuresTable(figures) {
  if (figures.directions.length === 0) return el("p", { class: "muted" }, "no requests yet");
  const rows = figures.directions.map((d) => {
    const cell = (name, text) => el("td", { "data-figure": name, "data-direction": d.direction }, text);
    return el(
      "tr",
      {},
      el("th", { scope: "row" }, d.direction),
      cell("rps", rate(d.rps)),
      cell("success", share(d.success)),
      cell("p50", seconds(d.p50)),
      cell("p99", seconds(d.p99)),
    );
  });
  const head = el("tr", {}, ["", "requests", "success", "p50", "p99"].map((h) => el("th", { scope: "col" }, h)));
  return el("table", { class: "figures" }, el("thead", {}, head), el("tbody", {}, rows));
}

function counters(figures) {
  const recent = (n) => (n ? ` (+${n})` : "");
  return el(
    "p",
    { class: "counters" },
    "retries ",
    el("strong", { "data-figure": "retries" }, figures.retries),
    recent(figures.retriesRecent),
    " · ejections ",
    el("strong", { "data-figure": "ejections" }, figures.ejections),
    recent(figures.ejectionsRecent),
  );
}

// "and 9,980 more endpoints", for what a panel leaves out.
function more(n, what) {
  return n > 0 ? el("p", { class: "muted more", "data-more": n }, `and ${n.toLocaleString("en")} more ${what}`) : null;
}

// /debug/endpoints as the reader summed it up: per destination this sidecar calls, each
// endpoint's state and why; or why it is not shown.
function endpointTables(endpoints) {
  if (!endpoints) return null;
  if (!endpoints.ok) {
    return el("p", { class: "unreachable", "data-endpoints-error": "" }, `endpoints not shown: ${endpoints.error}`);
  }
  return [...endpoints.destinations.map(destinationTable), more(endpoints.more, "destinations")];
}

function destinationTable(d) {
  const rows = d.endpoints.map((e) =>
    el(
      "tr",
      { "data-endpoint": e.address, "data-state": e.state },
      el("td", {}, e.instance || e.address),
      el("td", { class: e.state === "ready" ? "passing" : "critical" }, e.state),
      el("td", {}, e.tries > 0 ? share(e.successRate) : "—"),
      el("td", {}, `${e.ewmaMs.toFixed(1)} ms`),
      el("td", { "data-open": e.open }, e.open),
      el("td", { class: "reason" }, e.ejectedBy ? `${e.reason} [${e.ejectedBy}]` : e.reason),
    ),
  );
  const head = el("tr", {}, ["endpoint", "state", "success", "ewma", "open", "why"].map((h) => el("th", { scope: "col" }, h)));
  return el(
    "div",
    { class: "destination", "data-destination": d.service },
    el(
      "h5",
      {},
      `→ ${d.service}`,
      d.protocol === "tcp" ? el("span", { class: "badge tcp", "data-protocol": "tcp" }, "tcp") : null,
      d.source ? el("span", { class: "muted" }, ` via ${d.source}`) : null,
    ),
    d.lastError ? el("p", { class: "unreachable" }, d.lastError) : null,
    rows.length ? el("table", { class: "endpoints" }, el("thead", {}, head), el("tbody", {}, rows)) : el("p", { class: "muted" }, "no endpoints"),
    more(d.more, "endpoints"),
  );
}

// === certificates ===

// What the registry's CA is, above the certificates table.
export function certificatesIntro(ca) {
  return ca
    ? el("p", {}, "The registry is the mesh's CA for ", el("code", {}, ca.trust_domain), `: certificates live ${ca.cert_ttl}, sidecars renew them at two thirds.`)
    : el("p", { class: "muted", "data-ca": "none" }, "This registry has no CA: it signs no certificates.");
}

// The certificates table, empty: rows are added by `certificateRow`.
export function certificatesTable() {
  const head = el("tr", {}, ["sidecar", "expires", "in", "life left"].map((h) => el("th", { scope: "col" }, h)));
  return el("table", { class: "certificates" }, el("thead", {}, head), el("tbody", {}));
}

// A sidecar's certificate expiry (from its metrics) against the registry's --cert-ttl.
export function certificateRow(sidecar, ca, now = Date.now()) {
  const life = ca ? parseDuration(ca.cert_ttl) : null;
  const expiry = sidecar.current?.certExpiry ?? null;
  const [state, left] = certState(sidecar, expiry, life, now);
  return el(
    "tr",
    { "data-cert": sidecar.key, "data-cert-state": state },
    el("th", { scope: "row" }, sidecar.key),
    el("td", {}, expiry ? new Date(expiry).toLocaleString() : "—"),
    el("td", {}, expiry ? (expiry > now ? span(expiry - now) : "expired") : "—"),
    el("td", { class: state }, left),
  );
}

function certState(sidecar, expiry, life, now) {
  if (sidecar.error) return ["unknown", "sidecar unreachable"];
  if (!sidecar.current) return ["unknown", "…"];
  if (!expiry) return ["none", "no certificate (mTLS off, or not issued yet)"];
  if (expiry <= now) return ["expired", "expired"];
  if (!life) return ["ok", "?"];
  const left = (expiry - now) / life;
  const shown = `${Math.round(left * 100)} %`;
  return left < CERT_WARNING_SHARE ? ["warning", `${shown}: renewal overdue`] : ["ok", shown];
}
