//! Picking an endpoint for each try: power of two choices over peak-EWMA load
//! (default), or weighted round-robin, among the endpoints the breakers let in.
//!
//! Balancing is per request, not per connection, so one long-lived HTTP/2 connection
//! from the app is spread over every instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_registry_api::policy::Selector;
use rand::Rng;
use tokio::time::Instant;

use crate::breaker::{EjectionConfig, Probe, Standing};
use crate::destination::Destination;
use crate::endpoint::Endpoint;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Power of two choices: of two endpoints drawn at random (by weight), the one with
    /// the lower latency × load.
    #[default]
    P2c,
    /// Each endpoint in turn, as often as its weight says.
    RoundRobin,
}

/// The endpoint for one try, and the probe claim when the try is an ejected endpoint's
/// probe.
pub struct Chosen {
    pub endpoint: Arc<Endpoint>,
    pub probe: Option<Probe>,
}

/// An endpoint of `destination` for the next try. An endpoint whose ejection ran out
/// takes it as its probe (unless it was the previous try's); otherwise the balancer
/// chooses among the ready ones, minus the previous try's when there is another. When
/// every endpoint is ejected, the one ejected longest ago: a request is better sent to
/// an endpoint that may have recovered than refused.
///
/// With a `subset` (a route chose one), only the endpoints whose metadata it selects are
/// candidates, for every try of the request.
pub fn choose(
    strategy: Strategy,
    destination: &Destination,
    subset: Option<&Selector>,
    previous: Option<&Endpoint>,
    ejection: &EjectionConfig,
) -> Option<Chosen> {
    let now = Instant::now();
    let all = destination.endpoints();
    let in_subset: Vec<Arc<Endpoint>>;
    let endpoints = match subset {
        Some(subset) if !subset.is_all() => {
            let selected = all.endpoints.iter().filter(|e| subset.matches(&e.metadata));
            in_subset = selected.cloned().collect();
            &in_subset[..]
        }
        _ => &all.endpoints[..],
    };
    let is_previous = |e: &Endpoint| previous.is_some_and(|p| std::ptr::eq(p, e));
    // Each endpoint's breaker is read once. Most of the time none is out, and the
    // candidates are the set as it is: the ready ones are copied only once one is out.
    let mut ready_ones: Option<Vec<Arc<Endpoint>>> = None;
    let mut previous_due = false;
    // The one ejected longest ago, for when every endpoint is out.
    let mut oldest: Option<(Instant, &Arc<Endpoint>)> = None;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let standing = endpoint.breaker.standing(now);
        if let Some(since) = standing.since()
            && oldest.is_none_or(|(at, _)| since < at)
        {
            oldest = Some((since, endpoint));
        }
        match standing {
            Standing::Ready => {}
            Standing::Ejected { .. } => {
                ready_ones.get_or_insert_with(|| endpoints[..i].to_vec());
                continue;
            }
            Standing::ProbeDue { .. } if is_previous(endpoint) => previous_due = true,
            Standing::ProbeDue { .. } => {
                if let Some(chosen) = probe(endpoint, ejection, now) {
                    return Some(chosen);
                }
            }
        }
        if let Some(ready) = ready_ones.as_mut() {
            ready.push(endpoint.clone());
        }
    }
    let ready = ready_ones.as_deref().unwrap_or(endpoints);
    if ready.is_empty() {
        return oldest.map(|(_, endpoint)| Chosen {
            endpoint: endpoint.clone(),
            probe: None,
        });
    }
    let endpoint = pick(strategy, ready, &destination.cursor, previous)?;
    // Only the previous try's endpoint may still be due a probe here.
    let probed = previous_due
        .then(|| probe(&endpoint, ejection, now))
        .flatten();
    Some(probed.unwrap_or(Chosen {
        endpoint,
        probe: None,
    }))
}

/// `endpoint` with the claim on its probe, if its ejection ran out and no probe is out.
fn probe(endpoint: &Arc<Endpoint>, ejection: &EjectionConfig, now: Instant) -> Option<Chosen> {
    let probe = Probe::claim(&endpoint.breaker, ejection, now)?;
    tracing::info!(endpoint = %endpoint.address, "probing an ejected endpoint");
    Some(Chosen {
        endpoint: endpoint.clone(),
        probe: Some(probe),
    })
}

/// Chooses among `endpoints`, avoiding `avoid` when another endpoint exists.
pub fn pick(
    strategy: Strategy,
    endpoints: &[Arc<Endpoint>],
    cursor: &AtomicUsize,
    avoid: Option<&Endpoint>,
) -> Option<Arc<Endpoint>> {
    let others: Vec<Arc<Endpoint>>;
    let candidates = match avoid {
        // A retry: copying the list costs less than a retry does anyway.
        Some(avoid) if endpoints.len() > 1 => {
            let kept = endpoints
                .iter()
                .filter(|e| !std::ptr::eq(e.as_ref(), avoid));
            others = kept.cloned().collect();
            &others[..]
        }
        _ => endpoints,
    };
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].clone()),
        _ => Some(match strategy {
            Strategy::P2c => p2c(candidates),
            Strategy::RoundRobin => round_robin(candidates, cursor),
        }),
    }
}

