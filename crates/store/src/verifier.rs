//! The credential verifier used on every request: cached, bounded, reloading.
//!
//! Password hashes are deliberately slow (bcrypt, argon2), and HTTP Basic sends
//! the credentials with every request, so checking each one from scratch would
//! cost tens of milliseconds of CPU per request. [`Verifier`] therefore:
//!
//! * caches outcomes (accepted *and* refused) for `cache_ttl`, keyed by an
//!   HMAC-SHA256 of user and password under a per-process random key, so
//!   neither the plaintext nor an offline-attackable unsalted hash stays in
//!   memory;
//! * runs cache misses on tokio's blocking pool, at most `max_parallel` at a
//!   time (the permit is taken before spawning), so a flood of wrong passwords
//!   waits in line instead of occupying every async worker and blocking thread;
//! * coalesces concurrent misses for the same credentials (a browser opening a
//!   page fires many requests with the same header at once) into one check;
//! * notices edits of the user file: at most once per second a request `stat`s
//!   it, and a changed mtime, size or inode triggers a reload that is swapped in
//!   atomically and drops every cached outcome. A reload that fails keeps the
//!   previous users.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hmac::{Hmac, KeyInit as _, Mac as _};
use moka::sync::Cache;
use sha2::Sha256;
use tokio::sync::OnceCell;

use crate::hash_queue::{Busy, HashQueue, Lane};

use crate::htpasswd::{InlineUserError, LineProblem, UserFile};

/// Most outcomes kept in the cache.
const CACHE_CAPACITY: u64 = 100_000;

/// Shortest time between two `stat`s of the user file on the request path.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where the users come from.
#[derive(Debug, Clone)]
pub enum UserSource {
    /// An htpasswd file, re-read when it changes.
    File(PathBuf),
    /// Fixed `(user, hash)` pairs from the configuration.
    Inline(Vec<(String, String)>),
    /// A SQLite user database (`auth.users = "sqlite:PATH"`): enabled users, re-read when another
    /// connection (`portcullis users …`) changes it.
    Sqlite(PathBuf),
    /// A PostgreSQL user database (`auth.users = "postgres://…"`): the SQLite schema, shared by
    /// several instances; changes announced with NOTIFY and re-read at once.
    Postgres(String),
    /// An LDAP directory (`auth.users = "ldap://…"`): checked by a bind, outcomes cached like
    /// hash checks; with `ldap.second_factors`, the user database that keeps the directory
    /// users' TOTP second factors.
    Ldap(Arc<crate::ldap::Directory>, Option<crate::sqlite::Location>),
}

/// Why a [`Verifier`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The user file could not be read.
    #[error("cannot read user file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An inline user has an unusable name or hash.
    #[error("invalid inline user: {0}")]
    Inline(#[from] InlineUserError),
    /// The SQLite user database could not be read.
    #[error("{path}: {error}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What went wrong.
        error: crate::sqlite::DbError,
    },
}

/// The outcome of a credential check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// User exists and the password matches.
    Accepted,
    /// Unknown user or wrong password (deliberately indistinguishable).
    Refused,
    /// Not checked: every hashing worker was busy for longer than the caller's deadline.
    Busy(Busy),
    /// Not checked: the directory did not answer (never a refusal: nobody is told a right
    /// password is wrong).
    Unavailable(crate::ldap::DirectoryError),
}

/// Why a check gave no answer.
#[derive(Debug, Clone)]
enum Unchecked {
    Busy(Busy),
    Unavailable(crate::ldap::DirectoryError),
}

impl From<Unchecked> for Verification {
    fn from(u: Unchecked) -> Self {
        match u {
            Unchecked::Busy(b) => Verification::Busy(b),
            Unchecked::Unavailable(e) => Verification::Unavailable(e),
        }
    }
}

impl From<bool> for Verification {
    fn from(accepted: bool) -> Self {
        if accepted {
            Self::Accepted
        } else {
            Self::Refused
        }
    }
}

/// The longest password that is hashed: a longer one is refused unchecked.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How [`Verifier::verify_traced`] came by its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Without a hash check of its own: from the cache, or from a concurrent check of the same
    /// credentials.
    Cached,
    /// This call ran a password hash check.
    Hashed,
}

/// Checks user/password pairs against a user source; share it in an `Arc`.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

/// A user set together with the reload generation it belongs to.
struct Snapshot {
    users: UserFile,
    generation: u64,
    /// How long checking the timing dummy took when the users were loaded: every check lasts
    /// at least this long, so a user whose hash is cheaper than the costliest one (a `{SHA}`
    /// line in a bcrypt file) does not answer faster than an unknown user would.
    floor: Duration,
}

impl Snapshot {
    fn new(users: UserFile, generation: u64) -> Snapshot {
        let floor = users.timing_dummy().map_or(Duration::ZERO, |dummy| {
            let started = Instant::now();
            std::hint::black_box(dummy.verify(b"timing floor"));
            started.elapsed()
        });
        Snapshot {
            users,
            generation,
            floor,
        }
    }
}

/// A cached outcome, valid only for the generation it was computed against.
#[derive(Clone, Copy)]
struct Outcome {
    generation: u64,
    accepted: bool,
}

type CacheKey = [u8; 32];
type InflightKey = (CacheKey, u64);

/// Identity of a file version as far as `stat` can tell (also used by the gateway to notice
/// config-file changes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileStamp {
    /// Stats `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        })
    }
}

