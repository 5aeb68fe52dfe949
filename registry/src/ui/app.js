// The dashboard: state, and what drives its updates.
//
// Two blocking queries stay open: /v1/services (its index moves on any change to any
// service, so one query covers the whole catalog) and /v1/events. Each service in that
// list carries its own index, so when the catalog moves only the listings whose index
// moved are read again (?all=true, without blocking): one request per changed service,
// however many services there are. Per-service blocking queries would hold one of the
// browser's six connections each. Heartbeat times and check output change without
// moving any index: the listings of the services on screen are read again every few
// seconds for them. Sidecar figures refresh every few seconds (sidecars.js); a sidecar's
// live tap is opened on its panel by hand (tap.js).
//
// A service's traffic policy (policy.js) is read when its instance cards are first built.
// A policy change moves the catalog's index but no service's, so the page cannot tell
// whose policy changed: each move marks every policy read so far stale, and the stale
// ones are read again as their services are on screen (at once for those on screen
// then). Watching each policy with a blocking query would cost a connection each.
//
// Drawing is keyed (view.js `Keyed`): each row of the services table, each service's
// section, each sidecar panel and certificate row is an element of its own, built again
// only when what it shows changed, at most once per frame.

import { follow, getJSON } from "./api.js";
import { policySection } from "./policy.js";
import { Sidecars, certificateRow, certificatesIntro, certificatesTable } from "./sidecars.js";
import { tapAccess } from "./tap.js";
import {
  Keyed,
  el,
  eventItem,
  sectionsChunk,
  serviceRow,
  serviceSection,
  servicesChunk,
  servicesTable,
  sinceText,
} from "./view.js";

// Events kept on the page (the registry keeps 500).
const MAX_EVENTS = 200;
// How often the listings of the services on screen are read again for heartbeat times.
const LISTING_REFRESH_MS = 5_000;
// How often the registry's version and CA are read again.
const REGISTRY_REFRESH_MS = 60_000;
// Listings and policies read at once: the browser's six connections per host also carry
// the two blocking queries and the sidecar panels' pages.
const READS = 3;
// Rows and services per chunk (view.js `Keyed`): what one change costs to lay out.
const ROWS_PER_CHUNK = 100;
const SERVICES_PER_CHUNK = 25;

const state = {
  registry: null,
  // The services in the registry's order, and each one's summary by name.
  services: [],
  summaries: new Map(),
  // name → {body, text}: the last listing read, and its JSON text to tell a change.
  listings: new Map(),
  // name → {body, text} or {error}: the last policy read. Names whose policy may have
  // changed since, and those waiting to be read or being read.
  policies: new Map(),
  policiesStale: new Set(),
  policiesAsked: new Set(),
  events: [],
  problems: { services: null, events: null },
  updated: null,
  // A registry on etcd that cannot reach it answers from its last state.
  stale: false,
};

// What the next frame draws again.
const dirty = {
  header: true,
  // The list of services itself (names, order).
  services: true,
  rows: new Set(),
  sections: new Set(),
  // The sidecars followed; the registry's CA (every certificate row); the sidecars
  // whose certificate rows changed.
  certificates: true,
  ca: true,
  certs: new Set(),
  events: true,
};

const sidecars = new Sidecars((sidecar) => {
  dirty.certs.add(sidecar);
  schedule();
});

// === data ===

async function loadRegistry() {
  try {
    state.registry = (await getJSON("readyz")).body;
    tapAccess(state.registry?.writes);
  } catch {
    // Shown by the blocking queries' health; the version waits for the next try.
  }
  dirty.header = dirty.ca = true;
  schedule();
}

// Listings and policies waiting to be read, in the order asked, listings first (they
// carry the counts); a name asked again while it is being read is read once more after,
// so the last answer is never older than the last ask.
const queue = { listing: new Set(), policy: new Set() };
let reading = 0;

function readListings(names) {
  read("listing", names);
}

function readPolicies(names) {
  for (const name of names) state.policiesAsked.add(name);
  read("policy", names);
}

function read(kind, names) {
  for (const name of names) queue[kind].add(name);
  while (reading < READS) {
    const next = queue.listing.size > 0 ? "listing" : queue.policy.size > 0 ? "policy" : null;
    if (next === null) return;
    const name = queue[next].values().next().value;
    queue[next].delete(name);
    reading += 1;
    (next === "listing" ? readListing : readPolicy)(name).finally(() => {
      reading -= 1;
      read(next, []);
    });
  }
}

