//! The access log: W3C extended format with IIS's default fields (so GoAccess and Log Parser
//! read it), or JSON lines.
//!
//! Request handling never waits on the disk: records go through a bounded channel to a writer
//! thread, which formats, writes and flushes whenever the queue runs empty. When the queue is
//! full (a stalled disk), records are dropped and counted rather than slowing requests down.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use config::{AccessLogTarget, LogFormat};
use http::{HeaderValue, Method};
use policy::Reason;

use crate::line_log::{Format, LineLog, Target};

/// The W3C `#Fields` line: IIS's default field set.
pub const W3C_FIELDS: &str = "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) sc-status sc-substatus sc-win32-status time-taken";

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// When the request arrived.
    pub time: SystemTime,
    /// Local address the request came in on.
    pub s_ip: IpAddr,
    /// Local port.
    pub s_port: u16,
    /// Method.
    pub method: Method,
    /// Path as received.
    pub uri_stem: String,
    /// Query as received.
    pub uri_query: Option<String>,
    /// Authenticated (or attempted) user name.
    pub username: Option<String>,
    /// Client address.
    pub c_ip: IpAddr,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// `Referer`.
    pub referer: Option<HeaderValue>,
    /// Status sent.
    pub status: u16,
    /// IIS sub-status.
    pub substatus: u16,
    /// Refusal reason, if any.
    pub reason: Option<Reason>,
    /// Request id.
    pub request_id: String,
    /// Milliseconds from arrival to the end of the response.
    pub time_taken_ms: u64,
    /// Arrival instant, for `time_taken_ms`.
    pub started: Option<std::time::Instant>,
    /// Under `dynamic.logging_only`: the refusal that was not enforced.
    pub would_refuse: Option<Reason>,
}

impl Default for LogRecord {
    fn default() -> LogRecord {
        LogRecord {
            time: SystemTime::UNIX_EPOCH,
            s_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            s_port: 0,
            method: Method::GET,
            uri_stem: String::new(),
            uri_query: None,
            username: None,
            c_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            user_agent: None,
            referer: None,
            status: 0,
            substatus: 0,
            reason: None,
            request_id: String::new(),
            time_taken_ms: 0,
            started: None,
            would_refuse: None,
        }
    }
}

/// The access log sink.
pub struct AccessLog(LineLog<Box<LogRecord>>);

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> AccessLog {
        AccessLog(LineLog::off())
    }

    /// Opens the target (creating the file if needed) and starts the writer thread.
    pub fn open(target: &AccessLogTarget, format: LogFormat) -> io::Result<AccessLog> {
        let target = match target {
            AccessLogTarget::Off => return Ok(AccessLog::off()),
            AccessLogTarget::Stdout => Target::Stdout,
            AccessLogTarget::File(path) => Target::File(path.clone()),
        };
        let format: Format<Box<LogRecord>> = match format {
            LogFormat::W3c => Format {
                line: |r, out| format_w3c(r, out),
                header: Some(w3c_header),
            },
            LogFormat::Json => Format {
                line: |r, out| format_json(r, out),
                header: None,
            },
        };
        LineLog::open("access log", target, 16 * 1024, format).map(AccessLog)
    }

    /// Reopens the log file (SIGUSR1, logrotate's `postrotate`); lines queued meanwhile are kept.
    pub fn reopen(&self) {
        self.0.reopen();
    }

    /// Whether records are written at all (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.0.enabled()
    }

    /// Queues a record; never blocks.
    pub fn write(&self, mut record: LogRecord) {
        if !self.0.enabled() {
            return;
        }
        if let Some(started) = record.started {
            record.time_taken_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        self.0.send(Box::new(record));
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }

    /// Waits until everything queued so far is written and flushed (bounded by `timeout`).
    pub fn flush(&self, timeout: Duration) {
        self.0.flush(timeout);
    }
}

/// The `#` header block written when the log is opened.
pub fn w3c_header(now: SystemTime) -> String {
    let (date, time) = utc_date_time(now);
    format!(
        "#Software: Portcullis {}\n#Version: 1.0\n#Date: {date} {time}\n#Fields: {W3C_FIELDS}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// `("2026-11-27", "10:00:00")` in UTC.
pub fn utc_date_time(t: SystemTime) -> (String, String) {
    let stamp = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-27T10:00:00Z
    let (date, rest) = stamp.split_once('T').unwrap_or((&stamp, "00:00:00Z"));
    (date.to_owned(), rest.trim_end_matches('Z').to_owned())
}

/// Appends a W3C field: `-` when empty, `+` for spaces, `%XX` for control characters and `%`
/// itself is left alone (values are already URL-ish); never a raw space or line break.
fn w3c_field(out: &mut String, value: &[u8]) {
    if value.is_empty() {
        out.push('-');
        return;
    }
    for &b in value {
        match b {
            b' ' => out.push('+'),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "%{b:02X}");
            }
            0x80.. => {
                let _ = write!(out, "%{b:02X}");
            }
            _ => out.push(b as char),
        }
    }
}