#[derive(Default)]
struct ReloadState {
    /// Stamp of the file version currently loaded.
    stamp: Option<FileStamp>,
    /// Whether the last attempt failed (so failures are logged once, not every second).
    failing: bool,
}

/// The open user database and the `data_version` the users were loaded at.
struct SqliteWatch {
    location: crate::sqlite::Location,
    db: Mutex<crate::sqlite::UserDb>,
    version: AtomicI64,
    groups: ArcSwap<HashMap<String, Vec<String>>>,
    /// Users with a TOTP second factor.
    totp: ArcSwap<std::collections::HashSet<String>>,
    /// The API tokens of enabled users, by the SHA-256 of the token.
    api_tokens: ArcSwap<HashMap<[u8; 32], Arc<LiveToken>>>,
    /// When each token (by id) was last noted as used, kept across reloads (a reload reads
    /// `last_used` as last written, which may be up to a minute old).
    token_used: Mutex<HashMap<String, i64>>,
}

/// A token as the verifier holds it: its row, and when it was last noted as used, in memory
/// (the database is written at most once per [`TOKEN_USE_WRITE_EVERY`] per token, never once
/// per request).
struct LiveToken {
    row: crate::sqlite::ApiToken,
    /// Unix seconds; 0: never.
    noted: AtomicI64,
}

fn live_tokens(
    rows: HashMap<[u8; 32], crate::sqlite::ApiToken>,
    noted: &HashMap<String, i64>,
) -> HashMap<[u8; 32], Arc<LiveToken>> {
    rows.into_iter()
        .map(|(key, row)| {
            let at = noted.get(&row.id).copied().or(row.last_used).unwrap_or(0);
            (
                key,
                Arc::new(LiveToken {
                    row,
                    noted: AtomicI64::new(at),
                }),
            )
        })
        .collect()
}

/// How often a token's `last_used` is written at most.
const TOKEN_USE_WRITE_EVERY: i64 = 60;

/// What an API token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// A live token of an enabled user.
    Valid {
        /// The user it acts as.
        user: String,
        /// The token's id, when this is the first request ever made with it (for the audit
        /// log).
        first_use: Option<String>,
    },
    /// A token past its expiry (unix seconds).
    Expired {
        /// The token's id.
        id: String,
        /// When it expired.
        at: i64,
    },
    /// No such token (never made, revoked, or its user disabled or deleted).
    Unknown,
}

struct Inner {
    path: Option<PathBuf>,
    sqlite: Option<SqliteWatch>,
    directory: Option<Arc<crate::ldap::Directory>>,
    snapshot: ArcSwap<Snapshot>,
    cache: Option<Cache<CacheKey, Outcome>>,
    /// Credentials checked by [`Verifier::check_refused_anyway`] lately (apart from `cache`),
    /// and whether the password was right.
    refused_anyway: Option<Cache<CacheKey, bool>>,
    mac: Hmac<Sha256>,
    permits: HashQueue,
    inflight: Mutex<HashMap<InflightKey, Arc<OnceCell<bool>>>>,
    /// The user file is looked at once per poll interval at most (it is on the request path).
    poll: crate::Throttle,
    reload: Mutex<ReloadState>,
    hash_checks: AtomicU64,
    /// Hash checks running right now, and the most ever seen at once.
    running: AtomicUsize,
    peak_running: AtomicUsize,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("path", &self.inner.path)
            .field("users", &self.user_count())
            .field("generation", &self.generation())
            .field("cache", &self.inner.cache.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn log_problems(origin: &str, problems: &[LineProblem]) {
    for problem in problems {
        tracing::warn!("{origin}:{}: {}", problem.line, problem.message);
    }
}

fn log_if_empty(origin: &str, users: &UserFile) {
    if users.is_empty() {
        tracing::warn!("{origin}: no usable users; every login will be refused");
    }
}

impl Verifier {
    /// Loads the users and builds a verifier.
    ///
    /// `cache_ttl` of zero disables the outcome cache; `max_parallel` bounds
    /// concurrent hash checks (zero is treated as one).
    ///
    /// # Errors
    /// [`LoadError`] if the file cannot be read or an inline user is invalid.
    /// A file without any usable user is accepted (with warnings).
    pub fn new(
        source: UserSource,
        cache_ttl: Duration,
        max_parallel: usize,
    ) -> Result<Self, LoadError> {
        Self::with_poll_interval(source, cache_ttl, max_parallel, POLL_INTERVAL)
    }

    fn with_poll_interval(
        source: UserSource,
        cache_ttl: Duration,
        max_parallel: usize,
        poll_interval: Duration,
    ) -> Result<Self, LoadError> {
        let mut sqlite = None;
        let mut directory = None;
        let (path, users, stamp) = match source {
            UserSource::Ldap(dir, factors) => {
                directory = Some(dir);
                let path = match &factors {
                    Some(crate::sqlite::Location::Sqlite(p)) => Some(p.clone()),
                    _ => None,
                };
                if let Some(location) = factors {
                    // Its users' hashes are never checked: passwords are the directory's.
                    let (watch, _) = open_watch(location, true)?;
                    sqlite = Some(watch);
                }
                (path, UserFile::default(), None)
            }
            UserSource::Sqlite(_) | UserSource::Postgres(_) => {
                let (location, path) = match source {
                    UserSource::Sqlite(path) => {
                        (crate::sqlite::Location::Sqlite(path.clone()), Some(path))
                    }
                    UserSource::Postgres(url) => (crate::sqlite::Location::Postgres(url), None),
                    _ => unreachable!("matched above"),
                };
                let (watch, users) = open_watch(location, false)?;
                sqlite = Some(watch);
                (path, users, None)
            }
            UserSource::File(path) => {
                let read_error = |source| LoadError::Read {
                    path: path.clone(),
                    source,
                };
                // Stat before reading: if the file changes in between, the next
                // poll sees a different stamp and loads it again.
                let stamp = FileStamp::of(&path).map_err(read_error)?;
                let (users, problems) = UserFile::load(&path).map_err(read_error)?;
                let origin = path.display().to_string();
                log_problems(&origin, &problems);
                log_if_empty(&origin, &users);
                (Some(path), users, Some(stamp))
            }
            UserSource::Inline(entries) => {
                let users = UserFile::from_entries(entries)?;
                log_if_empty("inline users", &users);
                (None, users, None)
            }
        };

        let snapshot = Snapshot::new(users, 0);
        let floor = snapshot.floor;
        let cache = (!cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(cache_ttl)
                .build()
        });
        let refused_anyway = (!cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(cache_ttl)
                .build()
        });
        let key: [u8; 32] = rand::random();
        let mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");

        let verifier = Self {
            inner: Arc::new(Inner {
                path,
                sqlite,
                directory,
                snapshot: ArcSwap::from_pointee(snapshot),
                cache,
                refused_anyway,
                mac,
                permits: HashQueue::new(max_parallel, floor),
                inflight: Mutex::new(HashMap::new()),
                poll: crate::Throttle::new(poll_interval),
                reload: Mutex::new(ReloadState {
                    stamp,
                    failing: false,
                }),
                hash_checks: AtomicU64::new(0),
                running: AtomicUsize::new(0),
                peak_running: AtomicUsize::new(0),
            }),
        };
        if let Some(watch) = &verifier.inner.sqlite
            && let crate::sqlite::Location::Postgres(url) = &watch.location
        {
            listen(url.clone(), Arc::downgrade(&verifier.inner));
        }
        Ok(verifier)
    }