async function readListing(name) {
  let answer;
  try {
    answer = await getJSON(`v1/services/${encodeURIComponent(name)}?all=true`);
  } catch {
    return; // The listing shown stays; the next change or refresh reads it again.
  }
  state.updated = new Date();
  state.stale = answer.stale;
  dirty.header = true;
  schedule();
  // Gone from the catalog meanwhile, or unchanged: nothing to draw.
  if (!state.summaries.has(name) || state.listings.get(name)?.text === answer.text) return;
  state.listings.set(name, { body: answer.body, text: answer.text });
  sidecars.follow(name, answer.body);
  sidecars.tick();
  dirty.rows.add(name);
  dirty.sections.add(name);
  dirty.certificates = true;
}

async function readPolicy(name) {
  state.policiesStale.delete(name);
  let answer;
  try {
    answer = await getJSON(`v1/policy/${encodeURIComponent(name)}`);
  } catch (e) {
    // Unreachable: the policy shown stays (the blocking queries say the registry is
    // away). An error answer is shown in its place.
    if (e.status !== 0 && state.summaries.has(name)) {
      state.policies.set(name, { error: e.message, text: null });
      dirty.sections.add(name);
      schedule();
    }
    return;
  } finally {
    if (!queue.policy.has(name)) state.policiesAsked.delete(name);
  }
  if (!state.summaries.has(name) || state.policies.get(name)?.text === answer.text) return;
  state.policies.set(name, { body: answer.body, text: answer.text });
  dirty.sections.add(name);
  schedule();
}

// The policy of a service whose section is being built: read once, the first time.
function policyOf(name) {
  if (!state.policies.has(name) && !state.policiesAsked.has(name)) readPolicies([name]);
  return policySection(name, state.policies.get(name), state.listings.get(name)?.body ?? null);
}

// Reads again the stale policies of the sections on screen.
function readStalePolicies(sections) {
  const stale = (name) => state.policiesStale.has(name) && !state.policiesAsked.has(name);
  readPolicies(sections.map((section) => section.dataset.service).filter(stale));
}

function onServices(body) {
  const summaries = new Map(body.services.map((s) => [s.name, s]));
  const moved = [];
  for (const s of body.services) {
    const before = state.summaries.get(s.name);
    if (before?.instances !== s.instances || before?.passing !== s.passing) dirty.rows.add(s.name);
    // A registry without per-service indexes (an older release) has every listing read.
    if (s.index === undefined || state.listings.get(s.name)?.body.index !== s.index) {
      moved.push(s.name);
    }
  }
  for (const name of state.summaries.keys()) {
    if (summaries.has(name)) continue;
    state.listings.delete(name);
    state.policies.delete(name);
    state.policiesStale.delete(name);
    sidecars.follow(name, null);
    dirty.certificates = true;
  }
  state.services = body.services;
  state.summaries = summaries;
  dirty.services = true;
  readListings(moved);
  for (const name of state.policies.keys()) state.policiesStale.add(name);
  withSectionsOnScreen(readStalePolicies);
  schedule();
}

function onEvents(body) {
  const last = state.events.at(-1)?.index ?? 0;
  // An index that went backwards is a restarted registry: its ring starts over.
  if (body.index < last) state.events = [];
  const known = new Set(state.events.map((e) => e.index));
  state.events.push(...body.events.filter((e) => !known.has(e.index)));
  state.events = state.events.slice(-MAX_EVENTS);
  dirty.events = true;
  schedule();
}

function health(source) {
  return (error) => {
    const was = state.problems[source];
    state.problems[source] = error ? error.message : null;
    if (was !== state.problems[source]) {
      dirty.header = true;
      schedule();
    }
    // Back from an outage: the registry may have restarted with another version or CA.
    if (was && !error) loadRegistry();
  };
}

// === what is on screen ===

// Chunks of services on screen (or nearly), as an IntersectionObserver on the chunks (a
// hundred or so, not one per service) reports them.
const chunksOnScreen = new Set();
const visibility = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        chunksOnScreen.add(entry.target);
        tickClock(entry.target);
        // Its services' cards are built the first time it comes near.
        if (entry.target.dataset.seen === undefined) {
          entry.target.dataset.seen = "";
          for (const section of entry.target.children) dirty.sections.add(section.dataset.service);
          schedule();
        }
      } else {
        chunksOnScreen.delete(entry.target);
        if (!entry.target.isConnected) visibility.unobserve(entry.target);
      }
    }
  },
  { rootMargin: "1000px 0px" },
);

// Calls `read(sections on screen)` just after the next frame is drawn, when reading
// positions lays nothing out. Only the sections of chunks on screen are looked at: a few
// dozen positions, not thousands.
function withSectionsOnScreen(read) {
  requestAnimationFrame(() => setTimeout(() => read(sectionsOnScreen()), 0));
}

function sectionsOnScreen() {
  const on = [];
  for (const chunk of chunksOnScreen) {
    for (const section of chunk.children) {
      const { top, bottom } = section.getBoundingClientRect();
      if (bottom > 0 && top < window.innerHeight) on.push(section);
    }
  }
  return on;
}

