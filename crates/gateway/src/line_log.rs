//! A log written line by line by its own thread behind a bounded queue: the access log and the
//! audit log. A slow or full disk loses lines (counted) but never delays a request; SIGUSR1
//! reopens the file for logrotate (writing the header again, for W3C).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, sync_channel};
use std::time::{Duration, SystemTime};

/// Where the lines go.
pub enum Target {
    /// Standard output (not reopened).
    Stdout,
    /// A file, appended to and reopened on request.
    File(PathBuf),
}

enum Message<T> {
    Item(T),
    Flush(Sender<()>),
    Reopen,
}

/// What the writer thread does with each queued item and at each (re)open.
pub struct Format<T> {
    /// Appends the line(s) for an item to the buffer.
    pub line: fn(&T, &mut String),
    /// Written first in the file, and again after each reopen (the W3C `#Fields` block).
    pub header: Option<fn(SystemTime) -> String>,
}

/// The queue and its writer thread; [`LineLog::off`] writes nothing.
pub struct LineLog<T: Send + 'static> {
    tx: Option<SyncSender<Message<T>>>,
    dropped: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<T: Send + 'static> LineLog<T> {
    /// A log that writes nothing.
    pub fn off() -> LineLog<T> {
        LineLog {
            tx: None,
            dropped: AtomicU64::new(0),
            writer: Mutex::new(None),
        }
    }

    /// Opens `target` (creating the file if needed) and starts the writer thread named `name`
    /// (`"access log"` also names the file in errors) with room for `capacity` queued items.
    pub fn open(
        name: &'static str,
        target: Target,
        capacity: usize,
        format: Format<T>,
    ) -> io::Result<LineLog<T>> {
        let out: Box<dyn Write + Send> = match &target {
            Target::Stdout => Box::new(io::stdout()),
            Target::File(path) => Box::new(append(path).map_err(|e| {
                io::Error::new(e.kind(), format!("{name} {}: {e}", path.display()))
            })?),
        };
        let mut out = BufWriter::with_capacity(64 * 1024, out);
        if let Some(header) = format.header {
            out.write_all(header(SystemTime::now()).as_bytes())?;
            out.flush()?;
        }
        let (tx, rx) = sync_channel(capacity);
        let writer = std::thread::Builder::new()
            .name(name.replace(' ', "-"))
            .spawn(move || write_loop(name, &rx, out, &format, &target))?;
        Ok(LineLog {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Whether anything is written at all (callers skip building items otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `item`; never blocks. `false` when it was lost (the writer cannot keep up).
    pub fn send(&self, item: T) -> bool {
        let Some(tx) = &self.tx else { return true };
        if tx.try_send(Message::Item(item)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Items lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reopens the file (SIGUSR1, logrotate's `postrotate`); items queued meanwhile are kept.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Reopen);
        }
    }

    /// Waits until everything queued so far is written and flushed (bounded by `timeout`).
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

impl<T: Send + 'static> Drop for LineLog<T> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

fn append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop<T>(
    name: &str,
    rx: &Receiver<Message<T>>,
    mut out: BufWriter<Box<dyn Write + Send>>,
    format: &Format<T>,
    target: &Target,
) {
    let mut line = String::with_capacity(512);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Item(item) => {
                    line.clear();
                    (format.line)(&item, &mut line);
                    match out.write_all(line.as_bytes()) {
                        Err(e) if !failing => {
                            tracing::error!(log = name, error = %e, "cannot write the log; lines are being lost");
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
                Message::Reopen => {
                    let _ = out.flush();
                    if let Target::File(path) = target {
                        match append(path) {
                            Ok(file) => {
                                out = BufWriter::with_capacity(64 * 1024, Box::new(file));
                                if let Some(header) = format.header {
                                    let _ = out.write_all(header(SystemTime::now()).as_bytes());
                                }
                                tracing::info!(log = name, file = %path.display(), "log reopened");
                            }
                            Err(e) => {
                                tracing::error!(log = name, file = %path.display(), error = %e, "cannot reopen the log; still writing to the old file")
                            }
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}