    /// Checks `password` for `user`, from the cache when possible.
    pub async fn verify(&self, user: &str, password: &str) -> Verification {
        self.verify_traced(user, password).await.0
    }

    /// [`Verifier::verify_queued`] in the preferred lane with a generous deadline.
    pub async fn verify_traced(&self, user: &str, password: &str) -> (Verification, Answer) {
        self.verify_queued(user, password, Lane::Preferred, Duration::from_secs(60))
            .await
    }

    /// [`Verifier::verify`], also telling whether this call ran a password hash check itself
    /// ([`Answer::Hashed`]) or was answered without one ([`Answer::Cached`]: from the cache, or
    /// by a concurrent check of the same credentials). For metrics.
    ///
    /// A check that needs a hash waits for a worker in `lane` for at most `deadline`; past it
    /// (or when the checks ahead would already take longer) the answer is
    /// [`Verification::Busy`], and nothing is cached.
    pub async fn verify_queued(
        &self,
        user: &str,
        password: &str,
        lane: Lane,
        deadline: Duration,
    ) -> (Verification, Answer) {
        // Hashing cost grows with the length (with its square for SHA-512-crypt): a password
        // no person uses is refused unchecked.
        if password.len() > MAX_PASSWORD_BYTES {
            return (Verification::Refused, Answer::Cached);
        }
        self.poll_file().await;

        let snapshot = self.inner.snapshot.load_full();
        let generation = snapshot.generation;
        let key = self.inner.cache_key(user, password);
        if let Some(accepted) = self.inner.cached(&key, generation) {
            return (accepted.into(), Answer::Cached);
        }
        let hashed = AtomicBool::new(false);

        // Concurrent misses for the same credentials share one check. If the
        // request running it is abandoned, a waiting one takes over.
        let inflight = Inflight::join(&self.inner, (key, generation));
        let checked = inflight
            .cell
            .get_or_try_init(|| async {
                // A check that just finished may have left its entry already;
                // its outcome is in the cache by then.
                if let Some(accepted) = self.inner.cached(&key, generation) {
                    return Ok(accepted);
                }
                let accepted = self
                    .inner
                    .check(snapshot, user, password, lane, deadline)
                    .await?;
                hashed.store(true, Ordering::Relaxed);
                if let Some(cache) = &self.inner.cache {
                    cache.insert(
                        key,
                        Outcome {
                            generation,
                            accepted,
                        },
                    );
                }
                Ok::<bool, Unchecked>(accepted)
            })
            .await
            .copied();
        drop(inflight);
        let accepted = match checked {
            Ok(accepted) => accepted,
            Err(unchecked) => return (unchecked.into(), Answer::Cached),
        };
        let answer = if hashed.into_inner() {
            Answer::Hashed
        } else {
            Answer::Cached
        };
        (accepted.into(), answer)
    }

    /// A password check for a sign-in that is refused whatever the password (a second-factor
    /// user trying Basic): it costs what a check of the same credentials costs anyone. New
    /// credentials are hashed; the same ones again within `cache_ttl` are answered at once, as
    /// the outcome cache answers a repeated guess. It has its own record of what it checked: the
    /// outcome cache would answer the *right* password at once (after the user's own sign-in)
    /// and a new wrong one slowly, telling them apart. The last value says whether the password
    /// was right (the refusal can then say why: the account needs its second factor).
    pub async fn check_refused_anyway(
        &self,
        user: &str,
        password: &str,
        lane: Lane,
        deadline: Duration,
    ) -> (Verification, Answer, bool) {
        if password.len() > MAX_PASSWORD_BYTES {
            return (Verification::Refused, Answer::Cached, false);
        }
        self.poll_file().await;
        let key = self.inner.cache_key(user, password);
        if let Some(seen) = &self.inner.refused_anyway
            && let Some(right) = seen.get(&key)
        {
            return (Verification::Refused, Answer::Cached, right);
        }
        let snapshot = self.inner.snapshot.load_full();
        match self
            .inner
            .check(snapshot, user, password, lane, deadline)
            .await
        {
            Ok(right) => {
                if let Some(seen) = &self.inner.refused_anyway {
                    seen.insert(key, right);
                }
                (Verification::Refused, Answer::Hashed, right)
            }
            Err(unchecked) => (unchecked.into(), Answer::Cached, false),
        }
    }