// Rewrites relative times ("4s ago") in place, without redrawing anything else.
function tickClock(within) {
  for (const node of within.querySelectorAll("[data-since]")) {
    node.textContent = sinceText(node.dataset.since, node.dataset.suffix);
  }
}

// === drawing ===

const page = {
  noServices: el("p", { class: "empty" }, "No service is registered."),
  noEvents: el("p", { class: "empty" }, "No event yet."),
  events: el("ol", { class: "events" }),
  servicesTable: servicesTable(),
  certificatesIntro: el("div"),
  certificatesTable: certificatesTable(),
};
const rows = new Keyed(page.servicesTable.chunks, { size: ROWS_PER_CHUNK, chunk: servicesChunk });
const sections = new Keyed(document.getElementById("instances"), {
  size: SERVICES_PER_CHUNK,
  chunk: () => {
    const chunk = sectionsChunk();
    visibility.observe(chunk.outer);
    return chunk;
  },
});
const certs = new Keyed(page.certificatesTable.tBodies[0]);
const events = new Keyed(page.events);

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(draw);
}

function draw() {
  scheduled = false;
  if (dirty.header) drawHeader();
  if (dirty.services || dirty.rows.size > 0 || dirty.sections.size > 0) drawServices();
  if (dirty.certificates || dirty.ca || dirty.certs.size > 0) drawCertificates();
  if (dirty.events) drawEvents();
  dirty.header = dirty.services = dirty.certificates = dirty.ca = dirty.events = false;
  dirty.rows.clear();
  dirty.sections.clear();
  dirty.certs.clear();
}

function drawHeader() {
  const registry = state.registry;
  replace("version", registry ? `mesh-registry ${registry.version}` : "mesh-registry");
  replace("ca-summary", registry?.ca ? `CA ${registry.ca.trust_domain}, certificates ${registry.ca.cert_ttl}` : registry ? "no CA" : "");
  const problem = state.problems.services ?? state.problems.events;
  const connection = document.getElementById("connection");
  connection.dataset.connection = problem ? "down" : state.stale ? "stale" : "live";
  const stale = state.stale ? " · stale: the registry cannot reach etcd, this is its last state" : "";
  replace("connection", problem ? `${problem} (retrying)` : state.updated ? `live · catalog read ${state.updated.toLocaleTimeString()}${stale}` : "connecting…");
}

function drawServices() {
  const names = state.services.map((s) => s.name);
  const listing = (name) => state.listings.get(name)?.body ?? null;
  page.noServices.hidden = names.length > 0;
  page.servicesTable.table.hidden = names.length === 0;
  rows.update(names, (name) => serviceRow(state.summaries.get(name), listing(name)), dirty.rows);
  sections.update(
    names,
    (name, chunk) =>
      serviceSection(
        name,
        listing(name),
        (service, instance) => sidecars.panel(service, instance.id),
        policyOf,
        chunk.dataset.seen !== undefined,
      ),
    dirty.sections,
  );
}

// Rows are keyed by the Sidecar itself: one followed anew (its admin address changed)
// gets a row of its own.
function drawCertificates() {
  const ca = state.registry?.ca ?? null;
  if (dirty.ca) page.certificatesIntro.replaceChildren(certificatesIntro(ca));
  const all = sidecars.all().sort((a, b) => a.key.localeCompare(b.key));
  page.certificatesTable.hidden = all.length === 0;
  const changed = dirty.ca ? new Set(all) : dirty.certs;
  certs.update(all, (sidecar) => certificateRow(sidecar, ca), changed);
}

// The timeline, newest first. Events are keyed by the objects themselves: after a
// registry restart, indexes start over and name other events.
function drawEvents() {
  page.noEvents.hidden = state.events.length > 0;
  events.update([...state.events].reverse(), eventItem);
}

function replace(id, content) {
  document.getElementById(id).replaceChildren(...[content].flat());
}

// === start ===

function start() {
  document.getElementById("services").replaceChildren(page.noServices, page.servicesTable.table);
  document.getElementById("certificates").replaceChildren(page.certificatesIntro, page.certificatesTable);
  document.getElementById("events").replaceChildren(page.noEvents, page.events);
  loadRegistry();
  follow("v1/services", onServices, health("services"));
  follow("v1/events", onEvents, health("events"));
  // A hidden page reads nothing (and draws no frame to wait for).
  setInterval(() => {
    if (document.hidden) return;
    withSectionsOnScreen((on) => {
      for (const section of on) tickClock(section);
      sidecars.tick();
      readStalePolicies(on);
    });
  }, 1_000);
  setInterval(() => {
    if (document.hidden) return;
    withSectionsOnScreen((on) => readListings(on.map((section) => section.dataset.service)));
  }, LISTING_REFRESH_MS);
  setInterval(loadRegistry, REGISTRY_REFRESH_MS);
  schedule();
}

start();
