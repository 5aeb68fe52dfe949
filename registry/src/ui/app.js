// The dashboard: state, and what drives its updates.
//
// Two blocking queries stay open: /v1/services (its index moves on any change to any
// service, so one query covers the whole catalog) and /v1/events. When the catalog moves,
// every service's full listing is read again (?all=true, without blocking). Per-service
// blocking queries would hold one of the browser's six connections each. Sidecar figures
// and heartbeat times, which change without moving any index, refresh every few seconds.

import { follow, getJSON } from "./api.js";
import { Sidecars, certificatesTable } from "./sidecars.js";
import { eventList, instancesSection, servicesTable, sinceText } from "./view.js";

// Events kept on the page (the registry keeps 500).
const MAX_EVENTS = 200;
// How often listings are read again for their heartbeat times.
const LISTING_REFRESH_MS = 5_000;
// How often the registry's version and CA are read again.
const REGISTRY_REFRESH_MS = 60_000;

const state = {
  registry: null,
  services: [],
  listings: new Map(),
  events: [],
  problems: { services: null, events: null },
  updated: null,
  // A registry on etcd that cannot reach it answers from its last state.
  stale: false,
};
const sidecars = new Sidecars(render);

// === data ===

async function loadRegistry() {
  try {
    state.registry = (await getJSON("readyz")).body;
  } catch {
    // Shown by the blocking queries' health; the version waits for the next try.
  }
  render();
}

// Reads every listed service's listing. Calls that overlap are folded into one more
// read after the current one, so answers never land out of order.
let reading = null;
let readAgain = false;
function loadListings() {
  if (reading) {
    readAgain = true;
    return reading;
  }
  reading = (async () => {
    const names = state.services.map((s) => s.name);
    const answers = await Promise.allSettled(
      names.map((name) => getJSON(`v1/services/${encodeURIComponent(name)}?all=true`)),
    );
    const listings = new Map();
    state.stale = answers.some((answer) => answer.status === "fulfilled" && answer.value.stale);
    answers.forEach((answer, i) => {
      const kept = state.listings.get(names[i]);
      if (answer.status === "fulfilled") listings.set(names[i], answer.value.body);
      else if (kept) listings.set(names[i], kept);
    });
    state.listings = listings;
    state.updated = new Date();
    sidecars.track(listings);
    sidecars.tick();
    render();
  })();
  return reading.finally(() => {
    reading = null;
    if (readAgain) {
      readAgain = false;
      loadListings();
    }
  });
}

function onServices(body) {
  state.services = body.services;
  loadListings();
  render();
}

function onEvents(body) {
  const last = state.events.at(-1)?.index ?? 0;
  // An index that went backwards is a restarted registry: its ring starts over.
  if (body.index < last) state.events = [];
  const known = new Set(state.events.map((e) => e.index));
  state.events.push(...body.events.filter((e) => !known.has(e.index)));
  state.events = state.events.slice(-MAX_EVENTS);
  render();
}

function health(source) {
  return (error) => {
    const was = state.problems[source];
    state.problems[source] = error ? error.message : null;
    if (was !== state.problems[source]) render();
    // Back from an outage: the registry may have restarted with another version or CA.
    if (was && !error) loadRegistry();
  };
}

// === drawing ===

function render() {
  const registry = state.registry;
  replace("version", registry ? `mesh-registry ${registry.version}` : "mesh-registry");
  replace("ca-summary", registry?.ca ? `CA ${registry.ca.trust_domain}, certificates ${registry.ca.cert_ttl}` : registry ? "no CA" : "");
  const problem = state.problems.services ?? state.problems.events;
  const connection = document.getElementById("connection");
  connection.dataset.connection = problem ? "down" : state.stale ? "stale" : "live";
  const stale = state.stale ? " · stale: the registry cannot reach etcd, this is its last state" : "";
  replace("connection", problem ? `${problem} (retrying)` : state.updated ? `live · catalog read ${state.updated.toLocaleTimeString()}${stale}` : "connecting…");
  replace("services", servicesTable(state.services, state.listings));
  replace("instances", instancesSection(state.services, state.listings, (service, instance) => sidecars.panel(service, instance.id)));
  replace("certificates", certificatesTable(sidecars.all(), registry?.ca ?? null));
  replace("events", eventList(state.events));
}

function replace(id, content) {
  document.getElementById(id).replaceChildren(...[content].flat());
}

// Rewrites relative times ("4s ago") in place, without redrawing anything else.
function tickClock() {
  for (const node of document.querySelectorAll("[data-since]")) {
    node.textContent = sinceText(node.dataset.since, node.dataset.suffix);
  }
}

// === start ===

function start() {
  loadRegistry();
  follow("v1/services", onServices, health("services"));
  follow("v1/events", onEvents, health("events"));
  setInterval(() => {
    tickClock();
    if (!document.hidden) sidecars.tick();
  }, 1_000);
  setInterval(() => {
    if (!document.hidden && state.services.length > 0) loadListings();
  }, LISTING_REFRESH_MS);
  setInterval(loadRegistry, REGISTRY_REFRESH_MS);
  render();
}

start();