    /// The stamp of `user`'s current password ([`crate::StoredHash::stamp`]), `None` when the
    /// user is not in the store now (deleted, or disabled in SQLite). A session remembers the
    /// stamp of its sign-in: a different one means the password changed, and the session ends.
    pub async fn credential_stamp(&self, user: &str) -> Option<u64> {
        if let Some(directory) = &self.inner.directory {
            // The directory keeps the password: a session lasts while the entry does (the
            // gateway looks it up first, see [`Verifier::directory`]).
            return directory.cached_entry(user).map(|_| 0);
        }
        self.poll_file().await;
        self.inner
            .snapshot
            .load()
            .users
            .get(user)
            .map(crate::StoredHash::stamp)
    }

    /// Re-reads the user file now, whether or not it changed (e.g. on SIGHUP).
    ///
    /// Blocks on file I/O and hashing the timing dummy; from async code call it
    /// via `spawn_blocking`. Does nothing for inline users.
    pub fn reload_now(&self) {
        if let Some(directory) = &self.inner.directory {
            directory.forget_entries();
            if let Some(cache) = &self.inner.cache {
                cache.invalidate_all();
            }
            return;
        }
        if let Some(watch) = &self.inner.sqlite {
            return self.inner.reload_sqlite(watch, true);
        }
        if let Some(path) = &self.inner.path {
            let mut state = lock(&self.inner.reload);
            let stamp = FileStamp::of(path).ok();
            self.inner.reload_locked(path, &mut state, stamp);
        }
    }

    /// Records a successful sign-in in the user database (no-op for other sources). Runs on the
    /// blocking pool and does not wait: the sign-in never waits for the disk.
    pub fn record_sign_in(&self, user: &str) {
        if self.inner.sqlite.is_none() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let user = user.to_owned();
        tokio::task::spawn_blocking(move || {
            // No need to note `data_version` here: it never changes for this connection's own
            // writes (PostgreSQL: last_sign_in does not bump the change counter), and noting it
            // could hide another connection's change.
            match inner
                .sqlite
                .as_ref()
                .and_then(|w| w.try_with_db(|db| db.record_sign_in(&user)))
            {
                Some(Err(e)) => tracing::warn!("cannot record the sign-in of {user}: {e}"),
                None => tracing::debug!(
                    "the user database is busy: the sign-in of {user} is not recorded"
                ),
                Some(Ok(())) => {}
            }
        });
    }

    /// The directory, when users live in LDAP.
    #[must_use]
    pub fn directory(&self) -> Option<&Arc<crate::ldap::Directory>> {
        self.inner.directory.as_ref()
    }

    /// The groups the user database gives `user` (`None` when users do not come from SQLite or
    /// PostgreSQL; a directory's groups come with its entry, see [`Verifier::directory`]).
    pub fn groups_of(&self, user: &str) -> Option<Vec<String>> {
        if self.inner.directory.is_some() {
            return None;
        }
        let watch = self.inner.sqlite.as_ref()?;
        Some(watch.groups.load().get(user).cloned().unwrap_or_default())
    }

