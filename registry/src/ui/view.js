// Building the page's parts from plain data. Everything registered (tags, metadata,
// health-check output, event details) is chosen by whoever may register, so it only ever
// enters the page as text nodes, never as markup.
//
// Elements carry data-* attributes naming what they show (data-service, data-instance,
// data-status, data-figure, ...), for styling and so tests can find them.

// An element: `attrs` values of null are left out; children are nodes or text.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// "3s", "4m 10s", "2h 5m", "3d 4h".
export function span(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

// A time that keeps itself current: the page's clock rewrites every [data-since] element.
export function since(iso, suffix = "") {
  return el("time", { datetime: iso, "data-since": iso, "data-suffix": suffix }, sinceText(iso, suffix));
}

export function sinceText(iso, suffix) {
  const at = Date.parse(iso);
  return Number.isNaN(at) ? "?" : `${span(Date.now() - at)}${suffix}`;
}

const statuses = ["passing", "warning", "critical"];

// The services table: instance counts by status. `listings` (service → listing) supplies
// warning and critical, which /v1/services does not count; "…" until it has arrived.
export function servicesTable(services, listings) {
  if (services.length === 0) {
    return el("p", { class: "empty" }, "No service is registered.");
  }
  const rows = services.map((s) => {
    const listing = listings.get(s.name);
    const count = (status) =>
      listing ? listing.instances.filter((i) => i.status === status).length : "…";
    const cells = statuses.map((status) => {
      const n = status === "passing" ? s.passing : count(status);
      return el("td", { "data-count": status, class: n > 0 ? status : "zero" }, n);
    });
    return el(
      "tr",
      { "data-service": s.name },
      el("th", { scope: "row" }, el("a", { href: `#service-${s.name}` }, s.name)),
      el("td", { "data-count": "instances" }, s.instances),
      cells,
    );
  });
  const head = el(
    "tr",
    {},
    ["service", "instances", ...statuses].map((h) => el("th", { scope: "col" }, h)),
  );
  return el("table", { class: "services" }, el("thead", {}, head), el("tbody", {}, rows));
}

// One instance: what the registry holds, and what its sidecar sees (`sidecar`, built by
// sidecarPanel, or null for an instance without one).
export function instanceCard(service, instance, sidecar) {
  const tags = instance.tags.map((t) => el("span", { class: "tag" }, t));
  const metadata = Object.entries(instance.metadata).map(([k, v]) =>
    el("li", {}, el("span", { class: "key" }, k), " ", v),
  );
  const output = instance.output
    ? el("pre", { class: "output", "data-output": "" }, instance.output)
    : instance.status === "passing"
      ? null
      : el("p", { class: "output muted" }, "no check output reported");
  const facts = el(
    "dl",
    { class: "facts" },
    fact("address", instance.address),
    fact("protocol", instance.protocol),
    fact("weight", instance.weight),
    fact("lease age", since(instance.registered_at)),
    fact("last heartbeat", since(instance.last_heartbeat, " ago")),
  );
  return el(
    "article",
    {
      class: `instance ${instance.status}`,
      "data-service": service,
      "data-instance": instance.id,
      "data-status": instance.status,
    },
    el(
      "header",
      {},
      el("span", { class: `badge ${instance.status}` }, instance.status),
      el("h3", {}, instance.id),
    ),
    el(
      "div",
      { class: "body" },
      el(
        "div",
        { class: "registry-view" },
        facts,
        output,
        tags.length ? el("p", { class: "tags" }, tags) : null,
        metadata.length ? el("ul", { class: "metadata" }, metadata) : null,
      ),
      sidecar,
    ),
  );
}

function fact(name, value) {
  return [el("dt", {}, name), el("dd", {}, value)];
}

// The services, each with its instances, in the registry's order.
export function instancesSection(services, listings, sidecarOf) {
  return services.map((s) => {
    const listing = listings.get(s.name);
    const cards = listing
      ? byStatus(listing.instances).map((i) => instanceCard(s.name, i, sidecarOf(s.name, i)))
      : [el("p", { class: "muted" }, "loading…")];
    return el(
      "section",
      { class: "service", id: `service-${s.name}`, "data-service": s.name },
      el("h2", {}, s.name),
      cards,
    );
  });
}

// Critical instances first, then warning, then passing; by id within each.
const problemsFirst = { critical: 0, warning: 1, passing: 2 };
function byStatus(instances) {
  const rank = (i) => problemsFirst[i.status] ?? 3;
  return [...instances].sort((a, b) => rank(a) - rank(b) || a.id.localeCompare(b.id));
}

// The timeline, newest first.
export function eventList(events) {
  if (events.length === 0) return el("p", { class: "empty" }, "No event yet.");
  const items = [...events].reverse().map((e) =>
    el(
      "li",
      {
        class: `event ${e.kind}`,
        "data-kind": e.kind,
        "data-service": e.service,
        "data-instance": e.instance,
        "data-index": e.index,
      },
      el("time", { datetime: e.time, title: e.time }, new Date(e.time).toLocaleTimeString()),
      el("span", { class: `badge ${e.kind}` }, e.kind),
      el("span", { class: "who" }, `${e.service}/${e.instance}`),
      el("span", { class: "detail" }, e.detail),
    ),
  );
  return el("ol", { class: "events" }, items);
}
