//! A real PostgreSQL server on a free loopback port: a private cluster made with `initdb` in a
//! temp dir (trust authentication for the `portcullis` superuser on loopback), stopped by PID.
//! As root, the server runs as the `postgres` system user (it refuses to run as root).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for_port};

pub struct Postgres {
    pub port: u16,
    /// With [`Postgres::start_tls`]: TLS only (`hostssl` in pg_hba.conf), with a certificate
    /// for 127.0.0.1 from a private CA, `ca.pem` in `dir`.
    tls: bool,
    child: Option<Child>,
    bin: PathBuf,
    data: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The newest installed server's `bin` folder.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("the tests need PostgreSQL (Debian package postgresql): run scripts/test")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no PostgreSQL server under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when we are root.
fn as_server_user(program: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// A server that accepts only TLS connections (see `tls`).
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        // The server user must reach its data folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            assert!(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&data)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let bin = bin_dir();
        let out = as_server_user(bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "portcullis", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            let (ca, cert, key) = super::private_ca(&["127.0.0.1"]);
            std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            // TLS or nothing over TCP.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            if is_root() {
                for f in ["server.crt", "server.key", "pg_hba.conf"] {
                    Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(data.join(f))
                        .status()
                        .unwrap();
                }
            }
        }
        let mut p = Postgres {
            tls,
            port: free_port(),
            child: None,
            bin,
            data,
            dir,
        };
        p.restart();
        p
    }

    /// `postgres://portcullis@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://portcullis@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts it (again, same port and data).
    pub fn restart(&mut self) {
        let child = as_server_user(self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", self.data.display()),
                "-c",
                "fsync=off",
            ])
            .args(if self.tls {
                vec![
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!("ssl_cert_file={}", self.data.join("server.crt").display()),
                    "-c".to_owned(),
                    format!("ssl_key_file={}", self.data.join("server.key").display()),
                ]
            } else {
                Vec::new()
            })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("postgres.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_secs(20),
        );
        // Accepting connections is not yet accepting queries.
        let ready = self.bin.join("pg_isready");
        for _ in 0..100 {
            if Command::new(&ready)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("postgres did not become ready");
    }

    /// Stops it at once (an outage; SIGQUIT: immediate shutdown, connections cut).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