    /// Checks an API token (SQLite users only): a SHA-256 and a map lookup, never the password
    /// hash queue. The database is looked at again first if it may have changed (a revoked
    /// token, a disabled user stop working within the poll interval). A valid token's use is
    /// noted in memory and written to the database at most once a minute.
    pub async fn check_api_token(&self, token: &str, unix_now: i64) -> TokenCheck {
        let Some(watch) = &self.inner.sqlite else {
            return TokenCheck::Unknown;
        };
        self.poll_file().await;
        let key: [u8; 32] = {
            use sha2::Digest as _;
            Sha256::digest(token.as_bytes()).into()
        };
        let found = watch.api_tokens.load().get(&key).cloned();
        let Some(found) = found else {
            return TokenCheck::Unknown;
        };
        let row = &found.row;
        if let Some(at) = row.expires
            && at <= unix_now
        {
            return TokenCheck::Expired {
                id: row.id.clone(),
                at,
            };
        }
        // One request in a minute per token wins the compare-exchange and writes.
        let noted = found.noted.load(Ordering::Relaxed);
        let write = unix_now - noted >= TOKEN_USE_WRITE_EVERY
            && found
                .noted
                .compare_exchange(noted, unix_now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let first_use = write && noted == 0;
        if write {
            lock(&watch.token_used).insert(row.id.clone(), unix_now);
            let inner = Arc::clone(&self.inner);
            let id = row.id.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(watch) = &inner.sqlite
                    && let Some(Err(e)) = watch.try_with_db(|db| db.touch_api_token(&id, unix_now))
                {
                    tracing::warn!("cannot record the use of token {id}: {e}");
                }
            });
        }
        TokenCheck::Valid {
            user: row.user.clone(),
            first_use: first_use.then(|| row.id.clone()),
        }
    }

    /// Whether `user` has a TOTP second factor (SQLite users only; the database is looked at
    /// again first if it may have changed, as for a password check).
    pub async fn has_second_factor(&self, user: &str) -> bool {
        if self.inner.sqlite.is_none() {
            return false;
        }
        self.poll_file().await;
        self.inner
            .sqlite
            .as_ref()
            .is_some_and(|w| w.totp.load().contains(user))
    }

    /// Checks a TOTP code of `user` (on the blocking pool: it writes the spent step).
    ///
    /// # Errors
    /// The user database could not be asked (a PostgreSQL outage): the code was neither
    /// accepted nor refused.
    pub async fn check_second_factor(&self, user: &str, code: &str) -> Result<bool, String> {
        if self.inner.sqlite.is_none() {
            return Ok(false);
        }
        let inner = Arc::clone(&self.inner);
        let (user, code) = (user.to_owned(), code.to_owned());
        let task = tokio::task::spawn_blocking(move || {
            let Some(watch) = &inner.sqlite else {
                return Ok(false);
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // (`data_version` is not noted: this connection's own write never changes it.)
            watch
                .with_db(|db| db.check_totp(&user, &code, now))
                .map_err(|e| {
                    tracing::error!("cannot check a TOTP code: {e}");
                    e.to_string()
                })
        });
        // A database that hangs: neither right nor wrong, said within the limit.
        match tokio::time::timeout(crate::sqlite::PG_TIMEOUT * 2, task).await {
            Ok(done) => done.map_err(|e| e.to_string())?,
            Err(_) => Err("the user database did not answer in time".to_owned()),
        }
    }

    /// Number of successful reloads since creation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.inner.snapshot.load().generation
    }

    /// Whether `user` is an enabled user of a SQLite user database (always `true` for other
    /// sources, which have no disabled users, and for a directory, which the filter decides).
    #[must_use]
    pub fn is_enabled_user(&self, user: &str) -> bool {
        self.inner.sqlite.is_none()
            || self.inner.directory.is_some()
            || self.inner.snapshot.load().users.contains(user)
    }

    /// Number of users currently loaded.
    #[must_use]
    pub fn user_count(&self) -> usize {
        self.inner.snapshot.load().users.len()
    }

    /// Number of password hash checks run so far (cache misses).
    #[must_use]
    pub fn hash_checks(&self) -> u64 {
        self.inner.hash_checks.load(Ordering::Relaxed)
    }

    /// Stats the file if the poll interval has passed, reloading it if it changed.
    async fn poll_file(&self) {
        if self.inner.path.is_none() {
            return;
        }
        // One request polls; the others carry on with the current users.
        if !self.inner.poll.due() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        if let Err(e) = tokio::task::spawn_blocking(move || inner.reload_if_changed()).await {
            tracing::error!("user file check failed: {e}");
        }
    }
}

impl Inner {
    fn cache_key(&self, user: &str, password: &str) -> CacheKey {
        let mut mac = self.mac.clone();
        mac.update(&(user.len() as u64).to_le_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The cached outcome for `key`, if computed against `generation`.
    fn cached(&self, key: &CacheKey, generation: u64) -> Option<bool> {
        self.cache
            .as_ref()
            .and_then(|cache| cache.get(key))
            .filter(|outcome| outcome.generation == generation)
            .map(|outcome| outcome.accepted)
    }

    /// Runs one hash check on the blocking pool, holding a worker's permit throughout.
    async fn check(
        self: &Arc<Self>,
        snapshot: Arc<Snapshot>,
        user: &str,
        password: &str,
        lane: Lane,
        deadline: Duration,
    ) -> Result<bool, Unchecked> {
        if let Some(directory) = &self.directory {
            // A network round trip, not CPU: no hashing worker, the directory's own pool and
            // timeout bound it.
            self.hash_checks.fetch_add(1, Ordering::Relaxed);
            return match directory.authenticate(user, password).await {
                Ok(crate::ldap::DirectoryCheck::Accepted(_)) => Ok(true),
                Ok(crate::ldap::DirectoryCheck::Refused) => Ok(false),
                Err(e) => Err(Unchecked::Unavailable(e)),
            };
        }
        let permit = self
            .permits
            .acquire(lane, deadline)
            .await
            .map_err(Unchecked::Busy)?;
        let queue = self.permits.clone();
        self.hash_checks.fetch_add(1, Ordering::Relaxed);
        let user = user.to_owned();
        let mut password = password.as_bytes().to_vec();
        let inner = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the request is abandoned.
            let _permit = permit;
            let running = inner.running.fetch_add(1, Ordering::SeqCst) + 1;
            inner.peak_running.fetch_max(running, Ordering::SeqCst);
            let started = Instant::now();
            let accepted = snapshot.users.verify(&user, &password);
            let elapsed = started.elapsed();
            queue.record(elapsed);
            inner.running.fetch_sub(1, Ordering::SeqCst);
            password.fill(0);
            std::hint::black_box(&password);
            (accepted, snapshot.floor.saturating_sub(elapsed))
        });
        match task.await {
            Ok((accepted, short)) => {
                // Waiting, not hashing: the padding costs no CPU and holds no permit.
                if !short.is_zero() {
                    tokio::time::sleep(short).await;
                }
                Ok(accepted)
            }
            Err(e) => {
                tracing::error!("password check task failed: {e}");
                Ok(false)
            }
        }
    }

