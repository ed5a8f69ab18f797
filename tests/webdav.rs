//! A real WebDAV share (Apache httpd with mod_dav) behind Portcullis with a base-path upstream
//! (`upstream = "http://127.0.0.1:PORT/dav"`), used by a real WebDAV client (rclone): redirects,
//! multistatus listings and MOVE's Destination are mapped between the client's `/` and the
//! share's `/dav`, and a Destination is judged by the same rules as the request path.

mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use util::*;

const PW: &str = "dav-pw-42";

/// Apache httpd serving `<dir>/www/dav` as a WebDAV share at `/dav`, stopped by PID on drop.
struct Apache {
    /// Declared before `dir`: httpd stops before its folder goes.
    _httpd: util::httpd::Httpd,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Apache {
    fn start() -> Apache {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("www/dav");
        std::fs::create_dir_all(share.join("sub")).unwrap();
        std::fs::create_dir_all(share.join("private")).unwrap();
        std::fs::create_dir_all(share.join("sub/locked")).unwrap();
        std::fs::write(share.join("sub/locked/keep.txt"), "keep\n").unwrap();
        std::fs::create_dir_all(share.join("other/kept")).unwrap();
        std::fs::write(share.join("other/kept/a.txt"), "a\n").unwrap();
        std::fs::write(share.join("sub/hello.txt"), "hello from the share\n").unwrap();
        let httpd = util::httpd::Httpd::start(
            dir.path(),
            &["mpm_event", "authz_core", "mime", "dir", "dav", "dav_fs"],
            r#"
LogLevel warn
TypesConfig /etc/mime.types
DavLockDB @DIR@/run/davlock
DocumentRoot @DIR@/www
<Directory @DIR@/www>
    Require all granted
</Directory>
<Directory @DIR@/www/dav>
    Dav On
</Directory>
"#,
        );
        Apache {
            addr: httpd.addr,
            _httpd: httpd,
            dir,
        }
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("www/dav")
    }
}

/// Portcullis in front of the share's `/dav`, alice may use everything but `/private`.
fn gateway(apache: &Apache) -> Gateway {
    let dir = dir_with_user("alice", PW);
    std::fs::write(dir.path().join("groups.txt"), "admins: root\n").unwrap();
    let config = SiteConfig::new()
        .server(&format!("upstream = \"http://{}/dav\"", apache.addr))
        .auth("realm = \"Files\"")
        .auth("groups = \"groups.txt\"")
        .raw(
            r#"[[rule]]
path = "/private/**"
allow = ["group:admins"]

[[rule]]
path = "/sub/locked/**"
deny = ["user:alice"]
allow = ["*"]

[[rule]]
path = "/other/kept/**"
methods = ["DELETE"]
deny = ["user:alice"]
allow = ["*"]
"#,
        )
        .build();
    Gateway::start_in(dir, &config, apache.addr)
}

/// Runs rclone against the gateway as alice; returns (success, stdout, stderr).
fn rclone(gw: &Gateway, args: &[&str]) -> (bool, String, String) {
    let tool =
        which("rclone").expect("the tests need rclone (Debian package rclone): run scripts/test");
    let obscured = Command::new(&tool).args(["obscure", PW]).output().unwrap();
    let obscured = String::from_utf8(obscured.stdout).unwrap();
    let out = Command::new(&tool)
        .args(args)
        .env("RCLONE_CONFIG", gw.path("rclone.conf"))
        .env("RCLONE_CONFIG_GW_TYPE", "webdav")
        .env("RCLONE_CONFIG_GW_URL", gw.url("/"))
        .env("RCLONE_CONFIG_GW_VENDOR", "other")
        .env("RCLONE_CONFIG_GW_USER", "alice")
        .env("RCLONE_CONFIG_GW_PASS", obscured.trim())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_webdav_share_under_a_base_path_works_through_portcullis() {
    let apache = Apache::start();
    let gw = gateway(&apache);
    std::fs::write(gw.path("rclone.conf"), "").unwrap();
    let local = gw.path("café.txt");
    std::fs::write(&local, "uploaded through portcullis\n").unwrap();

    // Upload, list, move (MOVE with a Destination), read back: a whole rclone session.
    let (ok, _, err) = rclone(&gw, &["copyto", local.to_str().unwrap(), "gw:sub/café.txt"]);
    assert!(ok, "rclone copyto failed: {err}");
    let (ok, listing, err) = rclone(&gw, &["lsf", "gw:sub"]);
    assert!(ok, "rclone lsf failed: {err}");
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["café.txt", "hello.txt", "locked/"],
        "listing: {listing}"
    );
    let (ok, _, err) = rclone(&gw, &["moveto", "gw:sub/café.txt", "gw:sub/moved é.txt"]);
    assert!(ok, "rclone moveto failed: {err}");
    let (ok, text, err) = rclone(&gw, &["cat", "gw:sub/moved é.txt"]);
    assert!(ok, "rclone cat failed: {err}");
    assert_eq!(text, "uploaded through portcullis\n");
    // The MOVE stayed inside the share: the Destination was mapped under /dav.
    let share = apache.share();
    assert!(share.join("sub/moved é.txt").is_file());
    assert!(!share.join("sub/café.txt").exists());
    assert!(
        !apache.dir.path().join("www/sub").exists(),
        "a MOVE escaped the share"
    );
    // Top-level listing shows the share's folders, not "dav".
    let (ok, top, err) = rclone(&gw, &["lsf", "gw:"]);
    assert!(ok, "rclone lsf failed: {err}");
    let mut top: Vec<&str> = top.lines().collect();
    top.sort_unstable();
    assert_eq!(top, ["other/", "private/", "sub/"]);

    runtime().block_on(async {
        let c = client();
        // Apache's trailing-slash redirect names /dav/sub/: mapped back to /sub/.
        let r = c
            .get(gw.url("/sub"))
            .basic_auth("alice", Some(PW))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 301);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            gw.url("/sub/"),
            "Location not mapped back"
        );
        // A PROPFIND's hrefs are the client's paths.
        let r = c
            .request(
                reqwest::Method::from_bytes(b"PROPFIND").unwrap(),
                gw.url("/sub/"),
            )
            .basic_auth("alice", Some(PW))
            .header("depth", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 207);
        let body = r.text().await.unwrap();
        assert!(body.contains("<D:href>/sub/</D:href>"), "{body}");
        assert!(body.contains("<D:href>/sub/hello.txt</D:href>"), "{body}");
        assert!(!body.contains(">/dav"), "{body}");

        // A MOVE into a path the rules refuse alice is refused, and the file stays.
        let r = c
            .request(
                reqwest::Method::from_bytes(b"MOVE").unwrap(),
                gw.url("/sub/hello.txt"),
            )
            .basic_auth("alice", Some(PW))
            .header("destination", gw.url("/private/hello.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(share.join("sub/hello.txt").is_file());
        assert!(!share.join("private/hello.txt").exists());
        // The same through a dot segment or an encoded slash, or written so that parsers read
        // different paths from it (a "://" after a query): refused as a bad request.
        let host = gw.addr.to_string();
        for sneaky in [
            gw.url("/sub/../private/x.txt"),
            gw.url("/sub%2F..%2Fprivate/x.txt"),
            format!("http:/private/x.txt?://{host}/sub/b.txt"),
            format!("/private/x.txt#://{host}/sub/b.txt"),
        ] {
            let r = c
                .request(
                    reqwest::Method::from_bytes(b"COPY").unwrap(),
                    gw.url("/sub/hello.txt"),
                )
                .basic_auth("alice", Some(PW))
                .header("destination", &sneaky)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{sneaky}");
        }
        // Two Destinations: one judged, the other (or both, joined) used: refused.
        let r = c
            .request(
                reqwest::Method::from_bytes(b"COPY").unwrap(),
                gw.url("/sub/hello.txt"),
            )
            .basic_auth("alice", Some(PW))
            .header("destination", gw.url("/sub/b.txt"))
            .header("destination", gw.url("/private/x.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        // Deleting (or moving) the folder would reach /sub/locked, which alice may not touch:
        // refused as a whole, and nothing is deleted.
        for method in [&b"DELETE"[..], b"MOVE"] {
            let r = c
                .request(
                    reqwest::Method::from_bytes(method).unwrap(),
                    gw.url("/sub/"),
                )
                .basic_auth("alice", Some(PW))
                .header("destination", gw.url("/elsewhere/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{}", String::from_utf8_lossy(method));
        }
        assert!(share.join("sub/locked/keep.txt").is_file());
        assert!(share.join("sub/hello.txt").is_file());
        // A COPY onto /other/ would replace it, deleting /other/kept, which alice may not
        // delete: refused; with `Overwrite: F` nothing is replaced, and the rules let it through
        // (Apache then refuses to overwrite: 412).
        let copy = |overwrite: Option<&'static str>| {
            let mut req = c
                .request(
                    reqwest::Method::from_bytes(b"COPY").unwrap(),
                    gw.url("/sub/hello.txt"),
                )
                .basic_auth("alice", Some(PW))
                .header("destination", gw.url("/other/"));
            if let Some(o) = overwrite {
                req = req.header("overwrite", o);
            }
            req.send()
        };
        assert_eq!(copy(None).await.unwrap().status(), 401);
        assert_eq!(copy(Some("F")).await.unwrap().status(), 412);
        assert!(share.join("other/kept/a.txt").is_file());
        assert!(!share.join("private/x.txt").exists());
    });
    eventually(
        Duration::from_secs(5),
        "a 401.3 log line for the MOVE",
        || {
            std::fs::read_to_string(gw.path("access.log"))
                .ok()?
                .lines()
                .any(|l| l.contains(" MOVE /sub/hello.txt ") && l.contains(" 401 3 "))
                .then_some(())
        },
    );
}
