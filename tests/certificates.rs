//! Client certificates end to end: a CA, client certificates and a CRL made by openssl (`openssl
//! req`, `openssl ca`: valid, expired, revoked, from another CA), presented by curl, refused with
//! IIS's sub-statuses as pages, not TLS alerts.

mod util;

use std::path::Path;
use std::process::Command;

use util::*;

/// Makes everything in `dir` with openssl: `server.{crt,key}`, `ca.crt`, `crl.pem`, and client
/// `alice` (valid), `old` (expired), `bob` (revoked), `eve` (another CA) as `NAME.{crt,key}`.
fn make_pki(dir: &Path) {
    let script = r#"
set -e
cd "$1"
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -keyout server.key -out server.crt -subj /CN=127.0.0.1 -days 2 -addext subjectAltName=IP:127.0.0.1
ec -x509 -keyout ca.key -out ca.crt -subj "/CN=Test client CA" -days 30 \
   -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ec -x509 -keyout other.key -out other.crt -subj "/CN=Another CA" -days 30 \
   -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
mkdir -p newcerts && : > index.txt && echo 1000 > serial && echo 1000 > crlnumber
cat > ca.cnf <<CNF
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = .
database = ./index.txt
new_certs_dir = ./newcerts
certificate = ./ca.crt
private_key = ./ca.key
serial = ./serial
crlnumber = ./crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
x509_extensions = usr_cert
unique_subject = no
[ policy_any ]
commonName = supplied
emailAddress = optional
[ usr_cert ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = email:copy
CNF
for who in alice old bob; do
  ec -keyout $who.key -out $who.csr -subj "/CN=$who/emailAddress=$who@example.test"
done
openssl ca -batch -config ca.cnf -in alice.csr -out alice.crt 2>/dev/null
openssl ca -batch -config ca.cnf -in bob.csr -out bob.crt 2>/dev/null
openssl ca -batch -config ca.cnf -in old.csr -out old.crt -startdate 20200101000000Z -enddate 20200201000000Z 2>/dev/null
openssl ca -config ca.cnf -revoke bob.crt 2>/dev/null
openssl ca -config ca.cnf -gencrl -out crl.pem 2>/dev/null
ec -keyout eve.key -out eve.csr -subj /CN=eve
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > eve.ext
openssl x509 -req -in eve.csr -CA other.crt -CAkey other.key -CAcreateserial -out eve.crt -days 5 -extfile eve.ext 2>/dev/null
"#;
    let status = Command::new("bash")
        .args(["-c", script, "pki"])
        .arg(dir)
        .status()
        .expect("bash and openssl");
    assert!(status.success(), "making the test PKI");
}

fn site(client_auth: &str, extra_auth: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let dir = dir_with_user("carol", "carol-pw");
    make_pki(dir.path());
    let config = SiteConfig::new()
        .server(&format!(
            "tls = {{ cert = \"server.crt\", key = \"server.key\", client_ca = \"ca.crt\", crl = \"crl.pem\", client_auth = \"{client_auth}\" }}"
        ))
        .auth(&format!("public = [\"/public/**\"]\n{extra_auth}"))
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    (upstream, gw)
}

/// curl over TLS to `path` with `who`'s certificate (or none) and Basic credentials (or none);
/// the caller adds its own options.
fn curl_cmd(gw: &Gateway, path: &str, who: Option<&str>, basic: Option<&str>) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k"]);
    if let Some(who) = who {
        cmd.arg("--cert")
            .arg(gw.path(&format!("{who}.crt")))
            .arg("--key")
            .arg(gw.path(&format!("{who}.key")));
    }
    if let Some(b) = basic {
        cmd.args(["-u", b]);
    }
    cmd.arg(gw.url(path).replacen("http://", "https://", 1));
    cmd
}