    fn reload_if_changed(&self) {
        if let Some(watch) = &self.sqlite {
            return self.reload_sqlite(watch, false);
        }
        let Some(path) = &self.path else { return };
        let mut state = lock(&self.reload);
        match FileStamp::of(path) {
            Ok(stamp) if state.stamp == Some(stamp) => {}
            Ok(stamp) => self.reload_locked(path, &mut state, Some(stamp)),
            Err(e) => {
                if !state.failing {
                    tracing::error!(
                        "cannot stat user file {}: {e}; keeping the previous users",
                        path.display()
                    );
                    state.failing = true;
                }
            }
        }
    }

    /// Re-reads the enabled users when another connection changed the database (or `force`).
    fn reload_sqlite(&self, watch: &SqliteWatch, force: bool) {
        let loaded = watch.with_db(|db| {
            let v = db.data_version()?;
            if !force && v == watch.version.load(Ordering::Relaxed) {
                return Ok(None);
            }
            Ok(Some((
                v,
                db.enabled_users()?,
                db.all_groups()?,
                db.totp_users()?,
                db.live_api_tokens()?,
            )))
        });
        match loaded {
            Ok(None) => {}
            Ok(Some((version, users, groups, totp, api_tokens))) => {
                watch.version.store(version, Ordering::Relaxed);
                watch.groups.store(Arc::new(groups));
                watch.totp.store(Arc::new(totp));
                let noted = lock(&watch.token_used).clone();
                watch
                    .api_tokens
                    .store(Arc::new(live_tokens(api_tokens, &noted)));
                let generation = self.snapshot.load().generation + 1;
                let count = users.len();
                // With a directory the database only keeps second factors: no passwords.
                let users = if self.directory.is_some() {
                    UserFile::default()
                } else {
                    users
                };
                self.snapshot
                    .store(Arc::new(Snapshot::new(users, generation)));
                if let Some(cache) = &self.cache {
                    cache.invalidate_all();
                }
                tracing::info!("reloaded the user database: {count} enabled users");
            }
            Err(e) => {
                tracing::error!("cannot read the user database: {e}; keeping the previous users")
            }
        }
    }

    fn reload_locked(&self, path: &Path, state: &mut ReloadState, stamp: Option<FileStamp>) {
        match UserFile::load(path) {
            Ok((users, problems)) => {
                let origin = path.display().to_string();
                log_problems(&origin, &problems);
                log_if_empty(&origin, &users);
                let generation = self.snapshot.load().generation + 1;
                let count = users.len();
                self.snapshot
                    .store(Arc::new(Snapshot::new(users, generation)));
                if let Some(cache) = &self.cache {
                    cache.invalidate_all();
                }
                state.stamp = stamp;
                state.failing = false;
                tracing::info!("reloaded user file {origin}: {count} users");
            }
            Err(e) => {
                if !state.failing {
                    tracing::error!(
                        "cannot read user file {}: {e}; keeping the previous users",
                        path.display()
                    );
                    state.failing = true;
                }
            }
        }
    }
}

/// Opens a user database and reads what the verifier keeps of it. `factors_only`: the database
/// only holds second factors (and tokens) of users who live in a directory.
fn open_watch(
    location: crate::sqlite::Location,
    factors_only: bool,
) -> Result<(SqliteWatch, UserFile), LoadError> {
    let shown = location.display();
    let db_error = |error| LoadError::Sqlite {
        path: PathBuf::from(shown.clone()),
        error,
    };
    // The PostgreSQL client blocks (it runs its own small runtime), which must not
    // happen on an async thread: load on a thread of its own.
    let loaded = std::thread::scope(|s| {
        s.spawn(|| {
            let db = location.open()?;
            let version = db.data_version()?;
            let users = db.enabled_users()?;
            let groups = db.all_groups()?;
            let totp = db.totp_users()?;
            let api_tokens = db.live_api_tokens()?;
            let schema = db.schema_version()?;
            Ok::<_, crate::sqlite::DbError>((db, version, users, groups, totp, api_tokens, schema))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(crate::sqlite::DbError::Invalid(
                "loading the user database panicked".into(),
            ))
        })
    });
    let (db, version, users, groups, totp, api_tokens, schema) = loaded.map_err(db_error)?;
    if !factors_only {
        log_if_empty(&shown, &users);
    }
    if db.is_postgres() {
        tracing::info!(
            database = %shown,
            schema = schema.unwrap_or(0),
            users = users.len(),
            groups = groups.len(),
            tokens = api_tokens.len(),
            "the user database answered: {} enabled users",
            users.len()
        );
    }
    let watch = SqliteWatch {
        location,
        db: Mutex::new(db),
        version: AtomicI64::new(version),
        groups: ArcSwap::from_pointee(groups),
        totp: ArcSwap::from_pointee(totp),
        api_tokens: ArcSwap::from_pointee(live_tokens(api_tokens, &HashMap::new())),
        token_used: Mutex::new(HashMap::new()),
    };
    Ok((watch, users))
}

