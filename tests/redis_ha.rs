//! No single Redis: two instances share sessions, bans and limits through the master a set of
//! real Sentinels names (`redis+sentinel://…`), or through a real Redis Cluster
//! (`redis+cluster://…`), and follow a failover when a master is killed under load — every
//! answer meanwhile is right or the configured `on_backend_error` one, and the answers are right
//! again within the failover time + 2 s; what was written before is still there. And TLS to
//! Redis with a private CA, a client certificate and an ACL user from a password file.

mod util;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::browser::Browser;
use util::*;

const MASTER: &str = "mymaster";

/// A `redis-server` (master or replica of `replica_of`), stopped by PID on drop.
struct Node {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(replica_of: Option<u16>) -> Node {
        Node::start_with(replica_of, &[])
    }

    fn start_with(replica_of: Option<u16>, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(which("redis-server").expect("redis-server (run scripts/test)"));
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra);
        if let Some(master) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        Node::spawn(cmd, port, dir)
    }

    /// Starts `cmd` (a redis-server listening on `port`, its files in `dir`) and waits for it.
    fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Node {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(10),
        );
        Node {
            port,
            child,
            _dir: dir,
        }
    }

    /// A Sentinel watching the master at `master` (quorum 2, down after 1 s).
    fn sentinel(master: u16) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 10000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(which("redis-server").unwrap());
        cmd.arg(&conf).arg("--sentinel");
        Node::spawn(cmd, port, dir)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS…`, its output trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The master's port as `sentinel` sees it.
fn master_port(sentinel: u16) -> Option<u16> {
    cli(sentinel, &["SENTINEL", "get-master-addr-by-name", MASTER])
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
}

/// Two instances sharing the state at `url`, each with an admin listener, and the cookie of a
/// session made on A (checked on B) after a ban started on B (checked on A).
struct Pair {
    a: Gateway,
    b: Gateway,
    admin_a: String,
    cookie: String,
}

impl Pair {
    fn start(url: &str, upstream: &TestUpstream) -> Pair {
        // One users file for both (a session remembers its password hash's stamp).
        let users = std::fs::read_to_string(
            dir_with_user("alice", "wonderland-42")
                .path()
                .join("users.htpasswd"),
        )
        .unwrap();
        let start = || {
            let admin = format!("127.0.0.1:{}", free_port());
            let config = util::portal::portal_config()
                .section("state", &format!("backend = \"{url}\""))
                .section("state", "timeout = \"300ms\"")
                .section("logon", "max_failures = 2")
                .section("logon", "ban_time = \"1h\"")
                .section(
                    "dynamic",
                    "deny_by_concurrent = { enabled = true, max_concurrent = 50 }",
                )
                .section("admin", &format!("listen = \"{admin}\""))
                .build();
            (
                Gateway::start(&config, upstream.addr, &[("users.htpasswd", &users)]),
                admin,
            )
        };
        let ((a, admin_a), (b, _)) = (start(), start());
        let cookie = runtime().block_on(async {
            let mut browser = Browser::new(&format!("http://{}", a.addr));
            let page = browser.sign_in("alice", "wonderland-42", "/app").await;
            assert_eq!(page.status, 303, "{}", page.body);
            for _ in 0..2 {
                assert_eq!(mallory(&b).await, 401);
            }
            format!(
                "portcullis_session={}",
                browser
                    .jar
                    .get("portcullis_session")
                    .expect("a session cookie")
            )
        });
        let pair = Pair {
            a,
            b,
            admin_a,
            cookie,
        };
        runtime().block_on(async {
            assert_eq!(pair.get(&pair.b).await, 200, "the session on B too");
            assert_eq!(mallory(&pair.a).await, 403, "the ban on A too");
        });
        pair
    }

    /// `GET /app` with the session: the status (0 when no answer).
    async fn get(&self, gw: &Gateway) -> u16 {
        client()
            .get(gw.url("/app"))
            .header("cookie", &self.cookie)
            .header("accept", "application/json")
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// Requests to both instances every 50 ms from `kill()` until 4 s after `failed_over()`
    /// first holds; prints the timeline and checks that every answer is right (200) or
    /// on_backend_error's 503, and 200 from 2 s after the failover. Returns when it failed over.
    fn through_failover(
        &self,
        what: &str,
        kill: impl FnOnce(),
        mut failed_over: impl FnMut() -> bool,
    ) -> Duration {
        let killed_at = Instant::now();
        kill();
        let mut answers: Vec<(Duration, char, u16)> = Vec::new();
        let mut failed_over_at = None;
        runtime().block_on(async {
            while killed_at.elapsed() < Duration::from_secs(40) {
                for (name, gw) in [('A', &self.a), ('B', &self.b)] {
                    answers.push((killed_at.elapsed(), name, self.get(gw).await));
                }
                if failed_over_at.is_none() && failed_over() {
                    failed_over_at = Some(killed_at.elapsed());
                }
                if let Some(at) = failed_over_at
                    && killed_at.elapsed() > at + Duration::from_secs(4)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let failed_over_at = failed_over_at.expect("a failover");
        let mut line = String::new();
        for second in 0..=answers.last().unwrap().0.as_secs() {
            let mut counts = std::collections::BTreeMap::new();
            for (_, name, status) in answers.iter().filter(|(t, _, _)| t.as_secs() == second) {
                *counts.entry(format!("{name}:{status}")).or_insert(0) += 1;
            }
            line.push_str(&format!("  {second:>2}s {counts:?}\n"));
        }
        eprintln!(
            "{what} killed at 0 s; failed over at {:.1} s\n{line}",
            failed_over_at.as_secs_f64()
        );
        for (t, name, status) in &answers {
            assert!(
                *status == 200 || *status == 503,
                "{name} answered {status} at {t:?}: only right answers or on_backend_error's 503\n{line}"
            );
            if *t > failed_over_at + Duration::from_secs(2) {
                assert_eq!(
                    *status, 200,
                    "{name} at {t:?}, after the failover + 2 s\n{line}"
                );
            }
        }
        runtime().block_on(async {
            assert_eq!(mallory(&self.b).await, 403, "the ban survived the failover");
        });
        failed_over_at
    }
}

/// Basic with a wrong password for `mallory`: the status.
async fn mallory(gw: &Gateway) -> u16 {
    client()
        .get(gw.url("/app"))
        .basic_auth("mallory", Some("guess"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn instances_follow_a_sentinel_failover_and_keep_sessions_and_bans() {
    let mut master = Node::start(None);
    let replicas = [
        Node::start(Some(master.port)),
        Node::start(Some(master.port)),
    ];
    let sentinels: Vec<Node> = (0..3).map(|_| Node::sentinel(master.port)).collect();
    // The Sentinels know both replicas and each other before anything else.
    eventually(
        Duration::from_secs(30),
        "the Sentinels to see everything",
        || {
            sentinels
                .iter()
                .all(|s| {
                    cli(s.port, &["SENTINEL", "replicas", MASTER])
                        .matches("flags")
                        .count()
                        == 2
                        && cli(s.port, &["SENTINEL", "sentinels", MASTER])
                            .matches("flags")
                            .count()
                            == 2
                })
                .then_some(())
        },
    );

    let upstream = TestUpstream::start();
    let url = format!(
        "redis+sentinel://{}/{MASTER}/0",
        sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    );
    let pair = Pair::start(&url, &upstream);
    let (a, admin_a) = (&pair.a, &pair.admin_a);

    // check-config says what it will connect to.
    let (ok, stdout, _) = cli_in(&a.path("portcullis.toml"), "check-config", &[], None);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "the master \"{MASTER}\" (database 0) as named by the Sentinels at 127.0.0.1:"
        )),
        "{stdout}"
    );
    // Replicated to both replicas before the master goes.
    assert_eq!(cli(master.port, &["WAIT", "2", "5000"]), "2");
    let old = master.port;
    pair.through_failover(
        "the master",
        || master.kill(),
        || master_port(sentinels[0].port).is_some_and(|p| p != old),
    );

    // After: the instance says where it is.
    runtime().block_on(async {
        let c = client();
        let health: serde_json::Value = c
            .get(format!("http://{admin_a}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let new_master = master_port(sentinels[0].port).unwrap();
        assert!(replicas.iter().any(|r| r.port == new_master));
        assert_eq!(
            health["state"]["node"],
            format!("127.0.0.1:{new_master}"),
            "{health}"
        );
        assert_eq!(health["state"]["failovers"], 1, "{health}");
        let metrics = c
            .get(format!("http://{admin_a}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("portcullis_redis_failovers_total 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "portcullis_redis_node{{node=\"127.0.0.1:{new_master}\"}} 1"
            )),
            "{metrics}"
        );
    });
    assert!(
        a.stderr().contains("followed a Redis failover"),
        "{}",
        a.stderr()
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl in `dir`.
fn make_redis_pki(dir: &std::path::Path) {
    let script = r#"
set -e
cd "$1"
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -keyout ca.key -out ca.crt -subj "/CN=Redis test CA" -days 30 \
   -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ec -keyout server.key -out server.csr -subj /CN=127.0.0.1
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 5 -extfile server.ext 2>/dev/null
ec -keyout client.key -out client.csr -subj /CN=portcullis
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 5 -extfile client.ext 2>/dev/null
"#;
    let status = Command::new("bash")
        .args(["-c", script, "pki"])
        .arg(dir)
        .status()
        .expect("bash and openssl");
    assert!(status.success(), "making the test PKI");
}

#[test]
fn tls_with_a_private_ca_a_client_certificate_and_an_acl_user_from_a_file() {
    let pki = tempfile::tempdir().unwrap();
    make_redis_pki(pki.path());
    let p = |name: &str| pki.path().join(name).display().to_string();
    let port = free_port();
    // TLS only, client certificates required, the default user off: only the ACL user
    // `portcullis` with its password gets in.
    std::fs::write(
        pki.path().join("redis.conf"),
        format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\n\
             tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients yes\n\
             user default off\nuser portcullis on >s3cret-redis-pw ~* &* +@all\n",
            pki.path().display(),
            p("server.crt"),
            p("server.key"),
            p("ca.crt"),
        ),
    )
    .unwrap();
    let mut redis = Command::new(which("redis-server").unwrap())
        .arg(pki.path().join("redis.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
    );
    let upstream = TestUpstream::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = SiteConfig::new()
        .auth("public = [\"/**\"]")
        .section(
            "state",
            &format!("backend = \"rediss://127.0.0.1:{port}/0\""),
        )
        .section("state", "timeout = \"2s\"")
        .section("state", "ca = \"ca.crt\"")
        .section("state", "cert = \"client.crt\"")
        .section("state", "key = \"client.key\"")
        .section("state", "password_file = \"redis-password\"")
        .section(
            "dynamic",
            "deny_by_rate = { enabled = true, max_requests = 3, interval = \"1h\" }",
        )
        .section("admin", &format!("listen = \"{admin}\""))
        .build();
    let read = |name: &str| std::fs::read_to_string(pki.path().join(name)).unwrap();
    let files = [
        ("ca.crt", read("ca.crt")),
        ("client.crt", read("client.crt")),
        ("client.key", read("client.key")),
        ("redis-password", "portcullis:s3cret-redis-pw\n".to_owned()),
        ("users.htpasswd", String::new()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let gw = Gateway::start(&config, upstream.addr, &files);
    // The limit is kept in Redis: the fourth request is refused, and nothing failed.
    runtime().block_on(async {
        let c = client();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(c.get(gw.url("/x")).send().await.unwrap().status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 403], "{}", gw.stderr());
        let metrics = c
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("portcullis_redis_errors_total 0"),
            "{metrics}"
        );
    });
    let keys = Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            &p("ca.crt"),
            "--cert",
            &p("client.crt"),
            "--key",
            &p("client.key"),
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--user",
            "portcullis",
            "--pass",
            "s3cret-redis-pw",
        ])
        .args(["--no-auth-warning", "KEYS", "portcullis:rate:*"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&keys.stdout).contains("portcullis:rate:127.0.0.1"),
        "{keys:?}"
    );
    assert!(!gw.stderr().contains("s3cret-redis-pw"), "never printed");

    // check-config: the password in one place only; TLS files without TLS are pointless.
    let config = std::fs::read_to_string(gw.path("portcullis.toml")).unwrap();
    let both = config.replace(
        &format!("rediss://127.0.0.1:{port}/0"),
        &format!("rediss://:other@127.0.0.1:{port}/0"),
    );
    std::fs::write(gw.path("both.toml"), both).unwrap();
    let (ok, _, stderr) = cli_in(&gw.path("both.toml"), "check-config", &[], None);
    assert!(!ok && stderr.contains("keep it in one place"), "{stderr}");
    assert!(!stderr.contains("s3cret-redis-pw"));
    let plain = config.replace("rediss://", "redis://");
    std::fs::write(gw.path("plain.toml"), plain).unwrap();
    let (ok, stdout, stderr) = cli_in(&gw.path("plain.toml"), "check-config", &[], None);
    assert!(
        ok && stderr.contains("is used only with TLS"),
        "{stdout}{stderr}"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

/// `CLUSTER NODES` of the node at `port`: (port, is master, master's id or "-", id) per node.
fn cluster_nodes(port: u16) -> Vec<(u16, bool, String, String)> {
    cli(port, &["CLUSTER", "NODES"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f
                .get(1)?
                .split('@')
                .next()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()?;
            let flags = f.get(2)?;
            let master = flags.contains("master") && !flags.contains("fail");
            Some((port, master, f.get(3)?.to_string(), f.first()?.to_string()))
        })
        .collect()
}

#[test]
fn instances_follow_a_cluster_failover_and_keep_sessions_and_bans() {
    // Six nodes: three masters, one replica each (`redis-cli --cluster create`).
    let mut nodes: Vec<Node> = (0..6)
        .map(|_| {
            Node::start_with(
                None,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(created.status.success(), "{created:?}");
    eventually(
        Duration::from_secs(30),
        "the cluster to be ok everywhere",
        || {
            nodes
                .iter()
                .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                .then_some(())
        },
    );

    let upstream = TestUpstream::start();
    let url = format!("redis+cluster://{}", addrs[..3].join(","));
    // A session made on A, a ban started on B (keys hash-tagged: sessions in one slot, each
    // client's and user's counters in their own).
    let pair = Pair::start(&url, &upstream);
    let (ok, stdout, _) = cli_in(&pair.a.path("portcullis.toml"), "check-config", &[], None);
    assert!(
        ok && stdout.contains("Redis Cluster starting from 127.0.0.1:"),
        "{stdout}"
    );
    runtime().block_on(async {
        let bans: serde_json::Value = client()
            .get(format!("http://{}/bans", pair.admin_a))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            bans.to_string().contains("mallory"),
            "listed from every master: {bans}"
        );
    });

    // The master holding the sessions' slot is killed, once its replica has everything.
    let slot: u16 = cli(nodes[0].port, &["CLUSTER", "KEYSLOT", "{sessions}"])
        .parse()
        .unwrap();
    // The master that holds keys in that slot (the session made above is one).
    let owner_port = cluster_nodes(nodes[0].port)
        .into_iter()
        .filter(|n| n.1)
        .map(|n| n.0)
        .find(|&port| {
            cli(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
                .parse::<u32>()
                .is_ok_and(|n| n > 0)
        })
        .expect("the master of the sessions' slot");
    let owner_id = cluster_nodes(owner_port)
        .into_iter()
        .find(|n| n.0 == owner_port)
        .unwrap()
        .3;
    let replica_port = cluster_nodes(owner_port)
        .into_iter()
        .find(|n| n.2 == owner_id)
        .expect("a replica of the owner")
        .0;
    eventually(
        Duration::from_secs(10),
        "the replica to have the sessions",
        || (cli(replica_port, &["DBSIZE"]) == cli(owner_port, &["DBSIZE"])).then_some(()),
    );
    pair.through_failover(
        "the master of the sessions' slot",
        || {
            nodes
                .iter_mut()
                .find(|n| n.port == owner_port)
                .unwrap()
                .kill()
        },
        || {
            cluster_nodes(replica_port)
                .iter()
                .any(|n| n.0 == replica_port && n.1)
        },
    );

    // After: /healthz names the masters (the promoted replica among them) and counts the
    // failover.
    let health = eventually(Duration::from_secs(10), "the failover counted", || {
        let health: serde_json::Value = runtime().block_on(async {
            client()
                .get(format!("http://{}/healthz", pair.admin_a))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        })?;
        (health["state"]["failovers"] == 1).then_some(health)
    });
    let node = health["state"]["node"].as_str().unwrap_or_default();
    assert!(
        node.contains(&format!("127.0.0.1:{replica_port}"))
            && !node.contains(&format!("127.0.0.1:{owner_port}")),
        "{health}"
    );
}

/// `rediss+sentinel://`: Sentinel and the master it names both reached over TLS, with a private
/// CA; the limits kept in that master.
#[test]
fn sentinel_over_tls_with_a_private_ca() {
    let pki = tempfile::tempdir().unwrap();
    make_redis_pki(pki.path());
    let p = |name: &str| pki.path().join(name).display().to_string();
    let tls = format!(
        "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
        p("server.crt"),
        p("server.key"),
        p("ca.crt")
    );
    // TLS only everywhere: a master, and a Sentinel watching it.
    let spawn_conf = |text: String, sentinel: bool| -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {}\n{tls}{text}",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(which("redis-server").unwrap());
        cmd.arg(&conf);
        if sentinel {
            cmd.arg("--sentinel");
        }
        Node::spawn(cmd, port, dir)
    };
    let master = spawn_conf("save \"\"\nappendonly no\n".into(), false);
    let sentinel = spawn_conf(
        format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {MASTER} 1000\n",
            master.port
        ),
        true,
    );
    let (master, sentinel) = (master.port, sentinel.port);
    let upstream = TestUpstream::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = SiteConfig::new()
        .auth("public = [\"/**\"]")
        .section(
            "state",
            &format!("backend = \"rediss+sentinel://127.0.0.1:{sentinel}/{MASTER}/0\""),
        )
        .section("state", "timeout = \"2s\"")
        .section("state", "ca = \"ca.crt\"")
        .section(
            "dynamic",
            "deny_by_rate = { enabled = true, max_requests = 3, interval = \"1h\" }",
        )
        .section("admin", &format!("listen = \"{admin}\""))
        .build();
    let ca = std::fs::read_to_string(pki.path().join("ca.crt")).unwrap();
    let gw = Gateway::start(
        &config,
        upstream.addr,
        &[("ca.crt", ca.as_str()), ("users.htpasswd", "")],
    );
    runtime().block_on(async {
        let c = client();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(c.get(gw.url("/x")).send().await.unwrap().status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 403], "{}", gw.stderr());
        let health: serde_json::Value = c
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            health["state"]["node"],
            format!("127.0.0.1:{master}"),
            "{health}"
        );
    });
    // The counter is in the master, read over TLS.
    let keys = Command::new("redis-cli")
        .args(["--tls", "--cacert", &p("ca.crt")])
        .args(["-h", "127.0.0.1", "-p", &master.to_string()])
        .args(["KEYS", "portcullis:rate:*"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&keys.stdout).contains("portcullis:rate:127.0.0.1"),
        "{keys:?}"
    );
}
