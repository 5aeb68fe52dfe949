// A service's traffic policy, as GET /v1/policy/{service} answers it: its routes, its
// intentions and its limits, drawn beside its instances. The documents' meaning is the
// sidecar's contract (docs/traffic.md).
//
// Every string in a document (header values, subsets, callers, paths) is chosen by whoever
// may write the service's policy, so it only enters the page as text (view.js `el`), and
// metadata keys named by a subset are looked up as own properties only: a subset
// `__proto__=x` selects nothing rather than reaching Object.prototype.

import { el } from "./view.js";

// `answer`: {body} as read, {error} when the read failed, or undefined before the first
// read. `listing`: the service's instances (every status), or null before they arrived.
// Without documents (most services), one line.
export function policySection(service, answer, listing) {
  const parts = policyParts(answer, listing?.instances ?? null);
  return el(
    "section",
    { class: parts ? "policy" : "policy brief", "data-policy": service, "data-policy-index": answer?.body?.index },
    el("h3", {}, "traffic policy"),
    parts ?? briefText(answer),
  );
}

// The documents' parts, or null when there is nothing to show but a line.
function policyParts(answer, instances) {
  if (!isObject(answer?.body)) return null;
  const { routes, intentions, limits } = answer.body;
  const parts = [
    isObject(routes) ? routesPart(routes, instances) : null,
    isObject(intentions) ? intentionsPart(intentions) : null,
    isObject(limits) ? limitsPart(limits) : null,
  ].filter(Boolean);
  return parts.length ? parts : null;
}

function briefText(answer) {
  if (answer === undefined) return el("span", { class: "muted" }, "loading…");
  if (answer.error !== undefined) return el("span", { class: "unreachable", "data-policy-error": "" }, `not shown: ${plainText(answer.error)}`);
  return el("span", { class: "muted", "data-policy-none": "" }, "no policy");
}

const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);
const list = (value) => (Array.isArray(value) ? value : []);

// === routes ===

function routesPart(routes, instances) {
  return el(
    "div",
    { class: "routes", "data-routes": "" },
    el("h4", {}, "routes"),
    el("p", { class: "muted" }, "the first rule that matches a call sends it to a backend, drawn by weight"),
    el("ol", { class: "rules" }, list(routes.rules).map((rule) => routeRule(rule, instances))),
  );
}

function routeRule(rule, instances) {
  const matches = list(rule.matches);
  return el(
    "li",
    { class: "rule", "data-rule": rule.name },
    el("h5", {}, rule.name),
    el(
      "ul",
      { class: "matches" },
      matches.length
        ? matches.map((m) => el("li", { "data-match": "" }, matchText(m)))
        : el("li", { "data-match": "" }, "every call"),
    ),
    el(
      "table",
      { class: "backends" },
      el("tbody", {}, list(rule.backends).map((b) => backendRow(b, instances))),
    ),
    el(
      "p",
      { class: "rule-facts" },
      el("span", { "data-timeout": "" }, typeof rule.timeout === "string" ? `timeout ${rule.timeout}` : "the sidecar's timeout"),
      " · ",
      el("span", { "data-retries": "" }, retriesText(rule.retries)),
    ),
  );
}

// "path prefix /api · method GET · header x-canary = 1 · gRPC pkg.Service/Method"; a
// match with no field is every call.
function matchText(m) {
  if (!isObject(m)) return "every call";
  const parts = [];
  if (isObject(m.path)) {
    if (typeof m.path.exact === "string") parts.push(`path ${m.path.exact}`);
    if (typeof m.path.prefix === "string") parts.push(`path prefix ${m.path.prefix}`);
  }
  if (typeof m.method === "string") parts.push(`method ${m.method}`);
  if (isObject(m.headers)) {
    for (const [name, value] of Object.entries(m.headers)) parts.push(`header ${name} = ${plainText(value)}`);
  }
  if (isObject(m.grpc)) {
    const method = typeof m.grpc.method === "string" ? m.grpc.method : "*";
    parts.push(`gRPC ${plainText(m.grpc.service)}/${method}`);
  }
  return parts.length ? parts.join(" · ") : "every call";
}

function retriesText(retries) {
  if (!isObject(retries)) return "the sidecar's retries";
  const n = Number(retries.attempts);
  const on = list(retries.on).map(plainText).join(", ");
  const what = n === 1 ? "1 retry" : `${n} retries`;
  return n > 0 && on ? `${what} on ${on}` : what;
}

