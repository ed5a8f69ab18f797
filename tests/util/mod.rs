//! Shared harness for the end-to-end tests: a real upstream (hyper), the real `portcullis`
//! binary on a free loopback port, real clients. Everything started is stopped by PID on drop.
#![allow(dead_code)]

pub mod browser;
pub mod httpd;
pub mod oidc_provider;
pub mod portal;
pub mod postgres;
pub mod slapd;

use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Runs `portcullis VERB ARGS -c <the gateway's config>`, which must succeed; returns its
/// stdout (trimmed) and stderr.
pub fn cli(gw: &Gateway, verb: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .arg(verb)
        .args(args)
        .arg("-c")
        .arg(gw.path("portcullis.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{verb} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `portcullis VERB ARGS -c CONFIG`, writing `stdin` (a line) to it: whether it succeeded,
/// its stdout and its stderr.
pub fn cli_in(
    config: &Path,
    verb: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg(verb)
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(format!("{s}\n").as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Writes `text` as `dir/portcullis.toml` and runs `portcullis check-config` on it: the exit code
/// and everything it printed (stdout, then stderr).
pub fn check_config(dir: &Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `addr`, or panics after `limit`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing is listening on {addr} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some`, or panics after `limit` (waiting for an effect, not timing).
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

// === impl TestUpstream ===

/// What the test upstream has seen.
#[derive(Default)]
pub struct UpstreamStats {
    pub requests: AtomicU64,
    pub upload_bytes: AtomicU64,
}

/// An HTTP/1.1 upstream on its own thread and runtime. Paths:
/// `/echo…` (default): JSON of method, path, headers; `/slow`: never answers;
/// `/app401`: 401 with its own challenge; `/upload`: counts the body; `/download?mb=N`: streams
/// N MiB; `/ws`: WebSocket echo.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub stats: Arc<UpstreamStats>,
}

impl TestUpstream {
    pub fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(UpstreamStats::default());
        let s = stats.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let s = s.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| upstream_handle(req, s.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        TestUpstream { addr, stats }
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

fn text(s: impl Into<Bytes>) -> UpBody {
    Full::new(s.into()).boxed()
}

async fn upstream_handle(
    mut req: Request<Incoming>,
    stats: Arc<UpstreamStats>,
) -> Result<Response<UpBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Response::new(text("late")))
        }
        "/sleep" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::new(text(format!("slept {ms} ms"))))
        }
        "/filter" => {
            // An external authorization filter: admits alice only.
            let user = req
                .headers()
                .get("remote-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let status = if user == "alice" { 200 } else { 403 };
            Ok(Response::builder().status(status).body(text("")).unwrap())
        }
        // A redirect loop (for `doctor`).
        "/loop" => Ok(Response::builder()
            .status(302)
            .header("location", "/loop2")
            .body(text(""))
            .unwrap()),
        "/loop2" => Ok(Response::builder()
            .status(302)
            .header("location", "/loop")
            .body(text(""))
            .unwrap()),
        "/app401" => Ok(Response::builder()
            .status(401)
            .header("www-authenticate", "Bearer realm=\"app\"")
            .body(text("app says no"))
            .unwrap()),
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map(|f| f.into_data()) {
                    if let Ok(d) = data {
                        n += d.len() as u64;
                    }
                } else {
                    break;
                }
            }
            stats.upload_bytes.store(n, Ordering::Relaxed);
            Ok(Response::new(text(format!("{n}"))))
        }
        "/download" => {
            let mb: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("mb="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let chunk = Bytes::from(vec![b'x'; 1 << 20]);
            let stream = futures_util::stream::iter(
                (0..mb).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))))
        }
        "/ws" => {
            use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| derive_accept_key(k.as_bytes()))
                .unwrap_or_default();
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let upgraded = hyper::upgrade::on(&mut req).await.unwrap();
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", key)
                .body(text(""))
                .unwrap())
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .keys()
                .map(|k| {
                    let vals: Vec<String> = req
                        .headers()
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    (
                        k.as_str().to_owned(),
                        serde_json::Value::from(vals.join(", ")),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            Ok(Response::builder()
                .header("content-type", "application/json")
                .header("connection", "x-hop")
                .header("x-hop", "should-not-reach-client")
                .header("keep-alive", "timeout=5")
                .body(text(body.to_string()))
                .unwrap())
        }
    }
}

// === impl Gateway ===

/// A running `portcullis serve` with a config written to a temp dir.
pub struct Gateway {
    pub addr: SocketAddr,
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
}

impl Gateway {
    /// Writes `config` (with `@LISTEN@` and `@UPSTREAM@` replaced) and the given files into a
    /// temp dir, starts the gateway and waits until it accepts connections.
    pub fn start(config: &str, upstream: SocketAddr, files: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        Gateway::start_in(dir, config, upstream)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, upstream: SocketAddr) -> Gateway {
        // A port from free_port() may be taken by another test's server before the gateway
        // binds it: then the gateway exits ("address in use") and a new port is tried. Only the
        // gateway's own "listening" line for that address says the port is its.
        let config_path = dir.path().join("portcullis.toml");
        let stderr_path = dir.path().join("stderr.log");
        let read_log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        for attempt in 0.. {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let text = config
                .replace("@LISTEN@", &addr.to_string())
                .replace("@LISTEN6@", &format!("[::1]:{port}"))
                .replace("@UPSTREAM@", &upstream.to_string());
            std::fs::write(&config_path, text).unwrap();
            let mut child = Command::new(BIN)
                .args(["serve", "-c"])
                .arg(&config_path)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let listening = || {
                read_log()
                    .lines()
                    .any(|l| l.contains("listening") && l.contains(&addr.to_string()))
            };
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && (listening() || !config.contains("@LISTEN@"))
                {
                    return Gateway {
                        addr,
                        child,
                        dir,
                        stderr_path,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log = read_log();
                    if attempt < 3 && log.to_lowercase().contains("address already in use") {
                        break;
                    }
                    panic!("gateway exited with {status}: {log}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("gateway did not start: {}", read_log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
        unreachable!()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`HUP`, `TERM`, `USR1`, …) to the gateway.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) of the gateway process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === clients and tools ===

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Runs the real Apache `htpasswd` tool to add `user` with `password` to `file`.
pub fn htpasswd(file: &Path, flags: &[&str], user: &str, password: &str) {
    let tool = which("htpasswd").expect(
        "the tests need Apache's htpasswd (Debian package apache2-utils): run scripts/test",
    );
    let mut cmd = Command::new(tool);
    cmd.arg("-b").args(flags);
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd.arg(file).arg(user).arg(password).output().unwrap();
    assert!(
        out.status.success(),
        "htpasswd {flags:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// `portcullis hash` with the password on stdin.
pub fn portcullis_hash(password: &str, extra: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .arg("hash")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// === impl SiteConfig ===

/// A test gateway's config, table by table. `SiteConfig::new()` is the base the tests share:
///
/// ```toml
/// [server]
/// listen = ["@LISTEN@"]
/// upstream = "http://@UPSTREAM@"
///
/// [auth]
/// users = "users.htpasswd"
///
/// [log]
/// access = "access.log"
/// ```
///
/// Each call sets `key = value` lines (one or several, a line each) in one table: a key the
/// table has already is replaced where it stands, a new one is added at its end. `build` writes
/// the tables in the order they were first named (server, auth, log, then the others; a table
/// left empty not at all), then the `raw` text, which so may begin with keys of the last table.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    tables: Vec<(String, Vec<String>)>,
    raw: String,
}

impl Default for SiteConfig {
    fn default() -> SiteConfig {
        SiteConfig::new()
    }
}

impl SiteConfig {
    pub fn new() -> SiteConfig {
        SiteConfig {
            tables: Vec::new(),
            raw: String::new(),
        }
        .server("listen = [\"@LISTEN@\"]")
        .server("upstream = \"http://@UPSTREAM@\"")
        .auth("users = \"users.htpasswd\"")
        .log("access = \"access.log\"")
    }

    pub fn server(self, lines: &str) -> Self {
        self.section("server", lines)
    }

    pub fn auth(self, lines: &str) -> Self {
        self.section("auth", lines)
    }

    pub fn log(self, lines: &str) -> Self {
        self.section("log", lines)
    }

    /// Sets `lines` (`key = value`, one a line; blank lines are skipped) in table `[name]`.
    pub fn section(mut self, name: &str, lines: &str) -> Self {
        let at = match self.tables.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                self.tables.push((name.to_owned(), Vec::new()));
                self.tables.len() - 1
            }
        };
        let table = &mut self.tables[at].1;
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let key = key_of(line);
            match table.iter_mut().find(|l| key_of(l) == key) {
                Some(old) => *old = line.to_owned(),
                None => table.push(line.to_owned()),
            }
        }
        self
    }

    /// Removes `key` from table `[name]` (for a test whose config has no such key).
    pub fn without(mut self, name: &str, key: &str) -> Self {
        if let Some((_, table)) = self.tables.iter_mut().find(|(n, _)| n == name) {
            table.retain(|l| key_of(l) != key);
        }
        self
    }

    /// Appends `text` verbatim after the tables (`[[rule]]` blocks, a caller's extra tables).
    pub fn raw(mut self, text: &str) -> Self {
        if !self.raw.is_empty() && !self.raw.ends_with('\n') {
            self.raw.push('\n');
        }
        self.raw.push_str(text);
        self
    }

    /// The TOML text (with the `@LISTEN@` and `@UPSTREAM@` placeholders `Gateway` fills in).
    pub fn build(&self) -> String {
        let mut out = String::new();
        for (name, lines) in self.tables.iter().filter(|(_, l)| !l.is_empty()) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{name}]\n"));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !self.raw.is_empty() {
            out.push('\n');
            out.push_str(&self.raw);
            if !self.raw.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// The key of a `key = value` line.
fn key_of(line: &str) -> &str {
    line.split_once('=')
        .unwrap_or_else(|| panic!("not a `key = value` line: {line}"))
        .0
        .trim()
}

/// Basic auth over `users.htpasswd`, `/public/**` open, a 10 s upstream timeout.
pub fn basic_config() -> SiteConfig {
    SiteConfig::new()
        .server("upstream_timeout = \"10s\"")
        .auth("realm = \"Test realm\"")
        .auth("public = [\"/public/**\"]")
}

// === impl RedisServer ===

/// A real `redis-server` on a free loopback port, stopped by PID on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port (after `stop`).
    pub fn restart(&mut self) {
        let tool = which("redis-server")
            .expect("the tests need redis-server (Debian package redis-server): run scripts/test");
        let child = Command::new(tool)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_secs(10),
        );
    }

    /// Kills it (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temp dir holding `users.htpasswd` with one user, written by the real `htpasswd` (bcrypt
/// cost 4: fast enough for tests).
pub fn dir_with_user(user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    htpasswd(
        &dir.path().join("users.htpasswd"),
        &["-B", "-C", "4"],
        user,
        password,
    );
    dir
}

/// A test upstream and a gateway with `config` and one user in `users.htpasswd`.
pub fn start_with_user(config: &str, user: &str, password: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let gw = Gateway::start_in(dir_with_user(user, password), config, upstream.addr);
    (upstream, gw)
}

// === impl SmtpSink ===

/// A real local SMTP server (Python's aiosmtpd) storing every message, as received, in a
/// maildir (`tests/util/smtp_sink.py`).
pub struct SmtpSink {
    pub port: u16,
    child: Child,
    pub maildir: tempfile::TempDir,
    /// The certificate and key of a STARTTLS sink.
    tls: Option<tempfile::TempDir>,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(&[])
    }

    /// A sink that requires STARTTLS with this certificate and key (PEM).
    pub fn start_tls(cert: &str, key: &str) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let args = [
            "--tlscert".to_owned(),
            c.display().to_string(),
            "--tlskey".to_owned(),
            k.display().to_string(),
        ];
        let mut sink = SmtpSink::start_with(&args);
        sink.tls = Some(dir);
        sink
    }

    /// A sink that answers the first `n` messages with `reply` (an SMTP reply line, e.g.
    /// "451 4.3.0 Try again later") and stores the rest.
    pub fn start_refusing(n: usize, reply: &str) -> SmtpSink {
        SmtpSink::start_handler(&[], &[n.to_string(), reply.to_owned()])
    }

    fn start_with(extra: &[String]) -> SmtpSink {
        SmtpSink::start_handler(extra, &[])
    }

    fn start_handler(extra: &[String], handler_args: &[String]) -> SmtpSink {
        let maildir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The first Python that has aiosmtpd (Debian's python3-aiosmtpd is for /usr/bin/python3).
        let python = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import aiosmtpd"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("a Python with aiosmtpd (Debian: python3-aiosmtpd)");
        // tests/util/smtp_sink.py keeps each message byte for byte as it was received.
        let child = Command::new(python)
            .env(
                "PYTHONPATH",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/util"),
            )
            .args(["-m", "aiosmtpd", "-n"])
            .args(extra)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "smtp_sink.Sink"])
            .arg(maildir.path().join("mail"))
            .args(handler_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (Debian: python3-aiosmtpd)");
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(15),
        );
        SmtpSink {
            port,
            child,
            maildir,
            tls: None,
        }
    }

    /// Every message received so far, raw, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.path().join("mail").join(sub)) {
                for e in entries.flatten() {
                    let modified = e.metadata().and_then(|m| m.modified()).unwrap();
                    found.push((modified, std::fs::read_to_string(e.path()).unwrap()));
                }
            }
        }
        found.sort();
        found.into_iter().map(|(_, m)| m).collect()
    }

    /// Waits for the `n`th message (1-based) and returns it.
    pub fn wait_for(&self, n: usize) -> String {
        eventually(Duration::from_secs(10), "a mail to arrive", || {
            let m = self.messages();
            (m.len() >= n).then(|| m[n - 1].clone())
        })
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `…/password?token=…` link in `text` (quoted-printable soft breaks undone).
pub fn password_link(text: &str) -> String {
    let text = text
        .replace("=\n", "")
        .replace("=\r\n", "")
        .replace("=3D", "=");
    let start = text.find("http").expect("a link");
    let end = text[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(text.len(), |e| start + e);
    text[start..end].to_owned()
}

/// A private CA and a certificate it signed for `names` (IP addresses or host names): the CA's
/// PEM, the certificate's PEM and its key's PEM.
pub fn private_ca(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
