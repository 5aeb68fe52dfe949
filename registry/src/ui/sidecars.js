// What each sidecar sees, read through the registry (browsers cannot reach admin ports):
// its /metrics (sampled for the headline figures), /debug/endpoints and /ready, every few
// seconds. Each sidecar is fetched on its own and at most once at a time, so a slow or
// dead one shows "unreachable" without holding up the page or piling up requests.

import { get, parseDuration } from "./api.js";
import { computeFigures, takeSample } from "./figures.js";
import { el, span } from "./view.js";

// The second sample comes soon, so rates show a moment after the page opens.
const FIRST_INTERVAL_MS = 2_000;
const INTERVAL_MS = 5_000;
// Below this share of its life left, a certificate is flagged (sidecars renew at a third).
const CERT_WARNING_SHARE = 0.2;

const key = (service, id) => `${service}/${id}`;

// === Sidecars ===

export class Sidecars {
  // `onUpdate` is called after each fetch, to redraw.
  constructor(onUpdate) {
    this.byKey = new Map();
    this.onUpdate = onUpdate;
  }

  // Follows every instance that registered an admin address (metadata `admin`), in any
  // status: a failing app's sidecar is the one worth looking at. Forgets the others.
  track(listings) {
    const seen = new Set();
    for (const [service, listing] of listings) {
      for (const instance of listing.instances) {
        const admin = instance.metadata.admin;
        if (!admin) continue;
        const k = key(service, instance.id);
        seen.add(k);
        const known = this.byKey.get(k);
        if (!known || known.admin !== admin) {
          this.byKey.set(k, new Sidecar(service, instance.id, admin));
        }
      }
    }
    for (const k of this.byKey.keys()) if (!seen.has(k)) this.byKey.delete(k);
  }

  // Starts the fetches whose turn has come.
  tick(now = Date.now()) {
    for (const sidecar of this.byKey.values()) {
      if (!sidecar.inFlight && now >= sidecar.nextAt) {
        sidecar.refresh().then(() => this.onUpdate());
      }
    }
  }

  // The panel of an instance's sidecar, or null when it registered none.
  panel(service, id) {
    return this.byKey.get(key(service, id))?.panel() ?? null;
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
  }

  get key() {
    return key(this.service, this.id);
  }

  async refresh() {
    this.inFlight = true;
    const base =
      `v1/services/${encodeURIComponent(this.service)}` +
      `/instances/${encodeURIComponent(this.id)}/admin/`;
    const [metrics, endpoints, ready] = await Promise.allSettled(
      ["metrics", "debug/endpoints", "ready"].map((page) => get(base + page)),
    );
    const at = Date.now();
    const text = answerText(metrics, [200]);
    if (text.ok) {
      this.previous = this.current;
      this.current = takeSample(text.value, at);
      this.figures = computeFigures(this.previous, this.current);
      this.error = null;
    } else {
      this.error = text.error;
      this.previous = this.current = this.figures = null;
    }
    const list = answerText(endpoints, [200]);
    this.endpoints = list.ok ? parseOr(list.value, null) : null;
    // /ready answers 503 with the same body when the sidecar is not ready.
    const readiness = answerText(ready, [200, 503]);
    this.ready = readiness.ok ? parseOr(readiness.value, null) : null;
    this.inFlight = false;
    this.nextAt = at + (this.previous ? INTERVAL_MS : FIRST_INTERVAL_MS);
  }

  state() {
    if (this.error) return "unreachable";
    return this.figures ? "ok" : "pending";
  }

  panel() {
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
    return el("section", { class: `sidecar ${state}`, "data-sidecar": this.key, "data-state": state }, head, body);
  }
}

// The text of a settled fetch whose status is in `accepted`, or why not: the registry's
// message for its own errors (502 unreachable, 504 timeout, 404 no_admin).
function answerText(settled, accepted) {
  if (settled.status === "rejected") return { ok: false, error: settled.reason.message };
  const answer = settled.value;
  if (accepted.includes(answer.status)) return { ok: true, value: answer.text };
  const message = parseOr(answer.text, null)?.error?.message;
  return { ok: false, error: message ?? `the sidecar answered HTTP ${answer.status}` };
}

