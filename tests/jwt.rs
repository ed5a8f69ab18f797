//! Bearer JWTs (`[auth.jwt]`) end to end: keys made by openssl (RSA, P-256, Ed25519), a JWKS
//! served over HTTP on loopback and rotated while the gateway runs, tokens signed here, and the
//! attacks a JWT verifier must refuse (alg none, HMAC with the public key, crit, another
//! audience or issuer, a tampered payload, an expired token).

mod util;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use util::*;

const ISSUER: &str = "https://id.example.test/";
const AUDIENCE: &str = "portcullis-tests";

struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    public_pem: Vec<u8>,
}

/// A private key made by openssl: `kind` is rsa, ec or ed25519.
fn signer(dir: &std::path::Path, kind: &str, kid: &str) -> Signer {
    let private = dir.join(format!("{kid}.pem"));
    let public = dir.join(format!("{kid}.pub.pem"));
    let args: Vec<&str> = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "ec" => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        _ => vec!["genpkey", "-algorithm", "ED25519"],
    };
    assert!(
        Command::new("openssl")
            .args(&args)
            .arg("-out")
            .arg(&private)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success()
    );
    let pem = std::fs::read(&private).unwrap();
    let (alg, key) = match kind {
        "rsa" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap()),
        "ec" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap()),
        _ => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem).unwrap()),
    };
    Signer {
        alg,
        kid: kid.to_owned(),
        key,
        public_pem: std::fs::read(&public).unwrap(),
    }
}

fn jwks(signers: &[&Signer]) -> String {
    let keys = signers
        .iter()
        .map(|s| {
            let mut jwk = Jwk::from_encoding_key(&s.key, s.alg).unwrap();
            jwk.common.key_id = Some(s.kid.clone());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(s: &Signer, claims: serde_json::Value) -> String {
    let mut header = Header::new(s.alg);
    header.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&header, &claims, &s.key).unwrap()
}

fn claims(user: &str, groups: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": user, "groups": groups,
        "iat": now(), "exp": now() + 300,
    })
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A static file server for the JWKS (Python's http.server on loopback).
struct Jwks {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Jwks {
    fn serve(body: &str) -> Jwks {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), body).unwrap();
        let port = free_port();
        // Its request log (stderr, unbuffered) counts the fetches.
        let log = std::fs::File::create(dir.path().join("requests.log")).unwrap();
        let child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(10),
        );
        Jwks {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}/jwks.json"),
        }
    }

    /// How many times the JWKS was asked for.
    fn fetches(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .matches("GET /jwks.json")
            .count()
    }

    fn replace(&self, body: &str) {
        std::fs::write(self.dir.path().join("jwks.json"), body).unwrap();
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn site(jwks_url: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let config = SiteConfig::new()
        .auth("schemes = [\"bearer\"]")
        .section(
            "auth.jwt",
            &format!(
                "issuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks = \"{jwks_url}\"\nleeway = \"0s\""
            ),
        )
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]\n")
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    (upstream, gw)
}

/// GET `path` with `Authorization: Bearer token`: status, reason, the Bearer challenge, and what
/// the application saw.
fn get(gw: &Gateway, path: &str, token: &str) -> (u16, String, String, serde_json::Value) {
    runtime().block_on(async {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(token)
            .header("accept", "application/problem+json")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let challenge = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        let reason = body["reason"].as_str().unwrap_or("").to_owned();
        (status, reason, challenge, body)
    })
}

#[test]
fn tokens_signed_by_the_issuers_keys_pass_with_their_user_and_groups() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, ec, ed) = (
        signer(keys.path(), "rsa", "rsa-1"),
        signer(keys.path(), "ec", "ec-1"),
        signer(keys.path(), "ed25519", "ed-1"),
    );
    let server = Jwks::serve(&jwks(&[&rsa, &ec, &ed]));
    let (_upstream, gw) = site(&server.url);
    for s in [&rsa, &ec, &ed] {
        let (status, _, _, seen) = get(&gw, "/x", &token(s, claims("alice", &["staff"])));
        assert_eq!(status, 200, "{:?}: {seen}", s.alg);
        assert_eq!(seen["headers"]["remote-user"], "alice");
        assert_eq!(seen["headers"]["remote-groups"], "staff");
        assert!(seen["headers"].get("authorization").is_none());
    }
    // Groups from the token decide the rules; a refused token is 403 insufficient_scope.
    assert_eq!(
        get(&gw, "/admin/x", &token(&rsa, claims("bob", &["admins"]))).0,
        200
    );
    let (status, reason, challenge, _) =
        get(&gw, "/admin/x", &token(&rsa, claims("carol", &["staff"])));
    assert_eq!((status, reason.as_str()), (403, "acl_denied"));
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );

    // The issuer rotates to a new key: a token naming it is accepted once the JWKS is fetched
    // again (for the unknown kid), without a restart.
    let rsa2 = signer(keys.path(), "rsa", "rsa-2");
    server.replace(&jwks(&[&rsa2]));
    let (status, _, _, seen) = get(&gw, "/x", &token(&rsa2, claims("dave", &[])));
    assert_eq!(status, 200, "{seen}");
}

