//! "Sign in with" an OpenID Connect provider (`schemes = [… "oidc"]`, `[oidc]`): the relying
//! party side of the authorization code flow with PKCE (S256), `state` and `nonce`.
//!
//! `{prefix}/oidc/login?rd=…` sends the browser to the provider's authorization endpoint; the
//! provider sends it back to `{public_url}{prefix}/oidc/callback?code&state`, where the code is
//! exchanged for an ID token (client secret, PKCE verifier) whose signature (the provider's
//! JWKS, fetched again for an unknown `kid`), issuer, audience, expiry and `nonce` are checked.
//! The user comes from `user_claim`, the groups from `groups_claim`; the result is the same
//! server-side session as the sign-in form's, carrying those groups.
//!
//! What ties the callback to the browser that started: a cookie (HttpOnly, SameSite=Lax, ten
//! minutes) holding the `state`, the `nonce`, the PKCE verifier and the return address, under
//! a MAC keyed by the secret every instance shares through the state store. The `state` in the
//! callback must equal the cookie's, the ID token's `nonce` too; the cookie is cleared by the
//! callback's answer, and the provider accepts a code once, so a replayed callback fails.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

use crate::pipeline::authenticate::jwt::{JwtRefusal, JwtSite};

/// The cookie that carries a sign-in in progress, over HTTPS (`__Host-`: no sibling subdomain can
/// plant one) and over plain HTTP.
pub const COOKIE_SECURE: &str = "__Host-portcullis-oidc";
/// See [`COOKIE_SECURE`].
pub const COOKIE: &str = "portcullis_oidc";

/// The flow cookie's name for a request over HTTPS or not.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { COOKIE_SECURE } else { COOKIE }
}

/// Error codes of RFC 6749 §4.1.2.1 and OpenID Connect Core §3.1.2.6: the only words of an
/// error answer shown when the provider left `state` out of it.
const KNOWN_ERRORS: &[&str] = &[
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
];
/// How long a sign-in at the provider may take.
const FLOW_TTL: u64 = 600;
/// Largest answer read from the provider (discovery, token).
const MAX_ANSWER: usize = 64 * 1024;
/// How long one call to the provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed discovery, how long before the provider is asked again.
const RETRY_DISCOVERY: Duration = Duration::from_secs(5);

/// What the provider's discovery document says (the parts used).
struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    id_tokens: JwtSite,
}

