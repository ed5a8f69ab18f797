//! The pipeline in process: requests handed to [`Gateway::handle`] without a socket (the body is
//! bytes), answered by the same phases and the same phase 9 as on the wire. Each test reads what
//! an operator would: the status, the challenge, the body's kind, the access-log line (written
//! by the real log writer to a file) and the metrics.

use std::net::SocketAddr;

use http_body_util::BodyExt as _;

use super::*;

const PW: &str = "right-pw";

/// A gateway built from a config written to a temporary directory, with users `alice` (group
/// `admins`) and `bob`, whose upstream is a closed port (a forwarded request is a 502).
struct Site {
    gateway: Gateway,
    dir: tempfile::TempDir,
}

/// What came back for one request.
#[derive(Debug)]
struct Answered {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    /// The request's access-log line (JSON).
    log: serde_json::Value,
}

impl Answered {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `status.substatus reason` as the log has it.
    fn logged(&self) -> String {
        format!(
            "{}.{} {}",
            self.log["sc_status"],
            self.log["sc_substatus"],
            self.log["reason"].as_str().unwrap_or("-")
        )
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Site {
    /// `auth` goes into `[auth]`, `extra` after everything.
    async fn new(auth: &str, extra: &str) -> Site {
        Site::with_upstream(auth, extra, true).await
    }

    async fn with_upstream(auth: &str, extra: &str, upstream: bool) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash(PW, 4).unwrap();
        std::fs::write(
            dir.path().join("users.htpasswd"),
            format!("alice:{hash}\nbob:{hash}\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("groups.txt"), "admins: alice\n").unwrap();
        let upstream = if upstream {
            format!("upstream = \"http://127.0.0.1:{}\"", closed_port())
        } else {
            String::new()
        };
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:{listen}"]
{upstream}
trusted_proxies = ["10.0.0.0/8"]

[auth]
users = "users.htpasswd"
groups = "groups.txt"
public = ["/public/**"]
{auth}

[log]
access = "access.log"
format = "json"

{extra}
"#,
            listen = closed_port()
        );
        let config = config::parse(&text, dir.path(), "test.toml")
            .unwrap_or_else(|d| panic!("config: {d:?}\n{text}"));
        let state = connect_state(&config).await.unwrap();
        let gateway = Gateway::new(config, state, Arc::new(Metrics::new())).unwrap();
        Site { gateway, dir }
    }

    /// Sends `req` as if from `peer`; the body is read to its end (which writes the log line).
    async fn send_from(&self, peer: &str, req: Request<RequestBody>) -> Result<Answered, Abort> {
        let conn = ConnInfo {
            peer: SocketAddr::new(peer.parse().unwrap(), 40000),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
        };
        let response = self.gateway.handle(req, conn).await;
        let (status, headers, body) = match response {
            Ok(r) => {
                let (parts, body) = r.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                (
                    parts.status.as_u16(),
                    parts.headers,
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            }
            Err(abort) => {
                self.gateway.access_log().flush(Duration::from_secs(5));
                return Err(abort);
            }
        };
        Ok(Answered {
            status,
            headers,
            body,
            log: self.last_log_line(),
        })
    }

    async fn send(&self, req: Request<RequestBody>) -> Answered {
        self.send_from("192.0.2.1", req).await.unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answered {
        self.send(request("GET", path, headers)).await
    }

    fn last_log_line(&self) -> serde_json::Value {
        self.gateway.access_log().flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .last()
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The value of one metrics series.
    async fn metric(&self, series: &str) -> Option<String> {
        let text = self
            .gateway
            .metrics()
            .render(self.gateway.state(), false)
            .await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    async fn requests_metric(&self, status: u16, substatus: u16, reason: &str) -> Option<String> {
        self.metric(&format!(
            r#"portcullis_requests_total{{status="{status}",substatus="{substatus}",reason="{reason}"}}"#
        ))
        .await
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<RequestBody> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(RequestBody::from(())).unwrap()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

const JSON: (&str, &str) = ("accept", "application/problem+json");
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

/// One refusal as every output shows it: status, sub-status and reason in the log and the
/// metrics, a challenge exactly on a 401, `no-store`, and the problem+json body's fields.
async fn assert_refused(site: &Site, a: &Answered, status: u16, substatus: u16, reason: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(
        a.logged(),
        format!("{status}.{substatus} {reason}"),
        "{a:?}"
    );
    assert_eq!(
        a.headers.contains_key(WWW_AUTHENTICATE),
        status == 401,
        "a challenge on every 401 and only there: {a:?}"
    );
    assert_eq!(a.header("cache-control"), Some("no-store"), "{a:?}");
    assert!(a.header("x-request-id").is_some(), "{a:?}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    if a.header("content-type") == Some("application/problem+json") {
        let problem: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["substatus"], substatus);
        assert_eq!(problem["reason"], reason);
        assert_eq!(problem["type"], format!("/.portcullis/problems/{reason}"));
        assert_eq!(problem["request_id"], a.log["request_id"]);
    }
    assert_eq!(
        site.requests_metric(status, substatus, reason)
            .await
            .as_deref(),
        Some("1"),
        "metric for {status}.{substatus} {reason}"
    );
}

mod forward_auth;
mod phases;
mod portal;
