// A worker that reads sidecars' admin pages for the page, off its main thread: asked for
// one sidecar, it fetches its /metrics, /debug/endpoints and /ready through the registry,
// parses them and answers with what a panel shows, bounded and in plain types: the sample
// of the counters the figures need, at most MAX_DESTINATIONS destinations of at most
// MAX_ENDPOINTS endpoints each (with how many more there are), and /ready's fields. The
// registry relays at most 1 MiB of each page; whatever is in it, decoding and parsing it
// happen here, and the main thread only ever receives that summary.
//
// Every value is read as hostile: fields of the wrong type become empty text or no
// number, never an exception, and no key the sidecar sent is used as a property name.

import { get } from "./api.js";
import { takeSample } from "./figures.js";

const MAX_DESTINATIONS = 10;
const MAX_ENDPOINTS = 20;

// {id, base} → {id, at, metrics, endpoints, ready}; each page is {ok: true, ...} or
// {ok: false, error}.
self.onmessage = async ({ data: { id, base } }) => {
  let answer;
  try {
    const [metrics, endpoints, ready] = await Promise.allSettled(
      ["metrics", "debug/endpoints", "ready"].map((page) => get(base + page)),
    );
    const at = Date.now();
    answer = {
      at,
      metrics: page(metrics, [200], (text) => ({ sample: takeSample(text, at) })),
      endpoints: page(endpoints, [200], destinations),
      // /ready answers 503 with the same body when the sidecar is not ready.
      ready: page(ready, [200, 503], readiness),
    };
  } catch (e) {
    answer = { error: `its answer could not be read: ${text(e?.message)}` };
  }
  self.postMessage({ id, ...answer });
};

// A settled fetch whose status is in `accepted`, read by `read(text)`; else why not: the
// registry's message for its own errors (502 unreachable or too large, 504 timeout, 404
// no_admin).
function page(settled, accepted, read) {
  if (settled.status === "rejected") return { ok: false, error: text(settled.reason?.message) };
  const answer = settled.value;
  if (!accepted.includes(answer.status)) {
    const message = parseOr(answer.text, null)?.error?.message;
    return { ok: false, error: typeof message === "string" ? message : `the sidecar answered HTTP ${answer.status}` };
  }
  try {
    return { ok: true, ...read(answer.text) };
  } catch (e) {
    return { ok: false, error: text(e?.message) };
  }
}

// /debug/endpoints: per destination this sidecar calls, each endpoint's state and why.
function destinations(body) {
  const list = parseOr(body, undefined);
  if (!Array.isArray(list)) throw new Error("its /debug/endpoints is not a JSON list");
  const shown = list.slice(0, MAX_DESTINATIONS).filter(isObject).map((d) => {
    const all = Array.isArray(d.endpoints) ? d.endpoints : [];
    const endpoints = all.slice(0, MAX_ENDPOINTS).filter(isObject).map((e) => ({
      address: text(e.address),
      instance: text(e.instance),
      state: text(e.state),
      tries: number(e.tries) ?? 0,
      successRate: number(e.success_rate),
      ewmaMs: number(e.ewma_ms) ?? 0,
      open: number(e.open_connections) ?? 0,
      reason: text(e.reason),
      ejectedBy: text(e.ejected_by),
    }));
    return {
      service: text(d.service),
      protocol: text(d.protocol),
      source: text(d.source),
      lastError: text(d.last_error),
      endpoints,
      more: all.length - endpoints.length,
    };
  });
  return { destinations: shown, more: list.length - shown.length };
}

// /ready: whether the sidecar is ready, and the health it reports for its app.
function readiness(body) {
  const ready = parseOr(body, null);
  if (!isObject(ready)) throw new Error("its /ready is not a JSON object");
  return {
    ready: ready.ready === true,
    registryConnected: ready.registry_connected === true,
    reason: text(ready.reason),
    status: text(ready.status),
  };
}

function parseOr(body, fallback) {
  try {
    return JSON.parse(body);
  } catch {
    return fallback;
  }
}

const isObject = (x) => typeof x === "object" && x !== null && !Array.isArray(x);
// A value as display text: strings and numbers as they are, anything else empty (an
// object's own "toString" key would make String() throw).
const text = (x) => (typeof x === "string" ? x : typeof x === "number" || typeof x === "boolean" ? String(x) : "");
const number = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);
