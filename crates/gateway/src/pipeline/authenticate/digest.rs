//! Digest (RFC 7616) against an htdigest file. Nonces are stateless — the time they were made,
//! 8 random bytes and a MAC keyed by the state store's shared secret, so any instance sharing
//! `[state]` accepts another's — and expire after `nonce_ttl`; each nonce's count (`nc`) is kept
//! in the state store, so a request replayed (same nonce, same or lower count) is refused. The
//! `uri` the client signed must be the request-target it sent: what is judged is what was
//! signed. Failures count toward the `[logon]` lockout like wrong passwords.

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use policy::{DigestAlgorithm, DigestResponse};
use sha2::Sha256;
use store::htdigest::{DigestStore, expected_response, responses_match};

use super::*;

/// Digest for one gateway: its users, settings and keys.
pub(crate) struct DigestSite {
    store: DigestStore,
    config: config::Digest,
    /// Signs nonces (keyed by a key derived from the state store's shared secret; cloned per
    /// use, so the key schedule is paid once).
    nonce_mac: Hmac<Sha256>,
    /// The `opaque` of every challenge (the same for every instance sharing the secret).
    opaque: String,
}

impl DigestSite {
    pub(crate) fn new(
        config: config::Digest,
        site: &Config,
        state: &StateStore,
    ) -> Result<DigestSite, String> {
        let realm = site.auth.realm.as_str();
        let store = match (&config.users, &site.auth.users) {
            (Some(path), _) => {
                DigestStore::open(path, realm).map_err(|e| format!("{}: {e}", path.display()))?
            }
            (None, config::UserSource::Sqlite(db)) => {
                DigestStore::open_db(db, realm).map_err(|e| format!("{}: {e}", db.display()))?
            }
            (None, _) => return Err("no htdigest file and no user database".into()),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&state.secret()).expect("any key length");
        mac.update(b"portcullis digest nonce key");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(b"opaque");
        mac.update(realm.as_bytes());
        let opaque = store::hex(&mac.finalize().into_bytes()[..8]);
        Ok(DigestSite {
            store,
            config,
            nonce_mac: Hmac::<Sha256>::new_from_slice(&key).expect("any key length"),
            opaque,
        })
    }