/// curl over TLS with `who`'s certificate (or none): status and body (problem+json or the app's).
fn curl(
    gw: &Gateway,
    path: &str,
    who: Option<&str>,
    basic: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut cmd = curl_cmd(gw, path, who, basic);
    cmd.args([
        "-H",
        "accept: application/problem+json",
        "-w",
        "\n%{http_code}",
    ]);
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn a_valid_certificate_signs_in_and_bad_ones_are_refused_with_their_sub_status() {
    let (_upstream, gw) = site("optional", "");
    let (status, seen) = curl(&gw, "/x", Some("alice"), None);
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["remote-user"], "alice");
    for (who, substatus, reason) in [
        ("old", 17, "certificate_expired"),
        ("bob", 13, "certificate_revoked"),
        ("eve", 16, "certificate_untrusted"),
    ] {
        let (status, problem) = curl(&gw, "/x", Some(who), None);
        assert_eq!(status, 403, "{who}: {problem}");
        assert_eq!(problem["substatus"], substatus, "{who}: {problem}");
        assert_eq!(problem["reason"], reason, "{who}: {problem}");
    }
    // Optional: without a certificate, the other schemes decide.
    assert_eq!(curl(&gw, "/x", None, None).0, 401);
    assert_eq!(curl(&gw, "/x", None, Some("carol:carol-pw")).0, 200);
    assert_eq!(curl(&gw, "/public/x", None, None).0, 200);
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    for line in [" alice ", " 403 17 ", " 403 13 ", " 403 16 "] {
        assert!(log.contains(line), "{line}: {log}");
    }
}

#[test]
fn a_required_certificate_is_403_7_without_one_and_email_can_name_the_user() {
    let (_upstream, gw) = site("required", "certificate_user = \"email\"");
    let (status, problem) = curl(&gw, "/public/x", None, None);
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["substatus"], 7);
    assert_eq!(problem["reason"], "certificate_required");
    let (status, seen) = curl(&gw, "/x", Some("alice"), None);
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["remote-user"], "alice@example.test");
}

#[test]
fn check_config_wants_a_client_ca_for_a_crl_or_client_auth() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let (code, text) = check_config(
        dir.path(),
        "[server]\nupstream = \"http://127.0.0.1:9\"\ntls = { cert = \"server.crt\", key = \"server.key\", crl = \"crl.pem\", client_auth = \"required\" }\n[auth]\nusers = \"users.htpasswd\"\n",
    );
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("server.tls.crl") && text.contains("server.tls.client_auth"),
        "{text}"
    );
}

/// In forward-auth the TLS connection is the front proxy's: a certificate on it is the proxy's,
/// not the client's, and must not sign anyone in (nginx would otherwise be "alice" for all).
#[test]
fn forward_auth_ignores_the_proxy_connections_certificate() {
    let upstream = TestUpstream::start();
    let dir = dir_with_user("carol", "carol-pw");
    make_pki(dir.path());
    let config = SiteConfig::new()
        .server("tls = { cert = \"server.crt\", key = \"server.key\", client_ca = \"ca.crt\", crl = \"crl.pem\", client_auth = \"optional\" }")
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    let ask = |cert: Option<&str>, basic: Option<&str>| -> (u16, String) {
        let mut cmd = curl_cmd(&gw, "/.portcullis/auth", cert, basic);
        cmd.args(["-o", "/dev/null", "-D", "-", "-w", "\n%{http_code}"])
            .args(["-H", "x-original-uri: /x", "-H", "x-original-method: GET"]);
        let out = String::from_utf8_lossy(&cmd.output().expect("curl").stdout).into_owned();
        let (head, status) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (
            status.trim().parse().unwrap_or(0),
            head.to_ascii_lowercase(),
        )
    };
    // A valid client certificate on the proxy's connection: no one is signed in by it.
    let (status, head) = ask(Some("alice"), None);
    assert_eq!(status, 401, "{head}");
    assert!(!head.contains("remote-user: alice"), "{head}");
    // An invalid one is not a refusal either (it is not the client's): the client's own
    // credentials decide.
    let (status, head) = ask(Some("bob"), Some("carol:carol-pw"));
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("remote-user: carol"), "{head}");
}
