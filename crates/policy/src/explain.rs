//! `portcullis explain` and the trace on detailed error pages: run the pure phases over given
//! facts and say, phase by phase, what decided and where in the config it is.

use std::net::IpAddr;

use crate::{AuthStep, Decision, Identity, Phase, Policy, Reason, Refusal, Trace, client_addr};

/// What is known about a request, for an explanation.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The socket peer.
    pub peer: IpAddr,
    /// Raw `Forwarded` values.
    pub forwarded: Vec<&'a [u8]>,
    /// Raw `X-Forwarded-For` values.
    pub x_forwarded_for: Vec<&'a [u8]>,
    /// The verified host name of the client, if one was looked up.
    pub host_name: Option<String>,
    /// Method.
    pub method: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// The signed-in identity, if any (explain assumes the password was right).
    pub identity: Option<Identity>,
    /// The request really happened (the trace of a detailed refusal page): the phases before
    /// the refusing one passed, and the trace says so instead of what `explain` assumes.
    pub live: bool,
}

/// Runs phases 2, 3, 5 and 6 over `facts` and records each verdict.
pub fn explain(policy: &Policy, facts: &Facts<'_>) -> (Trace, Decision) {
    let mut trace = Trace::default();
    let refuse = |mut trace: Trace, phase: Phase, r: Refusal| {
        trace.record(
            phase,
            format!(
                "REFUSED {}.{} {}: {}",
                r.status(),
                r.reason.substatus(),
                r.reason.slug(),
                r.detail
            ),
        );
        (trace, Decision::Refuse(r))
    };

    let client = match client_addr(
        facts.peer,
        &policy.trusted_proxies,
        &facts.forwarded,
        &facts.x_forwarded_for,
    ) {
        Ok(c) => c,
        Err(r) => return refuse(trace, Phase::Client, r),
    };
    trace.record(
        Phase::Client,
        format!("client address {} (from {:?})", client.ip, client.source),
    );

    match policy.ip.check_address(client.ip) {
        Ok(why) => trace.record(Phase::Ip, why.to_string()),
        Err(r) => return refuse(trace, Phase::Ip, r),
    }
    if policy.ip.needs_host_name() {
        match policy.ip.check_host(client.ip, facts.host_name.as_deref()) {
            Ok(why) => trace.record(Phase::Ip, why),
            Err(r) => return refuse(trace, Phase::Ip, r),
        }
    }
    trace.record(
        Phase::Dynamic,
        if facts.live {
            "passed: within the limits (or none are set)"
        } else {
            "not evaluated here: limits depend on live traffic"
        },
    );

    let path = policy.normalize(facts.path);
    let identity = match (&facts.identity, policy.auth.authenticate(&path, None)) {
        (_, AuthStep::Public(pattern)) => {
            trace.record(
                Phase::Authenticate,
                format!("public path: matches auth.public \"{pattern}\"; no sign-in, the request is anonymous"),
            );
            Identity::anonymous()
        }
        (Some(id), _) => {
            trace.record(
                Phase::Authenticate,
                format!(
                    "{} {} (groups: {})",
                    if facts.live {
                        "signed in as"
                    } else {
                        "assumed signed in as"
                    },
                    id.user.as_deref().unwrap_or("-"),
                    if id.groups.is_empty() {
                        "none".into()
                    } else {
                        id.groups.join(", ")
                    }
                ),
            );
            id.clone()
        }
        (None, _) => {
            let r = Refusal::new(Reason::NoCredentials)
                .with_detail("no user given (use --user to explain a signed-in request)");
            return refuse(trace, Phase::Authenticate, r);
        }
    };

    match policy.rules.authorize(&path, facts.method, &identity) {
        Ok(v) => trace.record(Phase::Authorize, v.to_string()),
        Err(r) => return refuse(trace, Phase::Authorize, r),
    }
    trace.record(
        Phase::Filter,
        if facts.live {
            "passed: the filter allowed the request (or none is set)"
        } else {
            "not called by explain"
        },
    );
    trace.record(
        Phase::Proxy,
        format!("forwarded to the upstream as {} {}", facts.method, path),
    );
    (trace, Decision::Allow(identity))
}