// One backend: its subset, its weight (a bar), and how many of the service's instances
// the subset selects. A subset that selects no passing instance is flagged: the sidecar
// answers the calls drawn for it with no-endpoints rather than send them elsewhere.
function backendRow(backend, instances) {
  const subset = typeof backend.subset === "string" ? backend.subset : "";
  const weight = Number(backend.weight) || 0;
  const selected = instances?.filter((i) => selects(subset, i.metadata)) ?? null;
  const passing = selected?.filter((i) => i.status === "passing").length ?? null;
  const empty = passing === 0;
  return el(
    "tr",
    {
      "data-backend": subset,
      "data-weight": weight,
      "data-selected": selected?.length ?? null,
      "data-passing": passing,
      "data-no-endpoints": empty ? "" : null,
      class: empty ? "no-endpoints" : null,
    },
    el("td", { class: "subset" }, subset === "" ? el("span", { class: "muted" }, "every instance") : subset),
    el("td", { class: "weight" }, el("meter", { min: 0, max: 100, value: weight }), ` ${weight}%`),
    el(
      "td",
      { class: "selected" },
      selected === null
        ? "…"
        : [
            `${selected.length} ${selected.length === 1 ? "instance" : "instances"}, ${passing} passing`,
            empty ? el("strong", {}, " · no passing instance: its calls fail with no-endpoints") : null,
          ],
    ),
  );
}

// Whether a subset (`k=v,k2=v2`; "" is every instance) selects an instance with
// `metadata`: every pair must be in it, as the sidecar reads subsets.
export function selects(subset, metadata) {
  if (subset === "") return true;
  if (!isObject(metadata)) return false;
  return subset.split(",").every((pair) => {
    const at = pair.indexOf("=");
    if (at <= 0) return false;
    const key = pair.slice(0, at);
    return Object.hasOwn(metadata, key) && metadata[key] === pair.slice(at + 1);
  });
}

// === intentions ===

function intentionsPart(intentions) {
  const rules = list(intentions.rules);
  return el(
    "div",
    { class: "intentions", "data-intentions": "" },
    el("h4", {}, "intentions"),
    el(
      "p",
      {},
      "callers no rule matches: ",
      el("span", { class: `badge ${actionClass(intentions.default)}`, "data-intentions-default": "" }, plainText(intentions.default)),
    ),
    rules.length
      ? el(
          "table",
          { class: "intentions" },
          el("thead", {}, el("tr", {}, ["rule", "from", "action", "mode", "calls"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, rules.map(intentionRow)),
        )
      : null,
  );
}

// A shadow rule only records the calls it would deny: marked so it is not read as a
// lockdown in force.
function intentionRow(rule) {
  const mode = rule.mode === "shadow" ? "shadow" : "enforce";
  return el(
    "tr",
    { "data-intention": rule.name, "data-action": plainText(rule.action), "data-mode": mode, class: mode },
    el("th", { scope: "row" }, rule.name),
    el("td", { class: "from" }, rule.from),
    el("td", {}, el("span", { class: `badge ${actionClass(rule.action)}` }, plainText(rule.action))),
    el(
      "td",
      {},
      mode === "shadow"
        ? [el("span", { class: "badge shadow" }, "shadow"), el("span", { class: "muted" }, " recorded, not refused")]
        : "enforce",
    ),
    el("td", { class: "narrowing" }, narrowingText(rule)),
  );
}

function narrowingText(rule) {
  const parts = [];
  for (const [field, label] of [["paths", "paths"], ["methods", "methods"], ["grpc", "gRPC"]]) {
    if (Array.isArray(rule[field])) parts.push(`${label} ${rule[field].map(plainText).join(", ")}`);
  }
  return parts.length ? parts.join(" · ") : "every call";
}

const actionClass = (action) => (action === "deny" ? "deny" : action === "allow" ? "allow" : "");

// === limits ===

function limitsPart(limits) {
  const rows = [];
  if (typeof limits.rps === "number") rows.push(["overall", "overall", bucketText(limits)]);
  if (isObject(limits.per_caller)) rows.push(["per caller", "per-caller", bucketText(limits.per_caller)]);
  return el(
    "div",
    { class: "limits", "data-limits": "" },
    el("h4", {}, "limits"),
    el(
      "dl",
      { class: "facts" },
      rows.map(([name, key, text]) => [el("dt", {}, name), el("dd", { "data-limit": key }, text)]),
    ),
  );
}

function bucketText(bucket) {
  const burst = typeof bucket.burst === "number" ? `, burst ${bucket.burst}` : "";
  return `${plainText(bucket.rps)} rps${burst}`;
}

// A value meant to be a string or number, as text; anything else as nothing (String() of
// an object parsed from remote JSON could throw).
const plainText = (value) => (typeof value === "string" || typeof value === "number" ? String(value) : "");
