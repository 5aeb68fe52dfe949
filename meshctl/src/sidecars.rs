//! Which sidecars there are: registered instances whose metadata names an admin address.
//!
//! Sidecars register their admin address (metadata `admin`) with their instance, so the
//! registry is the list of them. Outbound-only sidecars register nothing and so are not
//! seen; neither are instances registered by hand without an `admin` entry.

use std::fmt;
use std::future::Future;

use mesh_registry_api::{ADMIN_METADATA, Client, ClientError, Status};
use tokio::task::JoinSet;

use crate::Error;

/// One registered sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub service: String,
    pub id: String,
    /// `host:port` of its admin listener, as registered.
    pub admin: String,
    /// How the registry lists the instance.
    pub status: Status,
}

impl fmt::Display for Sidecar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.id)
    }
}

/// Every registered sidecar, in any status, ordered by service and id.
pub async fn list(client: &Client) -> Result<Vec<Sidecar>, ClientError> {
    let services = client.services().await?.services;
    let listings = each(services, |summary| {
        let client = client.clone();
        async move { client.service_all(&summary.name).await }
    })
    .await;
    let mut sidecars = Vec::new();
    for listing in listings {
        let listing = listing?;
        for instance in listing.instances {
            if let Some(admin) = instance.metadata.get(ADMIN_METADATA) {
                sidecars.push(Sidecar {
                    service: listing.service.clone(),
                    id: instance.id,
                    admin: admin.clone(),
                    status: instance.status,
                });
            }
        }
    }
    sidecars.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    Ok(sidecars)
}

/// The sidecar `--via` names: `service/instance-id`, or an instance id alone when only
/// one service has an instance of that id.
pub async fn find(client: &Client, via: &str) -> Result<Sidecar, Error> {
    let refuse = |reason: String| Error::Via {
        via: via.to_owned(),
        reason,
    };
    let candidates: Vec<Sidecar> = match via.split_once('/') {
        Some((service, id)) => {
            let listing = client.service_all(service).await?;
            let Some(instance) = listing.instances.into_iter().find(|i| i.id == id) else {
                return Err(refuse(format!("{service} has no instance {id}")));
            };
            let Some(admin) = instance.metadata.get(ADMIN_METADATA) else {
                return Err(refuse(format!(
                    "its registration has no {ADMIN_METADATA:?} metadata: not a sidecar, or \
                     one that does not publish its admin address"
                )));
            };
            vec![Sidecar {
                service: service.to_owned(),
                id: instance.id.clone(),
                admin: admin.clone(),
                status: instance.status,
            }]
        }
        None => list(client)
            .await?
            .into_iter()
            .filter(|s| s.id == via)
            .collect(),
    };
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(refuse("no registered sidecar has this instance id".into())),
        many => {
            let names: Vec<String> = many.iter().map(|s| s.to_string()).collect();
            Err(refuse(format!(
                "several sidecars have this id ({}): name one as service/id",
                names.join(", ")
            )))
        }
    }
}

/// Runs `f` on every item concurrently and returns the results in the items' order: one
/// slow sidecar (2 s to time out) must not add up with the others.
pub async fn each<T, R, F, Fut>(items: Vec<T>, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let mut tasks = JoinSet::new();
    let count = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let run = f(item);
        tasks.spawn(async move { (i, run.await) });
    }
    let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, result) = done.expect("a fetch task does not panic");
        results[i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.expect("every task reported"))
        .collect()
}
