//! Keeps one instance registered: register, heartbeat at a third of the lease,
//! re-register when the registry forgot us, deregister on shutdown.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::types::{Heartbeat, Registration, Status};
use crate::{Backoff, Client, ClientError};

/// Deadline for the final deregistration, so shutdown is never held by a dead registry.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The registration loop of one instance. See [`Registrar::run`].
pub struct Registrar {
    client: Client,
    service: String,
    id: String,
    registration: Registration,
    registered: watch::Sender<bool>,
    /// What the instance's last health check saw, sent with each heartbeat (see
    /// [`with_output`](Registrar::with_output)).
    output: Option<watch::Receiver<Option<String>>>,
    /// The generation the registry gave our last registration (0: none yet), which
    /// heartbeats and the final deregistration name: if someone registers the same id
    /// again, our heartbeats get 404 and we register again at once, instead of keeping
    /// their entry alive; and our deregistration leaves theirs alone.
    generation: AtomicU64,
}

// === impl Registrar ===

impl Registrar {
    pub fn new(client: Client, service: &str, id: &str, registration: Registration) -> Self {
        Registrar {
            client,
            service: service.to_owned(),
            id: id.to_owned(),
            registration,
            registered: watch::Sender::new(false),
            output: None,
            generation: AtomicU64::new(0),
        }
    }

    /// Heartbeats carry the current value of `output`: what the last health check saw
    /// (why it failed), which the registry lists with the instance.
    pub fn with_output(mut self, output: watch::Receiver<Option<String>>) -> Self {
        self.output = Some(output);
        self
    }

    /// True while the registry holds a live lease for this instance, as far as we know.
    pub fn subscribe_registered(&self) -> watch::Receiver<bool> {
        self.registered.subscribe()
    }

    /// Runs until `shutdown` resolves, then deregisters (best effort, bounded) and returns.
    ///
    /// `health` is the instance's current status: each heartbeat reports it, and a change
    /// is reported at once rather than at the next beat. A value re-sent unchanged wakes
    /// nothing: health checkers may publish every verdict. Registry errors never end the
    /// loop: it retries with backoff, because a sidecar must outlive registry outages.
    /// Every retry waits at least the backoff's base, also a re-registration after the
    /// registry forgot the instance, so no answer can make the loop spin.
    pub async fn run(
        self,
        mut health: watch::Receiver<Status>,
        shutdown: impl Future<Output = ()>,
    ) {
        let beat = (self.registration.ttl / 3).max(Duration::from_millis(100));
        let mut backoff = Backoff::new(Duration::from_millis(100), beat);
        let mut registered = false;
        let mut health_open = true;
        tokio::pin!(shutdown);
        loop {
            let status = *health.borrow_and_update();
            let outcome = self.attempt(registered, status).await;
            let delay = self.next_delay(outcome, &mut registered, &mut backoff, beat);
            self.registered
                .send_if_modified(|r| std::mem::replace(r, registered) != registered);
            if self
                .wait(
                    Instant::now() + delay,
                    status,
                    &mut health,
                    &mut health_open,
                    &mut shutdown,
                )
                .await
                .is_break()
            {
                break;
            }
        }
        self.registered.send_replace(false);
        self.deregister().await;
    }

    /// How long to wait after an attempt, and whether the registry now holds a lease
    /// for us.
    fn next_delay(
        &self,
        outcome: Result<(), ClientError>,
        registered: &mut bool,
        backoff: &mut Backoff,
        beat: Duration,
    ) -> Duration {
        match outcome {
            Ok(()) => {
                // Only a heartbeat that went through proves the registry keeps us: a
                // registration forgotten at once must not reset the backoff.
                if *registered {
                    backoff.reset();
                }
                *registered = true;
                beat
            }
            Err(e) if *registered && e.is_not_found() => {
                tracing::info!(service = %self.service, id = %self.id, "registry forgot this instance; registering again");
                *registered = false;
                backoff.next_delay_at_least_base()
            }
            Err(e) if e.is_no_route() || e.is_not_found() => {
                tracing::error!(service = %self.service, id = %self.id, registry = %self.client.base_url(), error = %e, "the registry has no such route: the registry URL looks wrong (it must be just http://host:port); will retry");
                backoff.next_delay_at_least_base()
            }
            Err(e) => {
                tracing::warn!(service = %self.service, id = %self.id, error = %e, "registry call failed; will retry");
                backoff.next_delay_at_least_base()
            }
        }
    }

    /// The last word on shutdown, bounded so a dead registry cannot hold it up.
    async fn deregister(&self) {
        match tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            self.client
                .deregister_generation(&self.service, &self.id, self.generation()),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(service = %self.service, id = %self.id, "deregistered"),
            Ok(Err(e)) => {
                tracing::warn!(service = %self.service, id = %self.id, error = %e, "deregistration failed")
            }
            Err(_) => {
                tracing::warn!(service = %self.service, id = %self.id, "deregistration timed out")
            }
        }
    }

    /// Sleeps until `deadline`, or until `health` turns to a status other than `sent`
    /// (checkers re-send an unchanged status; that must not move the beat). Breaks when
    /// `shutdown` resolves.
    async fn wait(
        &self,
        deadline: Instant,
        sent: Status,
        health: &mut watch::Receiver<Status>,
        health_open: &mut bool,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> ControlFlow<()> {
        loop {
            tokio::select! {
                () = shutdown.as_mut() => return ControlFlow::Break(()),
                () = tokio::time::sleep_until(deadline) => return ControlFlow::Continue(()),
                changed = health.changed(), if *health_open => {
                    *health_open = changed.is_ok();
                    if *health_open && *health.borrow_and_update() != sent {
                        return ControlFlow::Continue(());
                    }
                }
            }
        }
    }

    async fn attempt(&self, registered: bool, status: Status) -> Result<(), ClientError> {
        if registered {
            let heartbeat = Heartbeat {
                status: Some(status),
                output: self.output.as_ref().and_then(|o| o.borrow().clone()),
                generation: self.generation(),
            };
            self.client
                .heartbeat(&self.service, &self.id, &heartbeat)
                .await
                .map(drop)
        } else {
            let registration = Registration {
                status,
                ..self.registration.clone()
            };
            let instance = self
                .client
                .register(&self.service, &self.id, &registration)
                .await?;
            self.generation
                .store(instance.generation, Ordering::Relaxed);
            tracing::info!(service = %self.service, id = %self.id, address = %instance.address, generation = instance.generation, "registered");
            Ok(())
        }
    }

    /// The generation of our registration, once the registry gave one.
    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Relaxed)).filter(|g| *g != 0)
    }
}
