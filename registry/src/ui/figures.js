// A sidecar's headline figures, computed from two samples of its /metrics text: the
// request rate, the success rate and latency percentiles over the time between them, and
// the retry and ejection counters. The metric names are the proxy's contract
// (docs/proxy.md, "Metrics").
//
// Label names and values are whatever the sidecar sends: they are only ever keys of a
// `Map` or compared with known strings, never property names of a plain object (where
// `direction="__proto__"` or `"constructor"` would reach Object.prototype).

const DIRECTIONS = ["inbound", "outbound"];

// The metrics the figures read; every other line is skipped before its labels are read.
const WANTED = new Set([
  "mesh_requests_total",
  "mesh_responses_total",
  "mesh_response_latency_seconds_bucket",
  "mesh_retries_total",
  "mesh_endpoint_ejections_total",
  "mesh_tls_cert_expiry_timestamp_seconds",
]);

// Prometheus text format: `name{label="value",...} value [timestamp]` per line, `#`
// lines are help and type. Returns [{name, labels: Map, value}] for the metrics in
// `wanted` (every metric when it is null).
export function parseMetrics(text, wanted = null) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    const space = line.indexOf(" ");
    const labelled = brace !== -1 && (space === -1 || brace < space);
    if (!labelled && space === -1) continue;
    const name = line.slice(0, labelled ? brace : space);
    if (!name || (wanted && !wanted.has(name))) continue;
    const labels = new Map();
    let rest;
    if (labelled) {
      const close = parseLabels(line, brace + 1, labels);
      rest = line.slice(close + 1);
    } else {
      rest = line.slice(space);
    }
    const value = Number(rest.trim().split(/\s+/)[0]);
    if (!Number.isNaN(value)) samples.push({ name, labels, value });
  }
  return samples;
}

// Reads `key="value"` pairs from `line` at `at` into the Map `labels`; returns the index
// of `}` (the line's length for a malformed one, whose sample is then dropped). Every
// step moves forward, so no text a sidecar sends can make it loop.
function parseLabels(line, at, labels) {
  let i = at;
  while (i < line.length && line[i] !== "}") {
    const equals = line.indexOf("=", i);
    if (equals === -1 || line[equals + 1] !== '"') return line.length;
    const key = line.slice(i, equals).replace(/^[\s,]+/, "");
    let value = "";
    let j = equals + 2; // past `="`
    for (; j < line.length && line[j] !== '"'; j++) {
      if (line[j] === "\\") {
        j++;
        value += line[j] === "n" ? "\n" : line[j];
      } else {
        value += line[j];
      }
    }
    labels.set(key, value);
    i = j + 1;
    while (line[i] === ",") i++;
  }
  return i;
}

// Per-direction counters, keyed by the known directions only.
const perDirection = (make) => new Map(DIRECTIONS.map((d) => [d, make()]));

// The counters the figures need, summed over services, at time `at` (ms).
export function takeSample(text, at) {
  const sample = {
    at,
    requests: perDirection(() => 0),
    success: perDirection(() => 0),
    failure: perDirection(() => 0),
    buckets: perDirection(() => new Map()),
    retries: 0,
    ejections: 0,
    certExpiry: null,
  };
  const add = (map, d, value) => {
    if (map.has(d)) map.set(d, map.get(d) + value);
  };
  for (const { name, labels, value } of parseMetrics(text, WANTED)) {
    const d = labels.get("direction");
    switch (name) {
      case "mesh_requests_total":
        add(sample.requests, d, value);
        break;
      case "mesh_responses_total":
        add(labels.get("classification") === "success" ? sample.success : sample.failure, d, value);
        break;
      case "mesh_response_latency_seconds_bucket": {
        const buckets = sample.buckets.get(d);
        if (buckets) {
          const le = labels.get("le") === "+Inf" ? Infinity : Number(labels.get("le"));
          if (!Number.isNaN(le)) buckets.set(le, (buckets.get(le) ?? 0) + value);
        }
        break;
      }
      case "mesh_retries_total":
        sample.retries += value;
        break;
      case "mesh_endpoint_ejections_total":
        sample.ejections += value;
        break;
      case "mesh_tls_cert_expiry_timestamp_seconds":
        if (value > 0) sample.certExpiry = value * 1000;
        break;
    }
  }
  return sample;
}

// Figures between two samples (`previous` may be null: rates need two). Per direction
// with traffic: requests/s, success share, p50 and p99 in seconds. Counters since the
// sidecar started, with what the last interval added.
export function computeFigures(previous, current) {
  const seconds = previous ? (current.at - previous.at) / 1000 : 0;
  const directions = [];
  for (const d of DIRECTIONS) {
    const total = current.requests.get(d);
    if (total === 0) continue;
    const row = { direction: d, total, rps: null, success: null, p50: null, p99: null };
    if (previous && seconds > 0) {
      row.rps = Math.max(0, total - previous.requests.get(d)) / seconds;
      const ok = current.success.get(d) - previous.success.get(d);
      const failed = current.failure.get(d) - previous.failure.get(d);
      if (ok + failed > 0) row.success = ok / (ok + failed);
      const delta = bucketDelta(previous.buckets.get(d), current.buckets.get(d));
      row.p50 = quantile(delta, 0.5);
      row.p99 = quantile(delta, 0.99);
    }
    directions.push(row);
  }
  return {
    directions,
    retries: current.retries,
    retriesRecent: previous ? current.retries - previous.retries : null,
    ejections: current.ejections,
    ejectionsRecent: previous ? current.ejections - previous.ejections : null,
    certExpiry: current.certExpiry,
  };
}

// Cumulative bucket counts observed between two samples, sorted by upper bound.
function bucketDelta(before, after) {
  return [...after.entries()]
    .map(([le, count]) => [le, count - (before.get(le) ?? 0)])
    .sort((a, b) => a[0] - b[0]);
}

// The q-quantile of a cumulative histogram, interpolating linearly inside the bucket as
// Prometheus' histogram_quantile does; null without observations. In the +Inf bucket the
// answer is the largest finite bound: all that is known is "above it".
export function quantile(buckets, q) {
  const count = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (count <= 0) return null;
  const rank = q * count;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, cumulative] of buckets) {
    if (cumulative >= rank) {
      if (le === Infinity) return lowerBound;
      const inBucket = cumulative - lowerCount;
      const fraction = inBucket > 0 ? (rank - lowerCount) / inBucket : 0;
      return lowerBound + (le - lowerBound) * fraction;
    }
    lowerBound = le;
    lowerCount = cumulative;
  }
  return lowerBound;
}