impl SqliteWatch {
    /// [`SqliteWatch::with_db`] when the database is free now; `None` (nothing done) while
    /// another operation holds it (a hung database does not pile up blocked threads behind it).
    fn try_with_db<T>(
        &self,
        f: impl Fn(&crate::sqlite::UserDb) -> Result<T, crate::sqlite::DbError>,
    ) -> Option<Result<T, crate::sqlite::DbError>> {
        let db = match self.db.try_lock() {
            Ok(db) => db,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        drop(db);
        Some(self.with_db(f))
    }

    /// Runs `f` on the open database. A PostgreSQL connection that broke (the server restarted)
    /// is replaced and `f` tried once more. Blocking: call from a blocking thread.
    fn with_db<T>(
        &self,
        f: impl Fn(&crate::sqlite::UserDb) -> Result<T, crate::sqlite::DbError>,
    ) -> Result<T, crate::sqlite::DbError> {
        let mut db = lock(&self.db);
        match f(&db) {
            Err(e) if db.is_closed() => {
                tracing::warn!(error = %e, "the user database connection broke; reconnecting");
                *db = self.location.open()?;
                f(&db)
            }
            other => other,
        }
    }
}

/// Starts the thread that LISTENs for changes of a PostgreSQL user database and reloads the
/// users as soon as one is announced (and after each reconnection, when one may have been
/// missed), so every instance sees a change within moments, with no request waiting for it and
/// no polling. Reconnects with backoff (1 s to 30 s); stops when the verifier is dropped.
fn listen(url: String, inner: std::sync::Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("portcullis-pg-listen".into())
        .spawn(move || {
            let mut backoff = Duration::from_secs(1);
            let mut first = true;
            while inner.strong_count() > 0 {
                let connected = crate::sqlite::pg_connect(&url)
                    .and_then(|mut client| {
                        client.batch_execute(&format!("LISTEN {}", crate::sqlite::PG_CHANNEL))?;
                        Ok(client)
                    });
                let mut client = match connected {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for user database changes; retrying in {backoff:?}");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                };
                backoff = Duration::from_secs(1);
                let reload = || match inner.upgrade() {
                    Some(inner) => {
                        inner.reload_if_changed();
                        true
                    }
                    None => false,
                };
                // Changes made while nobody listened (between the load and now, or during an
                // outage): look once.
                if !first {
                    tracing::info!("listening for user database changes again");
                }
                first = false;
                if !reload() {
                    return;
                }
                loop {
                    use postgres::fallible_iterator::FallibleIterator as _;
                    let next = client
                        .notifications()
                        .timeout_iter(Duration::from_secs(5))
                        .next();
                    match next {
                        Ok(Some(_)) => {
                            if !reload() {
                                return;
                            }
                        }
                        // Quiet: still wanted, still connected? A connection a NAT or a failover
                        // dropped without a word hears nothing: it is asked, and the users are
                        // looked at anyway (one cheap version query), so a missed change is late
                        // by seconds, never forever.
                        Ok(None) => {
                            if inner.strong_count() == 0 {
                                return;
                            }
                            if client.is_closed() || client.is_valid(crate::sqlite::PG_TIMEOUT).is_err() {
                                tracing::warn!("lost the user database change listener; reconnecting");
                                break;
                            }
                            if !reload() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the user database change listener; reconnecting");
                            break;
                        }
                    }
                }
                std::thread::sleep(backoff);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the user database listener: {e}");
    }
}

/// Membership in the set of checks currently running for one key; leaving
/// removes the entry once nobody else waits on it.
struct Inflight<'a> {
    inner: &'a Inner,
    key: InflightKey,
    cell: Arc<OnceCell<bool>>,
}

impl<'a> Inflight<'a> {
    fn join(inner: &'a Inner, key: InflightKey) -> Self {
        let cell = Arc::clone(lock(&inner.inflight).entry(key).or_default());
        Self { inner, key, cell }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.inflight);
        // Clones are only made under this lock, so a count of two (the map's
        // and ours) means nobody else is waiting.
        if map
            .get(&self.key)
            .is_some_and(|cell| Arc::ptr_eq(cell, &self.cell))
            && Arc::strong_count(&self.cell) == 2
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT_SECRET: &str = "$2y$04$ANG5860cD6f1mcBA6Xz4yu3i3Dt3uEHpxmP2VK..hAiQSjOqd08mG";

    #[tokio::test]
    async fn file_change_is_picked_up_by_polling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice:{BCRYPT_SECRET}\n")).expect("write");
        let verifier = Verifier::with_poll_interval(
            UserSource::File(path.clone()),
            Duration::from_secs(60),
            2,
            Duration::ZERO,
        )
        .expect("load");
        assert_eq!(
            verifier.verify("alice", "p@ss wörd").await,
            Verification::Accepted
        );
        assert_eq!(
            verifier.verify("bob", "hunter2").await,
            Verification::Refused
        );

        // An unchanged file is not reloaded.
        assert_eq!(verifier.generation(), 0);

        let bob = crate::hash_bcrypt(b"hunter2", 4).expect("hash");
        std::fs::write(&path, format!("bob:{bob}\n")).expect("rewrite");
        assert_eq!(
            verifier.verify("bob", "hunter2").await,
            Verification::Accepted
        );
        assert_eq!(verifier.generation(), 1);
        assert_eq!(
            verifier.verify("alice", "p@ss wörd").await,
            Verification::Refused
        );
    }

    #[tokio::test]
    async fn traced_verification_tells_cache_hits_from_hash_checks() {
        let verifier = Verifier::new(
            UserSource::Inline(vec![("alice".into(), BCRYPT_SECRET.into())]),
            Duration::from_secs(60),
            1,
        )
        .expect("load");
        assert_eq!(
            verifier.verify_traced("alice", "p@ss wörd").await,
            (Verification::Accepted, Answer::Hashed)
        );
        assert_eq!(
            verifier.verify_traced("alice", "p@ss wörd").await,
            (Verification::Accepted, Answer::Cached)
        );
        assert_eq!(
            verifier.verify_traced("alice", "wrong").await,
            (Verification::Refused, Answer::Hashed)
        );
        assert_eq!(verifier.hash_checks(), 2);
    }

    #[tokio::test]
    async fn failed_reload_keeps_previous_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice:{BCRYPT_SECRET}\n")).expect("write");
        let verifier = Verifier::with_poll_interval(
            UserSource::File(path.clone()),
            Duration::ZERO,
            1,
            Duration::ZERO,
        )
        .expect("load");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(
            verifier.verify("alice", "p@ss wörd").await,
            Verification::Accepted
        );
        verifier.reload_now();
        assert_eq!(verifier.generation(), 0);
        assert_eq!(verifier.user_count(), 1);
    }

    #[test]
    fn inflight_entries_are_removed() {
        let verifier = Verifier::new(
            UserSource::Inline(vec![("alice".into(), BCRYPT_SECRET.into())]),
            Duration::ZERO,
            1,
        )
        .expect("inline");
        let key = ([7u8; 32], 0);
        let first = Inflight::join(&verifier.inner, key);
        let second = Inflight::join(&verifier.inner, key);
        assert!(Arc::ptr_eq(&first.cell, &second.cell));
        drop(first);
        assert_eq!(lock(&verifier.inner.inflight).len(), 1);
        drop(second);
        assert!(lock(&verifier.inner.inflight).is_empty());
    }

    #[tokio::test]
    async fn a_cheap_hash_answers_no_faster_than_an_unknown_user() {
        // {SHA} ("secret") beside a bcrypt line: the SHA-1 check takes microseconds, the dummy
        // an unknown user costs takes a bcrypt; the known user must not answer faster.
        let bcrypt = crate::hash_bcrypt(b"other", 6).expect("hash");
        let verifier = Verifier::new(
            UserSource::Inline(vec![
                ("bob".into(), bcrypt),
                ("sha".into(), "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=".into()),
            ]),
            Duration::ZERO,
            2,
        )
        .expect("inline");
        let floor = verifier.inner.snapshot.load().floor;
        assert!(floor > Duration::from_millis(1), "{floor:?}");
        for (user, password, expected) in [
            ("sha", "secret", Verification::Accepted),
            ("sha", "wrong", Verification::Refused),
        ] {
            let started = Instant::now();
            assert_eq!(verifier.verify(user, password).await, expected);
            assert!(
                started.elapsed() >= floor,
                "{:?} < {floor:?}",
                started.elapsed()
            );
        }
    }

    fn inline(users: &[(&str, &str)], cache_ttl: Duration, max_parallel: usize) -> Verifier {
        let entries = users
            .iter()
            .map(|(user, password)| {
                let hash = crate::hash_bcrypt(password.as_bytes(), 4).expect("hash");
                ((*user).to_owned(), hash)
            })
            .collect();
        Verifier::new(UserSource::Inline(entries), cache_ttl, max_parallel).expect("inline")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_checks_never_exceed_the_limit() {
        for limit in [1, 2] {
            let verifier = Arc::new(inline(&[("alice", "right")], Duration::ZERO, limit));
            let tasks: Vec<_> = (0..24)
                .map(|i| {
                    let verifier = Arc::clone(&verifier);
                    tokio::spawn(
                        async move { verifier.verify("alice", &format!("guess{i}")).await },
                    )
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("join"), Verification::Refused);
            }
            assert_eq!(verifier.hash_checks(), 24);
            let peak = verifier.inner.peak_running.load(Ordering::SeqCst);
            assert!(peak >= 1 && peak <= limit, "peak {peak} with limit {limit}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_for_the_same_credentials_share_one_check() {
        // No cache: only coalescing can avoid repeated checks.
        let verifier = Arc::new(inline(&[("alice", "right")], Duration::ZERO, 1));
        // Hold the only permit so the first check cannot finish before every
        // request has joined it.
        let held = verifier
            .inner
            .permits
            .acquire(Lane::Preferred, Duration::from_secs(60))
            .await
            .expect("permit");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let verifier = Arc::clone(&verifier);
                tokio::spawn(async move { verifier.verify("alice", "right").await })
            })
            .collect();
        let key = (verifier.inner.cache_key("alice", "right"), 0);
        loop {
            let waiting = lock(&verifier.inner.inflight)
                .get(&key)
                .map(Arc::strong_count);
            if waiting == Some(11) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(held);
        for task in tasks {
            assert_eq!(task.await.expect("join"), Verification::Accepted);
        }
        assert_eq!(verifier.hash_checks(), 1);
        assert!(lock(&verifier.inner.inflight).is_empty());
    }

    #[tokio::test]
    async fn abandoned_check_is_taken_over_by_a_waiter() {
        let verifier = Arc::new(inline(&[("alice", "right")], Duration::ZERO, 1));
        let held = verifier
            .inner
            .permits
            .acquire(Lane::Preferred, Duration::from_secs(60))
            .await
            .expect("permit");
        let first = {
            let verifier = Arc::clone(&verifier);
            tokio::spawn(async move { verifier.verify("alice", "right").await })
        };
        let second = {
            let verifier = Arc::clone(&verifier);
            tokio::spawn(async move { verifier.verify("alice", "right").await })
        };
        let key = (verifier.inner.cache_key("alice", "right"), 0);
        while lock(&verifier.inner.inflight)
            .get(&key)
            .map(Arc::strong_count)
            != Some(3)
        {
            tokio::task::yield_now().await;
        }
        first.abort();
        assert!(first.await.expect_err("aborted").is_cancelled());
        drop(held);
        assert_eq!(second.await.expect("join"), Verification::Accepted);
    }
}
