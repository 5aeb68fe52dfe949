// Talking to the registry: plain GETs and the blocking-query loop the whole page is driven
// by. Paths are resolved against the page's own URL ("../v1/..." from /ui/), so a registry
// served under a path prefix by a reverse proxy works unchanged. The sidecar reader, a
// worker served from the same directory, resolves them against its own URL.

const root = new URL("../", globalThis.document?.baseURI ?? self.location.href);

// How long one blocking query waits at most. The page holds two of them open (services
// and events); browsers allow six connections per host over HTTP/1.1, which leaves four
// for listings and sidecar pages.
const WAIT = "30s";
const WAIT_MS = 30_000;
// The server adds up to wait/16 of jitter; past this the query is considered lost.
const BLOCKING_DEADLINE_MS = WAIT_MS + 15_000;
// Plain requests (listings, sidecar pages, whose fetch the registry bounds to 2 s).
const REQUEST_DEADLINE_MS = 8_000;

export class RequestError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// GET `path`: resolves to {status, index, stale, contentType, text}, `stale` being true
// when a registry on etcd answered from its last state (X-Mesh-Stale). Rejects on a network
// failure or when the deadline passes; HTTP errors resolve (the caller decides).
export async function get(path, deadlineMs = REQUEST_DEADLINE_MS) {
  let response;
  try {
    response = await fetch(new URL(path, root), {
      cache: "no-store",
      signal: AbortSignal.timeout(deadlineMs),
    });
  } catch (e) {
    const why = e.name === "TimeoutError" ? `no answer within ${deadlineMs / 1000}s` : e.message;
    throw new RequestError(`registry unreachable: ${why}`, 0, "network");
  }
  return {
    status: response.status,
    index: Number(response.headers.get("x-mesh-index") ?? 0),
    stale: response.headers.get("x-mesh-stale") === "true",
    contentType: response.headers.get("content-type") ?? "",
    text: await response.text(),
  };
}

// GET `path` as JSON: {index, stale, body, text}; an error answer becomes a RequestError
// carrying the registry's message and code.
export async function getJSON(path, deadlineMs = REQUEST_DEADLINE_MS) {
  const answer = await get(path, deadlineMs);
  let body = null;
  try {
    body = JSON.parse(answer.text);
  } catch {
    // Not JSON: reported below if the status says it failed, else a protocol error.
  }
  if (answer.status < 200 || answer.status > 299 || body === null) {
    const error = body?.error;
    const message = error?.message ?? `HTTP ${answer.status}`;
    throw new RequestError(message, answer.status, error?.code ?? "http");
  }
  return { index: answer.index, stale: answer.stale, body, text: answer.text };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Follows a blocking query for as long as the page is open: `onChange(body)` on the first
// answer and on every answer whose index moved (also backwards: a restarted registry
// starts its indexes over), `onHealth(error or null)` after each attempt. Errors back off
// from 1 s to 30 s; an answer that comes back at once without a change (a registry
// shutting down answers parked queries early) waits a second, so this never spins.
export async function follow(path, onChange, onHealth) {
  const separator = path.includes("?") ? "&" : "?";
  let index = 0;
  let backoff = 1_000;
  for (;;) {
    const started = performance.now();
    try {
      const answer = await getJSON(
        `${path}${separator}index=${index}&wait=${WAIT}`,
        BLOCKING_DEADLINE_MS,
      );
      onHealth(null);
      backoff = 1_000;
      const changed = answer.index !== index;
      index = answer.index;
      if (changed) {
        onChange(answer.body);
      } else if (performance.now() - started < 1_000) {
        await sleep(1_000);
      }
    } catch (e) {
      onHealth(e);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 30_000);
    }
  }
}

// Parses the cert_ttl of /readyz ("24h", "1h 30m", "45s", "1s 500ms") into milliseconds.
export function parseDuration(text) {
  const units = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1 };
  let total = 0;
  for (const [, number, unit] of String(text).matchAll(/(\d+(?:\.\d+)?)\s*(ms|h|m|s)/g)) {
    total += Number(number) * units[unit];
  }
  return total || null;
}
