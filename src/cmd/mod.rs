//! One module per subcommand, plus what they share: building the runtime and running a gateway.

pub mod bans;
pub mod check_config;
pub mod demo;
pub mod doctor;
pub mod explain;
pub mod hash;
pub mod serve;
pub mod tokens;
pub mod users;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `-c FILE`, shared by every subcommand that reads a configuration.
#[derive(clap::Args)]
pub struct ConfigFile {
    /// Configuration file (TOML); relative paths inside it are relative to its folder.
    #[arg(
        id = "config",
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "portcullis.toml",
        env = "PORTCULLIS_CONFIG",
        global = true
    )]
    pub file: std::path::PathBuf,
}

impl ConfigFile {
    /// The configuration, or (its problems printed, every one with its key and line) the exit
    /// code for an invalid one.
    pub fn load(&self) -> Result<config::Config, ExitCode> {
        config::load(&self.file).map_err(|diagnostics| {
            eprint!("{diagnostics}");
            ExitCode::from(EXIT_CONFIG)
        })
    }
}

/// `EX_USAGE`: the configuration or the command line is invalid.
pub const EXIT_CONFIG: u8 = 64;

/// Builds the Tokio runtime with `workers` threads (default: the CPUs we may run on).
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// Binds, builds and serves `config` until SIGINT/SIGTERM; `ready` runs once listening. With a
/// config file (`source`), SIGHUP and changes of the file reload it live; SIGUSR1 reopens logs.
pub fn run_gateway(
    config: config::Config,
    ready: impl FnOnce(&[std::net::SocketAddr]),
) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Every connection is a file descriptor: use all the process may have.
    let files = gateway::server::raise_open_file_limit();
    let max_connections = config
        .server
        .max_connections
        .unwrap_or_else(gateway::server::default_max_connections);
    tracing::info!(
        open_file_limit = files,
        max_connections,
        "connection limits"
    );
    let bound = match gateway::bind(&config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime(config.server.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match config.admin.listen.map(gateway::admin::bind).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "portcullis: cannot listen on admin.listen {}: {e}",
                config
                    .admin
                    .listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let state = match gateway::connect_state(&config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("portcullis: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Once per process: counters survive reloads.
        let metrics = Arc::new(gateway::metrics::Metrics::new());
        let source = config.source.clone();
        let mut watch = source
            .as_deref()
            .map(|p| gateway::reload::ConfigWatch::new(p, &config));
        let gateway = match gateway::Gateway::new(config, state, metrics.clone()) {
            Ok(g) => Arc::new(g),
            Err(e) => {
                eprintln!("portcullis: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(directory) = gateway.user_directory() {
            tokio::spawn(probe_directory(directory));
        }
        ready(&bound.local_addrs());
        let mut server = gateway::Server::start(gateway, bound);
        // The admin endpoints follow the gateway in force (state store, settings) across reloads.
        let mut admin_listener = AdminListener::default();
        if let Some(listener) = admin {
            admin_listener.start(listener, &server, &metrics);
        }
        supervise(
            &mut server,
            source.as_deref(),
            &mut watch,
            &mut admin_listener,
            &metrics,
        )
        .await;
        let drain = server.current().config().server.drain_timeout;
        server.shutdown(drain).await;
        ExitCode::SUCCESS
    })
}

/// The admin listener in force: moved to a new `admin.listen` by a reload.
#[derive(Default)]
struct AdminListener {
    addr: Option<std::net::SocketAddr>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminListener {
    fn start(
        &mut self,
        listener: std::net::TcpListener,
        server: &gateway::Server,
        metrics: &Arc<gateway::metrics::Metrics>,
    ) {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            tracing::info!(%addr, "admin listener (healthz, metrics, bans)");
        }
        self.stop();
        self.addr = server.current().config().admin.listen.or(addr);
        self.task = Some(tokio::spawn(gateway::admin::serve(
            listener,
            server.handle(),
            metrics.clone(),
        )));
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.addr = None;
    }

    /// After a reload: binds a new `admin.listen` (the old one keeps serving if that fails),
    /// or closes the listener when the section is gone.
    fn follow(&mut self, server: &gateway::Server, metrics: &Arc<gateway::metrics::Metrics>) {
        let wanted = server.current().config().admin.listen;
        if wanted == self.addr {
            return;
        }
        match wanted {
            None => {
                tracing::info!("admin listener closed ([admin] removed)");
                self.stop();
            }
            Some(addr) => match gateway::admin::bind(addr) {
                Ok(listener) => self.start(listener, server, metrics),
                Err(e) => tracing::error!(
                    %addr,
                    error = %e,
                    "cannot listen on the new admin.listen; the admin listener stays where it was"
                ),
            },
        }
    }
}

/// Runs until SIGINT/SIGTERM, reloading on SIGHUP or a changed config file.
async fn supervise(
    server: &mut gateway::Server,
    source: Option<&std::path::Path>,
    watch: &mut Option<gateway::reload::ConfigWatch>,
    admin: &mut AdminListener,
    metrics: &Arc<gateway::metrics::Metrics>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut usr1 = signal(SignalKind::user_defined1()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let why = tokio::select! {
            _ = &mut stop => return,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            Some(_) = async { match usr1.as_mut() { Some(u) => u.recv().await, None => std::future::pending().await } } => {
                server.current().reopen_logs();
                continue;
            }
            _ = tick.tick() => {
                let gateway = server.current();
                for subject in gateway.state().take_ended_bans() {
                    tracing::info!(%subject, "lockout ended");
                    gateway.audit().record("lockout_ended", serde_json::json!({"subject": subject.to_string()}));
                }
                if !watch.as_mut().is_some_and(|w| w.changed()) {
                    continue;
                }
                "the configuration changed on disk"
            }
        };
        let Some(path) = source else { continue };
        match gateway::reload::reload(server, path).await {
            Ok(()) => {
                tracing::info!(trigger = why, file = %path.display(), "configuration reloaded");
                server.current().metrics().record_reload(true);
                server.current().audit().record(
                    "config_reload",
                    serde_json::json!({"result": "accepted", "trigger": why, "file": path.display().to_string(), "sha256": gateway::audit::file_sha256(path)}),
                );
                *watch = Some(gateway::reload::ConfigWatch::new(
                    path,
                    server.current().config(),
                ));
                admin.follow(server, metrics);
            }
            Err(refused) => {
                for line in refused.to_string().lines() {
                    tracing::error!(trigger = why, "reload refused: {line}");
                }
                tracing::error!(file = %path.display(), "the configuration was NOT reloaded; the previous one keeps serving");
                server.current().metrics().record_reload(false);
                server.current().audit().record(
                    "config_reload",
                    serde_json::json!({"result": "refused", "trigger": why, "file": path.display().to_string(), "sha256": gateway::audit::file_sha256(path), "problems": refused.to_string().lines().count()}),
                );
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs at start whether the directory answers: bound as the service account, users and groups
/// seen (or why not: the gateway serves anyway, answering 503 directory_unavailable until it
/// does).
async fn probe_directory(directory: Arc<store::ldap::Directory>) {
    let url = directory.config().url.clone();
    match directory.probe().await {
        Ok(p) => tracing::info!(
            url = %url,
            bind_dn = %directory.config().bind_dn,
            bind_ms = p.bind_time.as_millis() as u64,
            users = p.users,
            groups = p.groups,
            "the directory answered: the service account bound, {} users and {} groups seen{}",
            p.users,
            p.groups,
            if p.users >= store::ldap::PROBE_GROUP_LIMIT as usize || p.groups >= store::ldap::PROBE_GROUP_LIMIT as usize {
                " (counted up to 1000)"
            } else {
                ""
            }
        ),
        Err(e) => tracing::error!(
            url = %url,
            error = %e,
            "the directory did not answer at start; sign-ins get 503 directory_unavailable until it does"
        ),
    }
}
