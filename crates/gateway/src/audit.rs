//! The audit log (`[log] audit = PATH`): one JSON object per line for what security reviews ask
//! about — sign-ins (success and failure, with the user name as typed, client address, scheme and
//! reason), lockouts, configuration reloads (accepted or refused, with
//! the file's SHA-256). Never a password, hash, token or session id.
//!
//! Like the access log it is written by its own thread behind a bounded queue: a slow or full
//! disk loses audit lines (counted, and said once in the operational log) but never delays a
//! request. SIGUSR1 reopens the file for logrotate.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::SystemTime;

use serde_json::{Value, json};

enum Message {
    Line(String),
    Reopen,
    Flush(std::sync::mpsc::Sender<()>),
}

/// The audit log sink.
pub struct AuditLog {
    tx: Option<SyncSender<Message>>,
    dropped: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// No audit log.
    pub fn off() -> AuditLog {
        AuditLog {
            tx: None,
            dropped: AtomicU64::new(0),
            writer: Mutex::new(None),
        }
    }

    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()))
            })?;
        let (tx, rx) = sync_channel(4096);
        let owned = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(rx, BufWriter::new(file), &owned))?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records `event` with its fields (adds `time` and `event`). Never blocks.
    pub fn record(&self, event: &str, fields: Value) {
        let Some(tx) = &self.tx else { return };
        let mut line = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "event": event,
        });
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        if tx.try_send(Message::Line(format!("{line}\n"))).is_err()
            && self.dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
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
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reopens the file (SIGUSR1).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Reopen);
        }
    }

    /// Waits until the lines queued so far are on disk (bounded).
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            if tx.send(Message::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(std::time::Duration::from_secs(5));
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

fn write_loop(rx: Receiver<Message>, mut out: BufWriter<std::fs::File>, path: &Path) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => match out.write_all(line.as_bytes()) {
                    Err(e) if !failing => {
                        tracing::error!(file = %path.display(), error = %e, "cannot write the audit log");
                        failing = true;
                    }
                    Err(_) => {}
                    Ok(()) => failing = false,
                },
                Message::Reopen => {
                    let _ = out.flush();
                    match OpenOptions::new().create(true).append(true).open(path) {
                        Ok(f) => out = BufWriter::new(f),
                        Err(e) => {
                            tracing::error!(file = %path.display(), error = %e, "cannot reopen the audit log")
                        }
                    }
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// SHA-256 of a file, hex, for reload records ("" when unreadable).
pub fn file_sha256(path: &Path) -> String {
    use sha2::Digest;
    match std::fs::read(path) {
        Ok(bytes) => sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => String::new(),
    }
}