    fn mac(&self, issued: u64, salt: &[u8]) -> [u8; 16] {
        let mut mac = self.nonce_mac.clone();
        mac.update(&issued.to_be_bytes());
        mac.update(salt);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A new nonce: base64url(issued seconds ‖ 8 random bytes ‖ MAC).
    fn nonce(&self, now: u64) -> String {
        let salt: [u8; 8] = rand::random();
        let mut raw = Vec::with_capacity(32);
        raw.extend_from_slice(&now.to_be_bytes());
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&self.mac(now, &salt));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// When a nonce of ours was issued; `None` for anything else.
    fn issued(&self, nonce: &str) -> Option<u64> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()?;
        if raw.len() != 32 {
            return None;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let expected = self.mac(issued, &raw[8..16]);
        use subtle::ConstantTimeEq as _;
        bool::from(expected.ct_eq(&raw[16..32])).then_some(issued)
    }

    /// One challenge per algorithm, SHA-256 first, each with a fresh nonce; `stale` after a right
    /// response to an expired nonce.
    pub(crate) fn challenges(&self, realm: &str, stale: bool) -> Vec<HeaderValue> {
        let now = unix_now();
        // Escaped as a quoted-string: the client echoes the realm unescaped, as it is compared.
        let realm = realm.replace('\\', "\\\\").replace('"', "\\\"");
        self.config
            .algorithms
            .iter()
            .filter_map(|a| {
                HeaderValue::from_str(&format!(
                    "Digest realm=\"{realm}\", qop=\"auth\", algorithm={}, nonce=\"{}\", opaque=\"{}\", charset=UTF-8, userhash=true{}",
                    a.name(),
                    self.nonce(now),
                    self.opaque,
                    if stale { ", stale=true" } else { "" }
                ))
                .ok()
            })
            .collect()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Gateway {
    pub(super) async fn digest(
        &self,
        ex: &mut Exchange<'_>,
        d: &DigestResponse,
    ) -> Result<Identity, Refusal> {
        let Some(site) = &self.digest else {
            return Err(Refusal::new(Reason::NoCredentials)
                .with_detail("the Digest scheme is not enabled for this site"));
        };
        let refused = |detail: String| Refusal::new(Reason::LogonFailed).with_detail(detail);
        if !site.config.algorithms.contains(&d.algorithm) {
            return Err(refused(format!(
                "the Digest algorithm {} is not offered (auth.digest.algorithms)",
                d.algorithm.name()
            )));
        }
        if d.realm != self.policy.auth.realm {
            return Err(refused(format!(
                "the Digest response is for the realm {:?}, not this site's",
                d.realm
            )));
        }
        if d.qop != "auth" {
            return Err(refused(format!(
                "the Digest qop {:?} is not offered",
                d.qop
            )));
        }
        // What the client signed must be what is judged and forwarded: the request-target as
        // sent (an absolute-form target may be signed whole).
        let target = ex.request.path_and_query;
        let signed = d.uri == target
            || d.uri
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme().is_some())
                .and_then(|u| u.path_and_query().map(|p| p.as_str() == target))
                .unwrap_or(false);
        if !signed {
            return Err(Refusal::new(Reason::BadRequest).with_detail(format!(
                "the Digest uri {:?} is not the request-target {target:?}",
                d.uri
            )));
        }
        let users = site.store.users();
        let user = if d.userhash {
            users
                .by_userhash(d.algorithm, &d.username)
                .map(str::to_owned)
        } else {
            Some(d.username.clone())
        };
        let shown = user.clone().unwrap_or_else(|| d.username.clone());
        if policy::check_user_name(&shown).is_err() {
            return Err(Refusal::new(Reason::BadRequest)
                .with_detail("the Digest username is too long or has control characters"));
        }
        if let Some(r) = ex.record.as_mut() {
            r.username = Some(shown.clone());
        }
        let client_ip = ex.client.ip;
        let logon = self.logon();
        if self.config.logon.enabled {
            logon
                .check_not_locked_out(client_ip, &shown, "digest")
                .await?;
        }
        // Digest cannot carry a second factor, and a disabled user of the database stays out
        // whatever an htdigest file says: both are refused as a wrong password is.
        if let Some(u) = user.as_deref()
            && (self.verifier.has_second_factor(u).await || !self.verifier.is_enabled_user(u))
        {
            logon
                .refused_without_hash(client_ip, &shown, "digest")
                .await;
            return Err(refused(format!(
                "{u} has a second factor or is disabled: Digest cannot sign them in"
            )));
        }
        let ha1 = user.as_deref().and_then(|u| users.ha1(u, d.algorithm));
        // An unknown user costs the same hashes as a known one.
        let dummy;
        let ha1 = match ha1 {
            Some(h) => h,
            None => {
                dummy = "0".repeat(match d.algorithm {
                    DigestAlgorithm::Md5 => 32,
                    DigestAlgorithm::Sha256 => 64,
                });
                &dummy
            }
        };
        let expected = expected_response(
            d.algorithm,
            ha1,
            ex.request.method,
            &d.uri,
            &d.nonce,
            &d.nc_text,
            &d.cnonce,
            &d.qop,
        );
        let right = responses_match(&expected, &d.response) && user.is_some();
        let now = unix_now();
        // A nonce from the future (another instance's clock, or a forgery) is not ours.
        let issued = site.issued(&d.nonce).filter(|&t| t <= now + 1);
        if !right || issued.is_none() {
            logon
                .refused_without_hash(client_ip, &shown, "digest")
                .await;
            return Err(refused(if issued.is_none() {
                "the Digest nonce was not issued by this site".into()
            } else {
                "the Digest response does not match (wrong password or unknown user)".into()
            }));
        }
        let issued = issued.unwrap_or(0);
        let ttl = site.config.nonce_ttl;
        if now.saturating_sub(issued) > ttl.as_secs() {
            return Err(Refusal::new(Reason::StaleNonce).with_detail(format!(
                "the Digest response is right but its nonce is older than auth.digest.nonce_ttl ({})",
                humantime::format_duration(ttl)
            )));
        }
        // Each count once per nonce: one seen before is a replay. The counts are kept for as long
        // as the nonce is accepted (to its issue second + ttl, and a second of rounding), not
        // from their first use: a record gone before its nonce would let a replay through.
        let keep = Duration::from_secs((issued + ttl.as_secs() + 2).saturating_sub(now).max(1));
        let counted = self.state.nonce_count(&d.nonce, d.nc, keep).await;
        self.metrics.state_call(&self.state, counted.is_ok());
        match counted {
            Ok(true) => {}
            Ok(false) => {
                self.metrics.auth("digest", AuthOutcome::Refused);
                self.audit
                    .sign_in(false, &shown, client_ip, "digest", Some("nonce_replayed"));
                return Err(refused(format!(
                    "the Digest nonce count {} was used before with this nonce (a replayed request)",
                    d.nc_text
                )));
            }
            Err(e) if self.config.state.on_backend_error == FailMode::Closed => {
                return Err(Refusal::new(Reason::StateUnavailable)
                    .with_detail(format!("the Digest nonce count could not be checked: {e}")));
            }
            Err(e) => {
                tracing::error!(error = %e, "Digest nonce count not checked (on_backend_error = \"open\")");
            }
        }
        let user = user.unwrap_or_default();
        // Guesses sent in parallel all pass the first ban check: a right one among them after a
        // ban started must not get in (checked on a client's first success, as for Basic).
        if self.config.logon.enabled && !logon.is_known(client_ip, &user) {
            logon
                .check_still_not_locked_out(client_ip, &user, "digest")
                .await?;
        }
        logon.accepted_without_hash(client_ip, &user, "digest");
        let mut identity = Identity::user(&user);
        logon.describe(&mut identity, &user).await?;
        Ok(identity)
    }
}