function parseOr(text, fallback) {
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

// The sidecar's /ready: whether it is ready, and the health it reports for its app.
function readyBadges(ready) {
  if (!ready) return null;
  const title = ready.reason ?? (ready.registry_connected ? "connected to the registry" : "not connected to the registry");
  const badges = [
    el("span", { class: `badge ${ready.ready ? "passing" : "warning"}`, title, "data-ready": ready.ready }, ready.ready ? "ready" : "not ready"),
  ];
  if (ready.status) {
    const title = "the app's health, as this sidecar checks it";
    badges.push(el("span", { class: `badge ${ready.status}`, title, "data-app-status": ready.status }, `app ${ready.status}`));
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

// /debug/endpoints: per destination this sidecar calls, each endpoint's state and why.
function endpointTables(destinations) {
  if (!Array.isArray(destinations) || destinations.length === 0) return null;
  return destinations.map((d) => {
    const rows = (d.endpoints ?? []).map((e) =>
      el(
        "tr",
        { "data-endpoint": e.address, "data-state": e.state },
        el("td", {}, e.instance ?? e.address),
        el("td", { class: e.state === "ready" ? "passing" : "critical" }, e.state),
        el("td", {}, e.tries > 0 ? share(e.success_rate) : "—"),
        el("td", {}, `${Number(e.ewma_ms ?? 0).toFixed(1)} ms`),
        el("td", { class: "reason" }, e.ejected_by ? `${e.reason} [${e.ejected_by}]` : e.reason),
      ),
    );
    const head = el("tr", {}, ["endpoint", "state", "success", "ewma", "why"].map((h) => el("th", { scope: "col" }, h)));
    return el(
      "div",
      { class: "destination", "data-destination": d.service },
      el("h5", {}, `→ ${d.service}`, d.source ? el("span", { class: "muted" }, ` via ${d.source}`) : null),
      d.last_error ? el("p", { class: "unreachable" }, d.last_error) : null,
      rows.length ? el("table", { class: "endpoints" }, el("thead", {}, head), el("tbody", {}, rows)) : el("p", { class: "muted" }, "no endpoints"),
    );
  });
}

// === certificates ===

// Each sidecar's certificate expiry (from its metrics) against the registry's --cert-ttl.
export function certificatesTable(sidecars, ca, now = Date.now()) {
  const life = ca ? parseDuration(ca.cert_ttl) : null;
  const intro = ca
    ? el("p", {}, "The registry is the mesh's CA for ", el("code", {}, ca.trust_domain), `: certificates live ${ca.cert_ttl}, sidecars renew them at two thirds.`)
    : el("p", { class: "muted", "data-ca": "none" }, "This registry has no CA: it signs no certificates.");
  if (sidecars.length === 0) return [intro];
  const rows = sidecars.map((s) => {
    const expiry = s.current?.certExpiry ?? null;
    const [state, left] = certState(s, expiry, life, now);
    return el(
      "tr",
      { "data-cert": s.key, "data-cert-state": state },
      el("th", { scope: "row" }, s.key),
      el("td", {}, expiry ? new Date(expiry).toLocaleString() : "—"),
      el("td", {}, expiry ? (expiry > now ? span(expiry - now) : "expired") : "—"),
      el("td", { class: state }, left),
    );
  });
  const head = el("tr", {}, ["sidecar", "expires", "in", "life left"].map((h) => el("th", { scope: "col" }, h)));
  return [intro, el("table", { class: "certificates" }, el("thead", {}, head), el("tbody", {}, rows))];
}

function certState(sidecar, expiry, life, now) {
  if (sidecar.error) return ["unknown", "sidecar unreachable"];
  if (!sidecar.current) return ["unknown", "…"];
  if (!expiry) return ["none", "no certificate (mTLS off, or not issued yet)"];
  if (expiry <= now) return ["expired", "expired"];
  if (!life) return ["ok", "?"];
  const left = (expiry - now) / life;
  const text = `${Math.round(left * 100)} %`;
  return left < CERT_WARNING_SHARE ? ["warning", `${text}: renewal overdue`] : ["ok", text];
}
