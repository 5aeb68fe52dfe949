//! Property test: random sequences of register / heartbeat / deregister / time passing
//! keep every index monotonic and every listing consistent with a simple model.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_registry::Catalog;
use mesh_registry::catalog::Claim;
use mesh_registry_api::{Registration, Status};
use proptest::prelude::*;
use tokio::time::Instant;

const SERVICES: [&str; 3] = ["web", "db", "cache"];
const IDS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
enum Op {
    Register {
        svc: usize,
        id: usize,
        port: u16,
        ttl_s: u64,
    },
    Heartbeat {
        svc: usize,
        id: usize,
        status: Option<Status>,
    },
    Deregister {
        svc: usize,
        id: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop_oneof![
        Just(None),
        Just(Some(Status::Passing)),
        Just(Some(Status::Warning)),
        Just(Some(Status::Critical)),
    ];
    prop_oneof![
        (0..3usize, 0..4usize, 1..4u16, 1..4u64).prop_map(|(svc, id, port, ttl_s)| Op::Register {
            svc,
            id,
            port,
            ttl_s
        }),
        (0..3usize, 0..4usize, status).prop_map(|(svc, id, status)| Op::Heartbeat {
            svc,
            id,
            status
        }),
        (0..3usize, 0..4usize).prop_map(|(svc, id)| Op::Deregister { svc, id }),
        (0..3000u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What a listing shows, without the wall-clock timestamps.
fn visible(c: &Catalog, svc: &str) -> Vec<(String, String, Status)> {
    c.listing(svc, true)
        .instances
        .into_iter()
        .map(|i| (i.id, i.address, i.status))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn indexes_are_monotonic_and_listings_consistent(ops in prop::collection::vec(op(), 1..60)) {
        let grace = Duration::from_secs(2);
        let catalog = Catalog::new(grace);
        let mut now = Instant::now();
        // Model: which (service, id) pairs the catalog must still hold, with their address.
        let mut model: BTreeMap<(usize, usize), String> = BTreeMap::new();
        let mut last_global = catalog.index();
        let mut last_index: Vec<u64> = SERVICES.iter().map(|s| catalog.listing(s, true).index).collect();

        for op in ops {
            let op = &op;
            let before: Vec<_> = SERVICES.iter().map(|s| visible(&catalog, s)).collect();
            match *op {
                Op::Register { svc, id, port, ttl_s } => {
                    let mut r = Registration::new(format!("h:{port}"));
                    r.ttl = Duration::from_secs(ttl_s);
                    catalog.register(SERVICES[svc], IDS[id], r, "o", now).unwrap();
                    model.insert((svc, id), format!("h:{port}"));
                }
                Op::Heartbeat { svc, id, status } => {
                    let result = catalog.heartbeat(SERVICES[svc], IDS[id], Claim::by("o"), status, None, now);
                    prop_assert_eq!(result.is_ok(), model.contains_key(&(svc, id)));
                }
                Op::Deregister { svc, id } => {
                    let result = catalog.deregister(SERVICES[svc], IDS[id], Claim::by("o"));
                    prop_assert_eq!(result.is_ok(), model.remove(&(svc, id)).is_some());
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    catalog.sweep(now);
                    // Removal after expiry is the only way instances leave on their own.
                    model.retain(|(svc, id), _| {
                        catalog.listing(SERVICES[*svc], true).instances.iter().any(|i| i.id == IDS[*id])
                    });
                }
            }

            let global = catalog.index();
            prop_assert!(global >= last_global, "catalog index went back");
            last_global = global;
            let list = catalog.service_list();
            prop_assert!(list.index <= global);

            for (s, name) in SERVICES.iter().enumerate() {
                let listing = catalog.listing(name, true);
                prop_assert!(listing.index >= last_index[s], "{} index went back", name);
                // A visible change always moves the index; otherwise only a registration
                // (which may change fields the listing does not show, like the TTL) may.
                let now_visible = visible(&catalog, name);
                let moved = listing.index != last_index[s];
                let changed = now_visible != before[s];
                prop_assert!(!changed || moved, "{}: changed but index stayed {}", name, listing.index);
                prop_assert!(!moved || changed || matches!(op, Op::Register { svc, .. } if *svc == s),
                    "{}: index moved {} -> {} without a change", name, last_index[s], listing.index);
                last_index[s] = listing.index;

                // Every instance the model holds is listed, with its address, and nothing else.
                let expected: Vec<(String, String)> = model
                    .iter()
                    .filter(|((svc, _), _)| *svc == s)
                    .map(|((_, id), addr)| (IDS[*id].to_owned(), addr.clone()))
                    .collect();
                let listed: Vec<(String, String)> = now_visible.iter().map(|(i, a, _)| (i.clone(), a.clone())).collect();
                prop_assert_eq!(&listed, &expected);
                prop_assert_eq!(listing.exists, !expected.is_empty());

                // The default listing is exactly the passing part of the full one.
                let passing = catalog.listing(name, false).instances.len();
                prop_assert_eq!(passing, now_visible.iter().filter(|(_, _, st)| *st == Status::Passing).count());
                let summary = list.services.iter().find(|x| x.name == *name);
                match summary {
                    Some(x) => prop_assert_eq!((x.instances, x.passing), (expected.len(), passing)),
                    None => prop_assert!(expected.is_empty()),
                }
            }
        }
    }
}
