//! A real OpenLDAP `slapd` on a free loopback port: its own `slapd.conf` (mdb, the memberof
//! overlay) and data in a temp dir, seeded with `ldapadd`, stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use super::{free_port, wait_for_port, which};

/// The directory's suffix.
pub const BASE_DN: &str = "dc=example,dc=org";
/// The service account Portcullis searches as, and its password.
pub const SERVICE_DN: &str = "cn=portcullis,ou=services,dc=example,dc=org";
pub const SERVICE_PW: &str = "service-pw";
/// Bob's password: not ASCII (sent to the directory as UTF-8).
pub const BOB_PW: &str = "Grüße-für-Bøb";
/// Bob's display name: not ASCII.
pub const BOB_NAME: &str = "Bób Ñandú";

pub struct Slapd {
    pub port: u16,
    /// With [`Slapd::start_tls`]: the `ldaps://` port (StartTLS works on `port` too), and the
    /// private CA that signed its certificate is `ca.pem` in `dir`.
    pub tls_port: Option<u16>,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

/// An LDIF line `attr: value`, base64 (`attr:: …`) when the value is not plain ASCII.
fn ldif(attr: &str, value: &str) -> String {
    if value.is_ascii() {
        format!("{attr}: {value}\n")
    } else {
        format!(
            "{attr}:: {}\n",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

impl Slapd {
    /// Starts slapd and adds the test entries: alice (groups admins and staff, mail, display
    /// name), bob (staff; a non-ASCII password and name), carol (no mail, no display name, no
    /// group), the service account.
    pub fn start() -> Slapd {
        Slapd::start_with(false)
    }

    /// [`Slapd::start`] with TLS: a certificate for 127.0.0.1 from a private CA (`ca.pem`),
    /// `ldaps://` on `tls_port` and StartTLS on `port`.
    pub fn start_tls() -> Slapd {
        Slapd::start_with(true)
    }

    fn start_with(tls: bool) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let tls_lines = if tls {
            let (ca, cert, key) = super::private_ca(&["127.0.0.1", "localhost"]);
            std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
            std::fs::write(dir.path().join("server.crt"), cert).unwrap();
            std::fs::write(dir.path().join("server.key"), key).unwrap();
            format!(
                "TLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/server.crt\nTLSCertificateKeyFile {d}/server.key\n"
            )
        } else {
            String::new()
        };
        // `allow bind_anon_cred`: a bind with a DN and an empty password succeeds as an
        // anonymous bind, as on directories configured loosely: Portcullis must not take it
        // for a right password.
        std::fs::write(
            dir.path().join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {d}/slapd.pid
{tls_lines}allow bind_anon_cred
database mdb
maxsize 10485760
suffix \"{BASE_DN}\"
rootdn \"cn=admin,{BASE_DN}\"
rootpw secret
directory {d}/data
overlay memberof
limits users size.soft=500 size.hard=500 size.prtotal=unlimited
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by * none
"
            ),
        )
        .unwrap();
        let mut s = Slapd {
            port: free_port(),
            tls_port: tls.then(free_port),
            child: None,
            dir,
        };
        s.restart();
        let people = format!("ou=people,{BASE_DN}");
        let mut seed = format!(
            "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: ou=elsewhere,{BASE_DN}\nobjectClass: referral\nobjectClass: extensibleObject\nou: elsewhere\nref: ldap://127.0.0.1:9/ou=elsewhere,{BASE_DN}\n\n\
             dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: portcullis\nuserPassword: {SERVICE_PW}\n\n\
             dn: uid=alice,{people}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice Liddell\nsn: Liddell\ndisplayName: Alice Liddell\nmail: alice@example.org\nuserPassword: alice-pw\n\n\
             dn: uid=carol,{people}\nobjectClass: inetOrgPerson\nuid: carol\ncn: carol\nsn: C\nuserPassword: carol-pw\n\n\
             dn: uid=mallory,{people}\nobjectClass: inetOrgPerson\nuid: mallory\ncn: mallory\nsn: M\nuserPassword: mallory-pw\n\n"
        );
        seed.push_str(&format!(
            "dn: uid=bob,{people}\nobjectClass: inetOrgPerson\nuid: bob\ncn: bob\nsn: B\nmail: bob@example.org\n{}{}\n",
            ldif("displayName", BOB_NAME),
            ldif("userPassword", BOB_PW)
        ));
        seed.push_str(&format!(
            "dn: cn=admins,ou=groups,{BASE_DN}\nobjectClass: groupOfNames\ncn: admins\nmember: uid=alice,{people}\n\n\
             dn: cn=staff,ou=groups,{BASE_DN}\nobjectClass: groupOfNames\ncn: staff\nmember: uid=alice,{people}\nmember: uid=bob,{people}\n\n"
        ));
        s.modify("ldapadd", &seed);
        s
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Runs `ldapadd` / `ldapmodify` as the directory's admin with `ldif` on stdin.
    pub fn modify(&self, tool: &str, ldif: &str) {
        let path = self.dir.path().join("change.ldif");
        std::fs::write(&path, ldif).unwrap();
        let out = Command::new(tool)
            .args(["-x", "-H", &self.url(), "-D"])
            .arg(format!("cn=admin,{BASE_DN}"))
            .args(["-w", "secret", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `[ldap]` section for this directory, with the password file at `password_file`.
    pub fn section(&self, password_file: &std::path::Path) -> String {
        std::fs::write(password_file, format!("{SERVICE_PW}\n")).unwrap();
        format!(
            "base_dn = \"{BASE_DN}\"\nbind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\n",
            password_file.display()
        )
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// Starts it (again, on the same port, with the same data).
    pub fn restart(&mut self) {
        let tool: PathBuf = which("slapd")
            .or_else(|| Some(PathBuf::from("/usr/sbin/slapd")).filter(|p| p.exists()))
            .expect("the tests need slapd (Debian package slapd): run scripts/test");
        let child = Command::new(tool)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(match self.tls_port {
                Some(tls) => format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{tls}/", self.port),
                None => format!("ldap://127.0.0.1:{}/", self.port),
            })
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("slapd.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_secs(10),
        );
    }

    /// Kills it (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel, nothing is answered.
    pub fn hang(&self) {
        assert!(
            Command::new("kill")
                .args(["-STOP", &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        assert!(
            Command::new("kill")
                .args(["-CONT", &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        }
        self.stop();
    }
}
