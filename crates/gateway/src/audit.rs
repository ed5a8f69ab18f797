//! The audit log (`[log] audit = PATH`): one JSON object per line for what security reviews ask
//! about — sign-ins (success and failure, with the user name as typed, client address, scheme and
//! reason), lockouts, configuration reloads (accepted or refused, with
//! the file's SHA-256). Never a password, hash, token or session id.
//!
//! Like the access log it is a [`crate::line_log::LineLog`]: a slow or full disk loses audit
//! lines (counted, and said once in the operational log) but never delays a request. SIGUSR1
//! reopens the file for logrotate.

use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::line_log::{Format, LineLog, Target};

/// The audit log sink.
pub struct AuditLog(LineLog<String>);

impl AuditLog {
    /// No audit log.
    pub fn off() -> AuditLog {
        AuditLog(LineLog::off())
    }

    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let format: Format<String> = Format {
            line: |line, out| out.push_str(line),
            header: None,
        };
        LineLog::open("audit log", Target::File(path.to_path_buf()), 4096, format).map(AuditLog)
    }

    /// Records `event` with its fields (adds `time` and `event`). Never blocks.
    pub fn record(&self, event: &str, fields: Value) {
        if !self.0.enabled() {
            return;
        }
        let mut line = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "event": event,
        });
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        if !self.0.send(format!("{line}\n")) && self.0.dropped() == 1 {
            tracing::error!("the audit log cannot keep up; audit lines are being lost");
        }
    }

    /// A sign-in attempt.
    pub fn sign_in(
        &self,
        ok: bool,
        user: &str,
        client: IpAddr,
        scheme: &str,
        reason: Option<&str>,
    ) {
        self.record(
            if ok { "sign_in" } else { "sign_in_failed" },
            json!({ "user": user, "client": client.to_string(), "scheme": scheme, "reason": reason }),
        );
    }

    /// Lines lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }

    /// Reopens the file (SIGUSR1).
    pub fn reopen(&self) {
        self.0.reopen();
    }

    /// Waits until the lines queued so far are on disk (bounded).
    pub fn flush(&self) {
        self.0.flush(std::time::Duration::from_secs(5));
    }
}

/// SHA-256 of a file, hex, for reload records ("" when unreadable).
pub fn file_sha256(path: &Path) -> String {
    std::fs::read(path).map_or_else(|_| String::new(), |bytes| store::sha256_hex(&bytes))
}
