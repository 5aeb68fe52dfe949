//! When the mesh counts as up: each check is polled until it holds, until the shared
//! deadline passes, or until a child exits (a process that died will not become ready).

use std::{future::Future, time::Duration};

use ::http::Uri;
use mesh_registry_api::ServiceList;
use tokio::{sync::mpsc, time::Instant};

use crate::{Error, child::Exit, http};

/// Between two checks.
const POLL: Duration = Duration::from_millis(100);

/// One check's request; a process that takes longer to answer is not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The deadline every wait of one start-up shares.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    pub deadline: Instant,
    /// The whole `--ready-timeout`, for the message.
    pub timeout: Duration,
}

// === impl Wait ===

impl Wait {
    pub fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    /// Polls `check` until it holds. `what` names the condition in the error; the error
    /// also carries the last check's complaint.
    pub async fn until<F, Fut>(
        self,
        what: &str,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
        mut check: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        loop {
            let last = match check().await {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            if Instant::now() >= self.deadline {
                return Err(Error::NotReady {
                    what: what.to_owned(),
                    timeout: self.timeout,
                    last,
                });
            }
            tokio::select! {
                Some(exit) = exits.recv() => {
                    return Err(Error::DiedDuringStartup {
                        name: exit.name,
                        pid: exit.pid,
                        status: exit.status,
                    });
                }
                () = tokio::time::sleep_until(self.deadline.min(Instant::now() + POLL)) => {}
            }
        }
    }
}

/// `url` answers 2xx: a process's own readiness endpoint.
pub async fn answers(http: http::Client, url: Uri) -> Result<(), String> {
    match http.get(&url, PROBE_TIMEOUT).await {
        Ok(response) if response.status.is_success() => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status)),
        Err(error) => Err(error.to_string()),
    }
}

/// The registry lists `instances` passing recommendations and one passing marketplace:
/// every sidecar has registered and found its app healthy.
pub async fn registered(
    registry: mesh_registry_api::Client,
    instances: usize,
) -> Result<(), String> {
    let list = tokio::time::timeout(PROBE_TIMEOUT, registry.services())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|error| error.to_string())?;
    let recommendations = passing(&list, "recommendations");
    let marketplace = passing(&list, "marketplace");
    if recommendations == instances && marketplace == 1 {
        Ok(())
    } else {
        Err(format!(
            "{recommendations} recommendations and {marketplace} marketplace passing"
        ))
    }
}

/// The page comes back with books: the whole path, marketplace → its sidecar → a
/// recommendations sidecar → the app, works.
pub async fn page_served(http: http::Client, page: Uri) -> Result<(), String> {
    let response = http
        .get(&page, PROBE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if response.status.is_success() && response.text().contains("<li>") {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status))
    }
}

/// How many instances of `service` the registry lists as passing.
fn passing(list: &ServiceList, service: &str) -> usize {
    list.services
        .iter()
        .find(|summary| summary.name == service)
        .map_or(0, |summary| summary.passing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_the_last_complaint() {
        let (_exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut checks = 0;
        let error = Wait::new(Duration::from_secs(2))
            .until("the thing", &mut exits, || {
                checks += 1;
                let n = checks;
                async move { Err(format!("attempt {n}")) }
            })
            .await
            .unwrap_err();
        // One check at the start, then one per 100 ms poll.
        assert_eq!(checks, 21);
        assert_eq!(
            error.to_string(),
            "the thing was not ready within 2s (--ready-timeout); last check: attempt 21"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_exit_ends_the_wait_at_once() {
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        exits_tx
            .send(Exit {
                name: "sidecar/marketplace".to_owned(),
                pid: 42,
                role: crate::plan::Role::Sidecar,
                status: "exit code 1".to_owned(),
            })
            .unwrap();
        let error = Wait::new(Duration::from_secs(60))
            .until("the page", &mut exits, || async {
                Err("refused".to_owned())
            })
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "sidecar/marketplace (pid 42) exited during start-up: exit code 1; its output \
             above says why"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn holds_as_soon_as_the_check_does() {
        let (_exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut checks = 0;
        Wait::new(Duration::from_secs(60))
            .until("x", &mut exits, || {
                checks += 1;
                let ready = checks == 3;
                async move { if ready { Ok(()) } else { Err(String::new()) } }
            })
            .await
            .unwrap();
        assert_eq!(checks, 3);
    }
}
