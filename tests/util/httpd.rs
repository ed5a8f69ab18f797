//! Apache httpd, started privately for a test: its configuration, run files and logs in a
//! folder of the test's, on a free loopback port, stopped by PID when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for_port};

pub struct Httpd {
    child: Child,
    pub addr: SocketAddr,
}

impl Httpd {
    /// Runs httpd in the foreground with `modules` (`"mpm_event"`, `"dav_fs"` …: each is
    /// `mod_NAME.so`) and `body`, in which `@DIR@` stands for `dir`, where the run files go.
    pub fn start(dir: &Path, modules: &[&str], body: &str) -> Httpd {
        let httpd = ["/usr/sbin/apache2", "/usr/sbin/httpd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("the tests need Apache httpd (Debian package apache2): run scripts/test");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        // httpd started as root serves as an unprivileged user: it must be able to write.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("a+rwx")
            .arg(dir)
            .status();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = dir.display().to_string();
        let mut conf = String::new();
        for module in modules {
            conf.push_str(&format!(
                "LoadModule {module}_module /usr/lib/apache2/modules/mod_{module}.so\n"
            ));
        }
        conf.push_str(&format!(
            "ServerName 127.0.0.1\nListen {addr}\nUser nobody\nGroup nogroup\nPidFile {d}/run/httpd.pid\nDefaultRuntimeDir {d}/run\nErrorLog {d}/error.log\n"
        ));
        conf.push_str(&body.replace("@DIR@", &d));
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(httpd)
            .args(["-DFOREGROUND", "-f"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(addr, Duration::from_secs(20));
        Httpd { child, addr }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        // SIGTERM: the parent stops its children.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