/// Formats one W3C line (with its newline).
pub fn format_w3c(r: &LogRecord, out: &mut String) {
    let (date, time) = utc_date_time(r.time);
    let _ = write!(out, "{date} {time} {} {} ", r.s_ip, r.method);
    w3c_field(out, r.uri_stem.as_bytes());
    out.push(' ');
    w3c_field(out, r.uri_query.as_deref().unwrap_or("").as_bytes());
    let _ = write!(out, " {} ", r.s_port);
    w3c_field(out, r.username.as_deref().unwrap_or("").as_bytes());
    let _ = write!(out, " {} ", r.c_ip);
    w3c_field(
        out,
        r.user_agent.as_ref().map_or(&b""[..], |v| v.as_bytes()),
    );
    out.push(' ');
    w3c_field(out, r.referer.as_ref().map_or(&b""[..], |v| v.as_bytes()));
    // A request served under `dynamic.logging_only` that would have been refused carries the
    // would-be sub-status (e.g. `200 502`), so operators can count them with the same tools.
    let substatus = match (r.reason, r.would_refuse) {
        (None, Some(w)) => w.substatus(),
        _ => r.substatus,
    };
    let _ = writeln!(out, " {} {substatus} 0 {}", r.status, r.time_taken_ms);
}

/// Formats one JSON line (with its newline).
pub fn format_json(r: &LogRecord, out: &mut String) {
    let lossy = |v: &Option<HeaderValue>| {
        v.as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let value = serde_json::json!({
        "time": humantime::format_rfc3339_millis(r.time).to_string(),
        "s_ip": r.s_ip.to_string(),
        "s_port": r.s_port,
        "cs_method": r.method.as_str(),
        "cs_uri_stem": r.uri_stem,
        "cs_uri_query": r.uri_query,
        "cs_username": r.username,
        "c_ip": r.c_ip.to_string(),
        "cs_user_agent": lossy(&r.user_agent),
        "cs_referer": lossy(&r.referer),
        "sc_status": r.status,
        "sc_substatus": r.substatus,
        "sc_win32_status": 0,
        "time_taken": r.time_taken_ms,
        "reason": r.reason.map(|r| r.slug()),
        "request_id": r.request_id,
        "would_refuse": r.would_refuse.map(|w| w.slug()),
    });
    let _ = writeln!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LogRecord {
        LogRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_773_600), // 2026-11-27 10:00:00 UTC
            s_ip: "127.0.0.1".parse().unwrap(),
            s_port: 8080,
            method: Method::GET,
            uri_stem: "/private/a b".into(),
            uri_query: None,
            username: Some("alice".into()),
            c_ip: "::1".parse().unwrap(),
            user_agent: Some(HeaderValue::from_static("curl/8.5 (x)")),
            referer: None,
            status: 401,
            substatus: 1,
            reason: Some(Reason::LogonFailed),
            request_id: "r1".into(),
            time_taken_ms: 12,
            started: None,
            would_refuse: None,
        }
    }

    #[test]
    fn w3c_line_has_iis_fields_in_order() {
        let mut line = String::new();
        format_w3c(&record(), &mut line);
        assert_eq!(
            line,
            "2026-11-27 10:00:00 127.0.0.1 GET /private/a+b - 8080 alice ::1 curl/8.5+(x) - 401 1 0 12\n"
        );
        assert_eq!(line.split(' ').count(), W3C_FIELDS.split(' ').count());
    }

    #[test]
    fn w3c_fields_cannot_inject_lines() {
        let mut r = record();
        r.username = Some("eve\nfake line".into());
        let mut line = String::new();
        format_w3c(&r, &mut line);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("eve%0Afake+line"));
    }

    #[test]
    fn header_names_the_fields() {
        let h = w3c_header(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_773_600));
        assert!(h.contains("#Date: 2026-11-27 10:00:00\n"));
        assert!(h.ends_with(&format!("#Fields: {W3C_FIELDS}\n")));
    }

    #[test]
    fn json_line_carries_reason_and_substatus() {
        let mut line = String::new();
        format_json(&record(), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["sc_substatus"], 1);
        assert_eq!(v["reason"], "logon_failed");
        assert_eq!(v["cs_username"], "alice");
    }
}
