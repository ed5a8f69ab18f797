//! `portcullis demo`: the gateway on embedded defaults in front of a built-in application, so a
//! first-time user sees sign-in, refusals and the access log without writing a file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Address for the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// The demo user's name.
const DEMO_USER: &str = "demo";

/// Runs `demo`.
pub fn run(args: Args) -> ExitCode {
    let app_addr = match start_demo_app() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("portcullis demo: cannot start the demo application: {e}");
            return ExitCode::FAILURE;
        }
    };
    let password = demo_password();
    let hash = store::htpasswd::hash_argon2id(password.as_bytes());
    let upstream = config::Upstream {
        authority: app_addr
            .to_string()
            .parse()
            .expect("a socket address is an authority"),
        base_path: String::new(),
    };
    let config =
        config::Config::builder_for_demo(args.listen, upstream, vec![(DEMO_USER.to_owned(), hash)]);
    super::run_gateway(config, move |addrs| {
        let addr = addrs.first().copied().unwrap_or(args.listen);
        println!("Portcullis demo is running.");
        println!();
        println!("  Open      http://{addr}/   (a browser gets the sign-in page)");
        println!("  User      {DEMO_USER}");
        println!("  Password  {password}");
        println!();
        println!("  Public    http://{addr}/public/  (no sign-in needed)");
        println!("  Try       curl -i http://{addr}/            -> 401.2, no credentials");
        println!("            curl -i -u {DEMO_USER}:wrong http://{addr}/  -> 401.1, logon failed");
        println!("            curl -i -u {DEMO_USER}:{password} http://{addr}/");
        println!();
        println!(
            "The access log (W3C format, with sc-substatus) follows on standard output. Ctrl-C stops."
        );
    })
}

fn demo_password() -> String {
    const WORDS: &[&str] = &[
        "amber", "birch", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "indigo",
        "juniper", "kestrel", "lumen",
    ];
    let pick = || WORDS[rand::random_range(0..WORDS.len())];
    format!("{}-{}-{}", pick(), pick(), rand::random_range(10..100))
}

/// Starts the demo application on an ephemeral loopback port, on its own thread.
fn start_demo_app() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-app".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service_fn(demo_page))
                            .await;
                    });
                }
            });
        })?;
    Ok(addr)
}

async fn demo_page(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(escape)
            .unwrap_or_else(|| "—".into())
    };
    let user = req
        .headers()
        .get("remote-user")
        .and_then(|v| v.to_str().ok())
        .map(escape);
    let who = match &user {
        Some(u) => format!("You are signed in as <strong>{u}</strong>."),
        None => "You are not signed in: this is a public page.".to_owned(),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Portcullis demo</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:8vh auto;padding:0 1rem}}code{{font-size:.9em}}td,th{{text-align:left;padding:.2rem .6rem .2rem 0}}</style></head>\
<body><h1>Portcullis demo application</h1><p>{who}</p>\
<p>This page is served by a small application behind the gateway. It only sees what the gateway forwards:</p>\
<table><tr><th>Remote-User</th><td><code>{}</code></td></tr><tr><th>X-Forwarded-For</th><td><code>{}</code></td></tr>\
<tr><th>X-Forwarded-Proto</th><td><code>{}</code></td></tr><tr><th>X-Request-Id</th><td><code>{}</code></td></tr>\
<tr><th>Authorization</th><td><code>{}</code> (not forwarded)</td></tr><tr><th>Path</th><td><code>{}</code></td></tr></table>\
<p><a href=\"/\">Protected home</a> · <a href=\"/public/\">Public page</a> · <a href=\"/.portcullis/logout\">Sign out</a></p></body></html>",
        header("remote-user"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("x-request-id"),
        header("authorization"),
        escape(req.uri().path()),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        "content-type",
        "text/html; charset=utf-8".parse().expect("static"),
    );
    Ok(response)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
