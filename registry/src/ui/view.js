// Building the page's parts from plain data. Everything registered (tags, metadata,
// health-check output, event details) is chosen by whoever may register, so it only ever
// enters the page as text nodes, never as markup.
//
// Elements carry data-* attributes naming what they show (data-service, data-instance,
// data-status, data-figure, ...), for styling and so tests can find them.

// An element: `attrs` values of null are left out; children are nodes or text. Any other
// object becomes no text at all: String() of one parsed from remote JSON could throw.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, plain(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(plain(child)));
  }
  return node;
}

const plain = (value) => (typeof value === "object" ? "" : String(value));

// Elements kept between updates, one per key, in the keys' order: an update builds only
// the elements of new keys and of keys it is told changed, moves the others into place
// and removes those of keys gone. A page of thousands of services redraws what changed,
// not the thousands.
//
// With `size`, the elements are split in chunks of that many, each in an element of its
// own (`chunk()` returns {outer, inner}: the element placed in `container`, and the one
// holding the elements). Chunks are styled `content-visibility: auto`, so the browser
// lays out and paints the chunks on screen only: a change costs what one chunk costs.
export class Keyed {
  constructor(container, { size = Infinity, chunk = null } = {}) {
    this.container = container;
    this.size = size;
    this.chunk = chunk;
    this.chunks = [];
    this.elements = new Map();
    this.keys = null;
  }

  // `keys` in order; `build(key, parent)` makes a key's element for the element that
  // will hold it; `changed` holds the keys whose elements must be built again. With the
  // same keys as last time, only those are touched.
  update(keys, build, changed = new Set()) {
    const same = this.keys?.length === keys.length && keys.every((key, i) => key === this.keys[i]);
    this.keys = keys;
    if (same) {
      for (const key of changed) {
        const element = this.elements.get(key);
        if (!element) continue;
        const fresh = build(key, element.parentNode);
        element.replaceWith(fresh);
        this.elements.set(key, fresh);
      }
      return;
    }
    const wanted = new Set(keys);
    for (const [key, element] of this.elements) {
      if (wanted.has(key)) continue;
      element.remove();
      this.elements.delete(key);
    }
    if (this.size === Infinity) {
      this.place(this.container, keys, build, changed);
      return;
    }
    const count = Math.ceil(keys.length / this.size);
    while (this.chunks.length < count) {
      const chunk = this.chunk();
      this.container.append(chunk.outer);
      this.chunks.push(chunk);
    }
    while (this.chunks.length > count) this.chunks.pop().outer.remove();
    this.chunks.forEach((chunk, i) => {
      this.place(chunk.inner, keys.slice(i * this.size, (i + 1) * this.size), build, changed);
    });
  }

  // Makes `parent`'s children the elements of `keys`, in order. Elements of keys that
  // belong to a later chunk are taken out here, and built again in theirs (what an
  // element shows may depend on its chunk).
  place(parent, keys, build, changed) {
    let cursor = parent.firstChild;
    for (const key of keys) {
      let element = this.elements.get(key);
      if (!element || changed.has(key) || element.parentNode !== parent) {
        const fresh = build(key, parent);
        if (element) {
          if (cursor === element) cursor = fresh;
          if (element.parentNode === parent) element.replaceWith(fresh);
          else element.remove();
        }
        this.elements.set(key, fresh);
        element = fresh;
      }
      if (element === cursor) cursor = cursor.nextSibling;
      else parent.insertBefore(element, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }
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

// The services table: a head, and the rows (`serviceRow`) in chunks of tables of their
// own (`servicesChunk`), whose fixed layout keeps the columns aligned. One table of
// thousands of rows would be laid out whole on every change.
export function servicesTable() {
  const head = el(
    "tr",
    {},
    ["service", "instances", ...statuses].map((h) => el("th", { scope: "col" }, h)),
  );
  const chunks = el("div", { class: "chunks" });
  return { table: el("div", { class: "services" }, el("table", {}, el("thead", {}, head)), chunks), chunks };
}

export function servicesChunk() {
  const rows = el("tbody");
  return { outer: el("table", { class: "chunk" }, rows), inner: rows };
}

// A chunk of service sections.
export function sectionsChunk() {
  const chunk = el("div", { class: "chunk" });
  return { outer: chunk, inner: chunk };
}

// One row of the services table: instance counts by status. `listing` supplies warning
// and critical, which /v1/services does not count; "…" until it has arrived.
export function serviceRow(s, listing) {
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

// A service with its traffic policy (`policyOf(name)`, an element: policy.js) and its
// instances (`listing`, or null before it has arrived). Without `cards` (a service far
// off screen), the heading alone: its policy and cards are built when it comes near.
export function serviceSection(name, listing, sidecarOf, policyOf, cards = true) {
  const content = !cards
    ? null
    : [
        policyOf(name),
        listing
          ? byStatus(listing.instances).map((i) => instanceCard(name, i, sidecarOf(name, i)))
          : el("p", { class: "muted" }, "loading…"),
      ];
  return el(
    "section",
    { class: "service", id: `service-${name}`, "data-service": name },
    el("h2", {}, name),
    content,
  );
}

// Critical instances first, then warning, then passing; by id within each.
const problemsFirst = { critical: 0, warning: 1, passing: 2 };
function byStatus(instances) {
  const rank = (i) => problemsFirst[i.status] ?? 3;
  return [...instances].sort((a, b) => rank(a) - rank(b) || a.id.localeCompare(b.id));
}

// One event of the timeline (newest first, keyed by index: view.js `Keyed`).
export function eventItem(e) {
  return el(
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
  );
}