/// The `[oidc]` provider of one gateway.
pub(crate) struct OidcSite {
    config: config::Oidc,
    secret: String,
    redirect_uri: String,
    client: reqwest::Client,
    cookie_key: [u8; 32],
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
    failed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Why a sign-in with the provider did not end in a session.
#[derive(Debug)]
pub(crate) enum OidcFailure {
    /// The provider could not be asked (discovery, token endpoint, keys): 503.
    Unreachable(String),
    /// Refused: by the provider (its words in `note`), by `allowed_groups` (`forbidden`), or a
    /// callback that does not belong to this browser's sign-in (state, nonce, expired).
    Refused {
        /// For the operator's log.
        detail: String,
        /// What the person is told (escaped by the page), e.g. the provider's `error_description`.
        note: Option<String>,
        /// A 403 (signed in at the provider, but not allowed here) rather than a 401.
        forbidden: bool,
        /// The user, when known.
        user: Option<String>,
    },
}

fn refused(detail: impl Into<String>) -> OidcFailure {
    OidcFailure::Refused {
        detail: detail.into(),
        note: None,
        forbidden: false,
        user: None,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A query parameter, percent-decoded.
fn param(query: &str, name: &str) -> Option<String> {
    crate::portal::query_param(Some(query), name)
}

/// `text` made safe to show: control characters and bidirectional overrides out, at most 300
/// characters.
fn shown(text: &str) -> String {
    text.chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(*c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .take(300)
        .collect()
}

/// The sign-in in progress, as the cookie carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Flow {
    /// `state`.
    s: String,
    /// `nonce`.
    n: String,
    /// PKCE verifier.
    v: String,
    /// Where to go afterwards (same-origin path).
    r: String,
    /// SHA-256 (hex) of the browser's pre-session id: the callback must come from the browser
    /// that started (a flow cookie planted in another browser is worth nothing there).
    #[serde(default)]
    p: String,
    /// Unix expiry.
    e: u64,
}

impl OidcSite {
    /// The provider of `config` (`[oidc]`), answering at `public_url` + `prefix`; `secret` is
    /// the state store's shared secret (the cookie's MAC key comes from it).
    pub(crate) fn new(
        config: config::Oidc,
        public_url: &str,
        prefix: &str,
        shared_secret: &[u8],
    ) -> Result<OidcSite, String> {
        let secret = std::fs::read_to_string(&config.client_secret_file)
            .map_err(|e| {
                format!(
                    "oidc.client_secret_file: cannot read {}: {e}",
                    config.client_secret_file.display()
                )
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(shared_secret).expect("any key length");
        mac.update(b"portcullis oidc flow cookie");
        Ok(OidcSite {
            redirect_uri: format!("{}{prefix}/oidc/callback", public_url.trim_end_matches('/')),
            config,
            secret,
            client,
            cookie_key: mac.finalize().into_bytes().into(),
            provider: tokio::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
        })
    }

    /// The button's words ("Sign in with NAME").
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// `oidc.user_claim`.
    pub(crate) fn user_claim(&self) -> &str {
        &self.config.user_claim
    }

    /// Whether a session of an identity provider's user with `groups` may go on: `allowed_groups`
    /// checked again (it may have been tightened since the sign-in).
    pub(crate) fn admits(&self, groups: &[String]) -> bool {
        self.config.allowed_groups.is_empty()
            || groups
                .iter()
                .any(|g| self.config.allowed_groups.contains(g))
    }

    /// The provider's endpoints and keys, discovered once (again after a failure, at most every
    /// few seconds: a provider that does not answer is not asked at the rate of requests).
    async fn provider(&self) -> Result<Arc<Provider>, OidcFailure> {
        let mut held = self.provider.lock().await;
        if let Some(p) = held.as_ref() {
            return Ok(Arc::clone(p));
        }
        if let Some(at) = *self.failed.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < RETRY_DISCOVERY
        {
            return Err(OidcFailure::Unreachable(format!(
                "the identity provider {} did not answer its discovery document a moment ago",
                self.config.issuer
            )));
        }
        match self.discover().await {
            Ok(p) => {
                let p = Arc::new(p);
                *held = Some(Arc::clone(&p));
                tracing::info!(issuer = %self.config.issuer, "discovered the OpenID Connect provider");
                Ok(p)
            }
            Err(e) => {
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::time::Instant::now());
                tracing::warn!(issuer = %self.config.issuer, error = %e, "OpenID Connect discovery failed");
                Err(OidcFailure::Unreachable(e))
            }
        }
    }

    async fn discover(&self) -> Result<Provider, String> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let doc: serde_json::Value = self.get_json(&url).await?;
        let field = |name: &str| -> Result<String, String> {
            doc.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("the discovery document has no {name}"))
        };
        let issuer = field("issuer")?;
        if issuer.trim_end_matches('/') != self.config.issuer {
            return Err(format!(
                "the discovery document names the issuer {issuer:?}, not oidc.issuer ({:?})",
                self.config.issuer
            ));
        }
        // Endpoints on the issuer's scheme: an https provider's tokens never go over http.
        let https = self.config.issuer.starts_with("https://");
        let endpoint = |name: &str| -> Result<String, String> {
            let url = field(name)?;
            if https && !url.starts_with("https://") {
                return Err(format!(
                    "the discovery document's {name} is not https: {url}"
                ));
            }
            Ok(url)
        };
        let authorization_endpoint = endpoint("authorization_endpoint")?;
        let token_endpoint = endpoint("token_endpoint")?;
        let jwks_uri = endpoint("jwks_uri")?;
        let id_tokens = JwtSite::for_section(
            config::Jwt {
                issuer: issuer.clone(),
                audience: vec![self.config.client_id.clone()],
                jwks: config::JwksSource::Url(jwks_uri),
                algorithms: [
                    "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
                leeway: Duration::from_secs(60),
                user_claim: self.config.user_claim.clone(),
                groups_claim: self.config.groups_claim.clone(),
            },
            "oidc",
        )?;
        Ok(Provider {
            authorization_endpoint,
            token_endpoint,
            id_tokens,
        })
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        read_json(response).await
    }

    fn seal(&self, flow: &Flow) -> String {
        let payload = b64(&serde_json::to_vec(flow).unwrap_or_default());
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cookie_key).expect("any key length");
        mac.update(payload.as_bytes());
        format!("{payload}.{}", b64(&mac.finalize().into_bytes()))
    }

    fn open(&self, sealed: &str) -> Option<Flow> {
        let (payload, tag) = sealed.split_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cookie_key).expect("any key length");
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag).ok()?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Starts a sign-in returning to `rd` (already same-origin): the provider's authorization
    /// URL and the cookie value that remembers this sign-in.
    pub(crate) async fn start(
        &self,
        rd: &str,
        pre_session: &str,
    ) -> Result<(String, String), OidcFailure> {
        let provider = self.provider().await?;
        let random = || b64(&rand::random::<[u8; 32]>());
        let flow = Flow {
            s: random(),
            n: random(),
            v: random(),
            r: rd.to_owned(),
            e: unix_now() + FLOW_TTL,
            p: store::sha256_hex(pre_session.as_bytes()),
        };
        let challenge = b64(&Sha256::digest(flow.v.as_bytes()));
        let enc = crate::portal::encode;
        let separator = if provider.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={challenge}&code_challenge_method=S256",
            provider.authorization_endpoint,
            enc(&self.config.client_id),
            enc(&self.redirect_uri),
            enc(&self.config.scopes.join(" ")),
            flow.s,
            flow.n,
        );
        Ok((url, self.seal(&flow)))
    }

