//! Bearer JWTs from an identity provider (`[auth.jwt]`): signed by a key of the issuer's JWKS
//! (a URL, fetched again — at most once every 10 s — when a token names a key it does not hold,
//! so the issuer can rotate keys; or a file), with one of the configured asymmetric algorithms
//! (never `none`, never HMAC: a public key must not become a shared secret), the configured
//! issuer and one of the audiences, within `exp`/`nbf` plus `leeway`. A token whose header has
//! `crit` names extensions Portcullis does not understand, so it is refused (RFC 7515 §4.1.11).

use std::str::FromStr as _;

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::*;

/// How often an unknown `kid` may make Portcullis fetch the JWKS again.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long a verified token is remembered (never past its `exp`): a signature check costs
/// tens of microseconds (RSA), a repeated token a SHA-256.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Longest wait for the JWKS.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a JWKS URL is fetched again anyway (a key the issuer withdrew stops working).
const REFRESH_ANYWAY: Duration = Duration::from_secs(600);

/// A key of the JWKS.
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when the JWKS names one: a token must use it.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// `[auth.jwt]` for one gateway.
pub(crate) struct JwtSite {
    config: config::Jwt,
    /// The config section it comes from, for messages: `auth.jwt`, or `oidc` for ID tokens.
    section: &'static str,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<Vec<Key>>,
    refresh: store::Throttle,
    /// The periodic fetch of a URL source.
    refresh_anyway: store::Throttle,
    /// A fetch was tried (the first one does not wait for the throttle).
    tried: std::sync::atomic::AtomicBool,
    fetching: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    /// Tokens verified lately, by their SHA-256: the user, the groups, `exp`.
    verified: moka::sync::Cache<[u8; 32], std::sync::Arc<Verified>>,
}

/// A verified token: its user, its groups, its `exp`.
type Verified = (String, Vec<String>, i64);

/// Why a JWT was refused.
pub(crate) enum JwtRefusal {
    /// Past `exp` (unix seconds) plus the leeway.
    Expired(Option<i64>),
    /// Anything else, said in the operator's words.
    Invalid(String),
}

fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys: Vec<Key> = set
        .keys
        .iter()
        // A key published for encryption is not a signing key.
        .filter(|jwk| {
            !matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                    | Some(jsonwebtoken::jwk::PublicKeyUse::Other(_))
            )
        })
        .filter_map(|jwk| {
            let alg = match &jwk.common.key_algorithm {
                None => None,
                Some(a) => Some(Algorithm::from_str(&format!("{a:?}")).ok()?),
            };
            DecodingKey::from_jwk(jwk).ok().map(|key| Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("the JWKS has no usable key".into());
    }
    Ok(keys)
}

impl JwtSite {
    pub(crate) fn new(config: config::Jwt) -> Result<JwtSite, String> {
        Self::for_section(config, "auth.jwt")
    }

    /// [`JwtSite::new`] for tokens configured in `section` (named in messages).
    pub(crate) fn for_section(
        config: config::Jwt,
        section: &'static str,
    ) -> Result<JwtSite, String> {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .collect();
        let keys = match &config.jwks {
            config::JwksSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            config::JwksSource::Url(_) => Vec::new(),
        };
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(JwtSite {
            section,
            config,
            algorithms,
            keys: ArcSwap::from_pointee(keys),
            refresh: store::Throttle::new(REFRESH_EVERY),
            refresh_anyway: store::Throttle::new(REFRESH_ANYWAY),
            tried: std::sync::atomic::AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
            client,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    /// Whether any signing key is held (none: the JWKS was never fetched, or had none).
    pub(crate) fn has_keys(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// Fetches the JWKS again (a URL source): the very first time at once, then at most once per
    /// [`REFRESH_EVERY`] whatever the outcome — a failing or slow provider is not asked at the
    /// rate of requests — and one fetch at a time: requests that wait for it do not fetch again.
    async fn refresh(&self) {
        let config::JwksSource::Url(url) = &self.config.jwks else {
            return;
        };
        let _one = self.fetching.lock().await;
        let first = !self.tried.swap(true, std::sync::atomic::Ordering::Relaxed);
        if !first && !self.refresh.due() {
            return;
        }
        let fetched = async {
            let response = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let text = response.text().await.map_err(|e| e.to_string())?;
            parse_jwks(&text)
        }
        .await;
        match fetched {
            Ok(keys) => {
                tracing::info!(
                    url,
                    keys = keys.len(),
                    "fetched the JWKS of {}",
                    self.section
                );
                self.keys.store(std::sync::Arc::new(keys));
                // Tokens verified with a key that is gone must be checked again.
                self.verified.invalidate_all();
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "cannot fetch the JWKS of {}; keeping the keys held", self.section)
            }
        }
    }

    /// Checks `token`; the user and groups of a valid one. A token verified within the last
    /// minute is answered from memory until its `exp`.
    pub(crate) async fn verify(&self, token: &str) -> Result<(String, Vec<String>), JwtRefusal> {
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        if let Some(hit) = self.verified.get(&digest) {
            let now = i64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )
            .unwrap_or(i64::MAX);
            let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(0);
            if hit.2.saturating_add(leeway) > now {
                return Ok((hit.0.clone(), hit.1.clone()));
            }
            self.verified.invalidate(&digest);
            return Err(JwtRefusal::Expired(Some(hit.2)));
        }
        let verified = self.verify_signed(token).await?;
        let result = (verified.0.clone(), verified.1.clone());
        self.verified.insert(digest, std::sync::Arc::new(verified));
        Ok(result)
    }

    /// The full check: header, key, signature, claims; the user, groups and `exp`.
    async fn verify_signed(&self, token: &str) -> Result<Verified, JwtRefusal> {
        let (claims, exp) = self.verify_claims(token).await?;
        let (user, groups) = self.identity(&claims)?;
        Ok((user, groups, exp))
    }

    /// Header, key, signature, issuer, audience, expiry: the claims of a valid token and its
    /// `exp` (an OpenID Connect ID token is checked this way, then its `nonce`).
    pub(crate) async fn verify_claims(
        &self,
        token: &str,
    ) -> Result<(serde_json::Value, i64), JwtRefusal> {
        let invalid = |why: &str| JwtRefusal::Invalid(why.to_owned());
        let mut parts = token.split('.');
        let (Some(head), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a JWT (three base64url parts)"));
        };
        let raw_head = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| invalid("the JWT header is not base64url"))?;
        let head_json: serde_json::Value =
            serde_json::from_slice(&raw_head).map_err(|_| invalid("the JWT header is not JSON"))?;
        if head_json.get("crit").is_some() {
            return Err(invalid(
                "the JWT header has crit: extensions Portcullis does not understand",
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtRefusal::Invalid(format!("the JWT header: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtRefusal::Invalid(format!(
                "the JWT is signed with {:?}, which {}.algorithms does not list",
                header.alg, self.section
            )));
        }
        // The first request fetches; afterwards the keys are fetched again every 10 minutes (the
        // first `due` is the first request's, so it does not add a fetch of its own).
        let periodic = self.refresh_anyway.due();
        if periodic || self.keys.load().is_empty() {
            self.refresh().await;
        }
        let key = match self.find(header.kid.as_deref(), header.alg) {
            Some(k) => k,
            None => {
                // An unknown kid: the issuer may have rotated its keys.
                self.refresh().await;
                self.find(header.kid.as_deref(), header.alg)
                    .ok_or_else(|| {
                        JwtRefusal::Invalid(format!(
                            "no key of the JWKS has the kid {:?}",
                            header.kid.as_deref().unwrap_or("")
                        ))
                    })?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audience);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    JwtRefusal::Expired(expiry(token))
                }
                other => JwtRefusal::Invalid(format!("the JWT: {other:?}")),
            },
        )?;
        let claims = data.claims;
        // `exp` is required and was checked: a number (an integer, or a float some issuers send).
        #[allow(clippy::cast_possible_truncation)]
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .unwrap_or(0);
        Ok((claims, exp))
    }

    /// The user (`user_claim`) and groups (`groups_claim`) of verified claims.
    pub(crate) fn identity(
        &self,
        claims: &serde_json::Value,
    ) -> Result<(String, Vec<String>), JwtRefusal> {
        let user = claims
            .get(&self.config.user_claim)
            .and_then(|v| v.as_str())
            // Spaces at the ends would make a second spelling of a name ("alice ").
            .filter(|u| policy::check_user_name(u).is_ok() && !u.is_empty() && u.trim() == *u)
            .ok_or_else(|| {
                JwtRefusal::Invalid(format!(
                    "the JWT has no usable {} claim ({}.user_claim)",
                    self.config.user_claim, self.section
                ))
            })?
            .to_owned();
        let groups = match claims.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|g| g.as_str())
                .filter(|g| {
                    !g.is_empty()
                        && !g.contains(',')
                        && g.trim() == *g
                        && !g.chars().any(char::is_control)
                })
                .map(str::to_owned)
                .collect(),
            Some(serde_json::Value::String(g)) => g
                .split([' ', ','])
                .filter(|g| !g.is_empty() && !g.chars().any(char::is_control))
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok((user, groups))
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.load();
        let fits = |k: &Key| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .filter(|k| fits(k))
                .map(|k| k.key.clone()),
            // No kid: only when the set has a single key.
            None if keys.len() == 1 && fits(&keys[0]) => Some(keys[0].key.clone()),
            None => None,
        }
    }
}

/// The `exp` of a token (already verified, or refused: only for the page's wording).
fn expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()?
        .get("exp")?
        .as_i64()
}

impl Gateway {
    pub(super) async fn jwt(
        &self,
        site: &JwtSite,
        ex: &mut Exchange<'_>,
        token: &str,
    ) -> Result<Identity, Refusal> {
        match site.verify(token).await {
            Ok((user, groups)) => {
                self.metrics.auth("bearer", AuthOutcome::Accepted);
                if let Some(r) = ex.record.as_mut() {
                    r.username = Some(user.clone());
                }
                ex.user.from_token = true;
                let mut identity = Identity::user(&user);
                identity.groups = groups;
                Ok(identity)
            }
            Err(JwtRefusal::Expired(at)) => {
                self.metrics.auth("bearer", AuthOutcome::Refused);
                let when = at
                    .and_then(|t| u64::try_from(t).ok())
                    .map(|t| {
                        humantime::format_rfc3339_seconds(
                            SystemTime::UNIX_EPOCH + Duration::from_secs(t),
                        )
                        .to_string()
                    })
                    .unwrap_or_else(|| "an unknown time".into());
                Err(Refusal::new(Reason::TokenExpired)
                    .with_detail(format!("the JWT expired at {when}"))
                    .with_note(format!("It expired at {when}.")))
            }
            Err(JwtRefusal::Invalid(why)) => {
                self.metrics.auth("bearer", AuthOutcome::Refused);
                Err(Refusal::new(Reason::TokenInvalid).with_detail(why))
            }
        }
    }
}
