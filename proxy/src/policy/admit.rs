//! The serving side's check of one inbound call against its service's policy: the
//! intentions first (a denied call costs no token), then the limits.

use http::Request;

use super::Policy;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{Direction, Metrics};

// === impl Policy ===

impl Policy {
    /// Whether the call may reach the app: the refusal to answer with if not. `caller`
    /// is the service the peer proved over mTLS (none: it proved none). Every denial,
    /// enforced or shadow, is logged naming its rule, counted and kept for
    /// `/debug/policy`.
    pub fn admit<B>(
        &self,
        caller: Option<&str>,
        request: &Request<B>,
        metrics: &Metrics,
    ) -> Result<(), ProxyError> {
        let in_force = self.in_force();
        let shown = caller.unwrap_or("an unauthenticated caller");
        if let Some(authz) = &in_force.authz {
            let judgement = authz.judge(caller, request);
            for denial in judgement.shadow.iter().chain(&judgement.denied) {
                let mode = denial.mode.as_str();
                tracing::info!(caller = %shown, service = %self.service, rule = %denial.rule, mode,
                    method = %request.method(), path = %request.uri().path(), "call denied by intention");
                metrics.policy_denial(&self.service, mode, &denial.rule);
                self.denials.record(shown, denial, request);
            }
            if let Some(denial) = judgement.denied {
                return Err(ProxyError::new(
                    ErrorKind::Denied,
                    format!(
                        "{shown} may not call {}: denied by intention rule {}",
                        self.service, denial.rule
                    ),
                ));
            }
        }
        if let Some(limiter) = &in_force.limiter
            && let Err(limited) = limiter.admit(caller)
        {
            metrics.rate_limited(Direction::Inbound, &self.service);
            let which = if limited.per_caller {
                format!("the limit per caller ({shown})")
            } else {
                "the overall limit".to_owned()
            };
            let secs = limited.retry_after_secs();
            tracing::debug!(caller = %shown, service = %self.service, "call over {which}");
            return Err(ProxyError::rate_limited(
                format!("{} is over {which}: retry after {secs}s", self.service),
                secs,
            ));
        }
        Ok(())
    }
}