    /// Finishes a sign-in at the callback: `query` is the callback's query string, `cookie`
    /// the flow cookie the browser sent. The user, their groups and where to go.
    pub(crate) async fn finish(
        &self,
        query: &str,
        cookie: Option<&str>,
        pre_session: Option<&str>,
    ) -> Result<(String, Vec<String>, String), OidcFailure> {
        if query.len() > 8 * 1024 {
            return Err(refused("the callback's query is over 8 KiB"));
        }
        let flow = cookie.and_then(|c| self.open(c)).ok_or_else(|| {
            refused("the callback came without this browser's sign-in cookie (started elsewhere, expired, or replayed)")
        })?;
        if flow.e < unix_now() {
            return Err(refused(
                "the sign-in at the provider took longer than 10 minutes",
            ));
        }
        {
            use subtle::ConstantTimeEq as _;
            let browser = store::sha256_hex(pre_session.unwrap_or("").as_bytes());
            if pre_session.is_none() || !bool::from(browser.as_bytes().ct_eq(flow.p.as_bytes())) {
                return Err(refused(
                    "the callback's flow cookie was not made for this browser (its pre-session differs)",
                ));
            }
        }
        let state = param(query, "state");
        // Some providers leave `state` out of an error answer (RFC 6749 says to echo it): an
        // error without one still needs this browser's flow cookie, checked above.
        let error_without_state = state.is_none() && param(query, "error").is_some();
        if !error_without_state {
            use subtle::ConstantTimeEq as _;
            let state = state.unwrap_or_default();
            if !bool::from(state.as_bytes().ct_eq(flow.s.as_bytes())) {
                return Err(refused(
                    "the callback's state is not this browser's sign-in (tampered or mixed up)",
                ));
            }
        }
        if let Some(error) = param(query, "error") {
            // Without `state` nothing proves the provider wrote this: only a known error code is
            // shown, never a description (someone else's words on this site's page).
            let description = if error_without_state {
                String::new()
            } else {
                param(query, "error_description").unwrap_or_default()
            };
            let code = if error_without_state && !KNOWN_ERRORS.contains(&error.as_str()) {
                "an error".to_owned()
            } else {
                shown(&error)
            };
            let words = if description.is_empty() {
                code
            } else {
                format!("{} ({code})", shown(&description))
            };
            return Err(OidcFailure::Refused {
                detail: format!("the identity provider refused: {words}"),
                note: Some(format!("{} said: {words}", self.config.name)),
                forbidden: false,
                user: None,
            });
        }
        let code = param(query, "code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| refused("the callback has neither a code nor an error"))?;
        let provider = self.provider().await?;
        let id_token = self.exchange(&provider, &code, &flow.v).await?;
        let (claims, _) =
            provider
                .id_tokens
                .verify_claims(&id_token)
                .await
                .map_err(|e| match e {
                    JwtRefusal::Expired(_) => refused("the ID token has expired"),
                    // No keys at all: the provider's JWKS did not answer, not a bad token.
                    JwtRefusal::Invalid(why) if !provider.id_tokens.has_keys() => {
                        OidcFailure::Unreachable(format!(
                            "the identity provider's keys (JWKS) could not be fetched: {why}"
                        ))
                    }
                    JwtRefusal::Invalid(why) => refused(format!("the ID token: {why}")),
                })?;
        let nonce = claims.get("nonce").and_then(|n| n.as_str()).unwrap_or("");
        {
            use subtle::ConstantTimeEq as _;
            if !bool::from(nonce.as_bytes().ct_eq(flow.n.as_bytes())) {
                return Err(refused(
                    "the ID token's nonce is not this sign-in's (a replayed or substituted token)",
                ));
            }
        }
        let (user, groups) = provider.id_tokens.identity(&claims).map_err(|e| match e {
            JwtRefusal::Invalid(why) => refused(why),
            JwtRefusal::Expired(_) => refused("the ID token has expired"),
        })?;
        if !self.config.allowed_groups.is_empty()
            && !groups
                .iter()
                .any(|g| self.config.allowed_groups.contains(g))
        {
            return Err(OidcFailure::Refused {
                detail: format!(
                    "{user} signed in at the identity provider but is in none of oidc.allowed_groups ({})",
                    self.config.allowed_groups.join(", ")
                ),
                note: Some(format!(
                    "You signed in at {} as {user}, but this site admits only members of: {}.",
                    self.config.name,
                    self.config.allowed_groups.join(", ")
                )),
                forbidden: true,
                user: Some(user),
            });
        }
        Ok((user, groups, flow.r))
    }

    /// The token request: the code and the PKCE verifier for an ID token.
    async fn exchange(
        &self,
        provider: &Provider,
        code: &str,
        verifier: &str,
    ) -> Result<String, OidcFailure> {
        let enc = crate::portal::encode;
        let body = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}&client_id={}",
            enc(code),
            enc(&self.redirect_uri),
            enc(verifier),
            enc(&self.config.client_id)
        );
        // client_secret_basic: both parts form-encoded first (RFC 6749 §2.3.1).
        let response = self
            .client
            .post(&provider.token_endpoint)
            .basic_auth(enc(&self.config.client_id), Some(enc(&self.secret)))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                OidcFailure::Unreachable(format!("the token endpoint did not answer: {e}"))
            })?;
        let status = response.status();
        let answer = read_json(response).await.map_err(|e| {
            if status.is_client_error() {
                refused(format!(
                    "the token endpoint refused the code ({status}): {e}"
                ))
            } else {
                OidcFailure::Unreachable(format!("the token endpoint: {e}"))
            }
        })?;
        if status.is_server_error() {
            return Err(OidcFailure::Unreachable(format!(
                "the token endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            let error = answer.get("error").and_then(|e| e.as_str()).unwrap_or("");
            let description = answer
                .get("error_description")
                .and_then(|e| e.as_str())
                .unwrap_or("");
            return Err(refused(format!(
                "the token endpoint refused the code ({status}): {} {}",
                shown(error),
                shown(description)
            )));
        }
        answer
            .get("id_token")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                refused(
                    "the token endpoint's answer has no id_token (is \"openid\" in oidc.scopes?)",
                )
            })
    }
}

/// A JSON answer of at most [`MAX_ANSWER`] bytes.
async fn read_json(mut response: reqwest::Response) -> Result<serde_json::Value, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer is over {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}