fn p2c(candidates: &[Arc<Endpoint>]) -> Arc<Endpoint> {
    let mut rng = rand::rng();
    let a = weighted(candidates, &mut rng);
    // Draw the second among the others so the two choices differ.
    let mut b = weighted(candidates, &mut rng);
    for _ in 0..4 {
        if b != a {
            break;
        }
        b = weighted(candidates, &mut rng);
    }
    if b == a {
        b = (a + 1) % candidates.len();
    }
    let (ea, eb) = (&candidates[a], &candidates[b]);
    if ea.load() <= eb.load() {
        ea.clone()
    } else {
        eb.clone()
    }
}

/// An index drawn with probability proportional to weight.
fn weighted(candidates: &[Arc<Endpoint>], rng: &mut impl Rng) -> usize {
    let total: u64 = candidates.iter().map(|e| u64::from(e.weight)).sum();
    let mut ticket = rng.random_range(0..total);
    for (i, e) in candidates.iter().enumerate() {
        let w = u64::from(e.weight);
        if ticket < w {
            return i;
        }
        ticket -= w;
    }
    candidates.len() - 1
}

fn round_robin(candidates: &[Arc<Endpoint>], cursor: &AtomicUsize) -> Arc<Endpoint> {
    let total: u64 = candidates.iter().map(|e| u64::from(e.weight)).sum();
    let mut ticket = cursor.fetch_add(1, Ordering::Relaxed) as u64 % total;
    for e in candidates {
        let w = u64::from(e.weight);
        if ticket < w {
            return e.clone();
        }
        ticket -= w;
    }
    candidates[candidates.len() - 1].clone()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Endpoint::new(format!("e{i}:1"), *w, None)))
            .collect()
    }

    fn counts(strategy: Strategy, eps: &[Arc<Endpoint>], n: usize) -> HashMap<String, usize> {
        let cursor = AtomicUsize::new(0);
        let mut counts = HashMap::new();
        for _ in 0..n {
            let e = pick(strategy, eps, &cursor, None).unwrap();
            *counts.entry(e.address.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let eps = endpoints(&[1, 3]);
        let c = counts(Strategy::RoundRobin, &eps, 400);
        assert_eq!((c["e0:1"], c["e1:1"]), (100, 300));
    }

    #[test]
    fn p2c_honours_weights_between_equal_endpoints() {
        let eps = endpoints(&[1, 1, 8]);
        let c = counts(Strategy::P2c, &eps, 4000);
        assert!(c["e2:1"] > c["e0:1"] * 3, "{c:?}");
    }

    #[test]
    fn p2c_avoids_the_slow_endpoint() {
        let eps = endpoints(&[1, 1, 1]);
        eps[0].succeeded(Duration::from_millis(500), Instant::now());
        let c = counts(Strategy::P2c, &eps, 3000);
        // The slow one only wins when both draws hit it, which they never do together.
        assert_eq!(c.get("e0:1").copied().unwrap_or(0), 0, "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_steers_away_from_an_endpoint_that_fails_fast() {
        let eps = endpoints(&[1, 1, 1]);
        let cursor = AtomicUsize::new(0);
        let (mut tries, mut picked) = (0u32, HashMap::<String, usize>::new());
        for _ in 0..3000 {
            let e = pick(Strategy::P2c, &eps, &cursor, None).unwrap();
            *picked.entry(e.address.clone()).or_default() += 1;
            // Every endpoint answers in 2 ms; e0 fails every third try it gets, at once.
            if e.address == "e0:1" {
                tries += 1;
                if tries.is_multiple_of(3) {
                    e.failed(Duration::from_micros(100), Instant::now());
                    continue;
                }
            }
            e.succeeded(Duration::from_millis(2), Instant::now());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let share = picked["e0:1"] as f64 / 3000.0;
        assert!(
            share < 0.15,
            "the failing endpoint got {share:.2} of the tries: {picked:?}"
        );
    }

    #[test]
    fn the_avoided_endpoint_is_skipped_while_another_exists() {
        let eps = endpoints(&[1, 1]);
        let cursor = AtomicUsize::new(0);
        for _ in 0..50 {
            let e = pick(Strategy::P2c, &eps, &cursor, Some(&eps[0])).unwrap();
            assert_eq!(e.address, "e1:1");
        }
        let only = endpoints(&[1]);
        assert!(pick(Strategy::P2c, &only, &cursor, Some(&only[0])).is_some());
        assert!(pick(Strategy::P2c, &[], &cursor, None).is_none());
    }
}
