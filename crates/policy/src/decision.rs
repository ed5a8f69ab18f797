//! The outcome of running the policy over one request, and the trace of how it was reached.

use crate::{Phase, Refusal};

/// Who the request is from, as handed to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The signed-in user; `None` for anonymous requests to public paths.
    pub user: Option<String>,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The user's e-mail address, when the user store knows it (a directory).
    pub email: Option<String>,
    /// The user's display name, when the user store knows it (a directory).
    pub name: Option<String>,
}

impl Identity {
    /// An anonymous identity.
    pub fn anonymous() -> Identity {
        Identity::default()
    }

    /// A signed-in user without groups.
    pub fn user(name: &str) -> Identity {
        Identity {
            user: Some(name.to_owned()),
            ..Identity::default()
        }
    }
}

/// The policy's verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through, with this identity.
    Allow(Identity),
    /// Refuse it.
    Refuse(Refusal),
}

/// One phase's verdict, for `explain` and the detailed error page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// The phase.
    pub phase: Phase,
    /// What it decided and why, in words.
    pub verdict: String,
}

/// The verdicts of the phases that ran, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace(pub Vec<TraceEntry>);

impl Trace {
    /// Records a phase's verdict.
    pub fn record(&mut self, phase: Phase, verdict: impl Into<String>) {
        self.0.push(TraceEntry {
            phase,
            verdict: verdict.into(),
        });
    }
}
