//! Phase 4: the dynamic limits (`[dynamic]`): requests in flight per client (.501) and the
//! request rate (.502), counted in the state store; `logging_only` serves and logs instead.

use super::*;

impl Gateway {
    /// The in-flight slot goes into `ex.guard`, held until the response ends.
    pub(crate) async fn dynamic_limits(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        if self.limits.max_concurrent.is_none() && self.limits.rate.is_none() {
            return Ok(());
        }
        let client_ip = ex.client.ip;
        let admission = self
            .state
            .admit(self.client_key(client_ip), &self.limits)
            .await;
        let answered = !matches!(admission, Admission::Unavailable);
        self.metrics.state_call(&self.state, answered);
        let refusal = match admission {
            Admission::Admitted(g) => {
                ex.guard = Some(g);
                return Ok(());
            }
            Admission::Refused(LimitRefusal::Concurrent { max }) => {
                Refusal::new(Reason::ConcurrentLimit).with_detail(format!(
                    "{max} requests from {client_ip} already in flight (dynamic.deny_by_concurrent)"
                ))
            }
            Admission::Refused(LimitRefusal::Rate { retry_after }) => {
                Refusal::new(Reason::RateLimit)
                    .with_retry_after(retry_after)
                    .with_detail(format!("{client_ip} exceeded dynamic.deny_by_rate"))
            }
            Admission::Unavailable => {
                return Err(Refusal::new(Reason::StateUnavailable).with_detail(
                    "the state backend is unreachable and on_backend_error = \"closed\"",
                ));
            }
        };
        let refusal = refusal.with_action(self.config.dynamic.deny_action);
        if !self.config.dynamic.logging_only {
            return Err(refusal);
        }
        // logging_only: serve it, but log what would have happened.
        tracing::info!(client = %client_ip, reason = refusal.reason.slug(), status = refusal.status(), substatus = refusal.reason.substatus(), request_id = ex.request_id, "would refuse (dynamic.logging_only)");
        if let Some(r) = ex.record.as_mut() {
            r.would_refuse = Some(refusal.reason);
        }
        Ok(())
    }
}