#[test]
fn forged_expired_and_misdirected_tokens_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let rsa = signer(keys.path(), "rsa", "rsa-1");
    let server = Jwks::serve(&jwks(&[&rsa]));
    let (_upstream, gw) = site(&server.url);
    let refused = |t: &str, reason: &str| {
        let (status, got, challenge, body) = get(&gw, "/x", t);
        assert_eq!((status, got.as_str()), (401, reason), "{body}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        body
    };
    // Expired: token_expired, and the page says when.
    let mut c = claims("alice", &[]);
    c["exp"] = (now() - 60).into();
    let body = refused(&token(&rsa, c), "token_expired");
    assert!(
        body["detail"].as_str().unwrap().contains("It expired at"),
        "{body}"
    );
    // Another audience, another issuer, no exp.
    let mut c = claims("alice", &[]);
    c["aud"] = "someone-else".into();
    refused(&token(&rsa, c), "token_invalid");
    let mut c = claims("alice", &[]);
    c["iss"] = "https://evil.example/".into();
    refused(&token(&rsa, c), "token_invalid");
    let mut c = claims("alice", &[]);
    c.as_object_mut().unwrap().remove("exp");
    refused(&token(&rsa, c), "token_invalid");
    // A payload changed after signing.
    let good = token(&rsa, claims("alice", &[]));
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(&claims("admin", &["admins"]));
    parts[1] = &forged_payload;
    refused(&parts.join("."), "token_invalid");
    // alg none.
    let none_head = b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}));
    refused(
        &format!("{none_head}.{}.", b64(&claims("admin", &["admins"]))),
        "token_invalid",
    );
    // HS256 "signed" with the issuer's public key (the classic key-confusion attack).
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("admin", &["admins"]),
        &EncodingKey::from_secret(&rsa.public_pem).unwrap(),
    )
    .unwrap();
    refused(&hs, "token_invalid");
    // crit names an extension Portcullis does not understand.
    let crit_head =
        b64(&serde_json::json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}));
    let signed = token(&rsa, claims("alice", &[]));
    let rest: Vec<&str> = signed.splitn(2, '.').collect();
    refused(&format!("{crit_head}.{}", rest[1]), "token_invalid");
    // An unknown kid, after a refetch that does not have it either.
    let other = signer(keys.path(), "rsa", "not-published");
    refused(&token(&other, claims("alice", &[])), "token_invalid");
}

#[test]
fn check_config_refuses_hmac_and_plain_http_jwks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let (code, text) = check_config(
        dir.path(),
        &format!(
            "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth]\nschemes = [\"bearer\"]\nusers = \"users.htpasswd\"\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"a\"\njwks = \"http://id.example.com/jwks.json\"\nalgorithms = [\"HS256\", \"RS256\"]\n"
        ),
    );
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("auth.jwt.jwks") && text.contains("https://"),
        "{text}"
    );
    assert!(
        text.contains("auth.jwt.algorithms[0]") && text.contains("HMAC"),
        "{text}"
    );
}

#[test]
fn a_remembered_token_still_expires_at_its_exp() {
    let keys = tempfile::tempdir().unwrap();
    let rsa = signer(keys.path(), "rsa", "rsa-1");
    let server = Jwks::serve(&jwks(&[&rsa]));
    let (_upstream, gw) = site(&server.url);
    let mut c = claims("alice", &[]);
    c["exp"] = (now() + 2).into();
    let t = token(&rsa, c);
    assert_eq!(get(&gw, "/x", &t).0, 200);
    assert_eq!(get(&gw, "/x", &t).0, 200, "answered from memory");
    std::thread::sleep(Duration::from_millis(3100));
    let (status, reason, _, _) = get(&gw, "/x", &t);
    assert_eq!((status, reason.as_str()), (401, "token_expired"));
}

#[test]
fn a_failing_jwks_is_not_fetched_at_the_rate_of_requests_and_keys_marked_for_encryption_are_not_used()
 {
    let keys = tempfile::tempdir().unwrap();
    let rsa = signer(keys.path(), "rsa", "rsa-1");
    let server = Jwks::serve("not json");
    let (_upstream, gw) = site(&server.url);
    for _ in 0..30 {
        assert_eq!(get(&gw, "/x", &token(&rsa, claims("alice", &[]))).0, 401);
    }
    let fetches = server.fetches();
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} fetches for 30 requests"
    );

    // A key published for encryption (use: enc) does not verify signatures.
    let mut jwk = Jwk::from_encoding_key(&rsa.key, rsa.alg).unwrap();
    jwk.common.key_id = Some("rsa-1".into());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
    let enc = Jwks::serve(&serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap());
    let (_upstream2, gw2) = site(&enc.url);
    assert_eq!(get(&gw2, "/x", &token(&rsa, claims("alice", &[]))).0, 401);
}
