//! The SQLite user store (`auth.users = "sqlite:PATH"`), for sites that manage their users in
//! Portcullis rather than in an htpasswd file: names, password hashes (argon2id by default, or
//! any htpasswd format kept by `users import`), groups and a disabled flag.
//!
//! The database runs in WAL mode with a busy timeout, so `portcullis users …` can change it
//! while the server reads it; the server notices changes through `PRAGMA data_version` and
//! reloads the enabled users (see [`crate::verifier`]).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use rusqlite::Connection;

use crate::htpasswd::{LineProblem, StoredHash, UserFile};

/// Why a user-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("user database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// PostgreSQL said no, or could not be reached.
    #[error("user database: {}", with_causes(.0))]
    Postgres(#[from] postgres::Error),
    /// The user exists already (`users add`).
    #[error("user {0} already exists (use `portcullis users passwd`)")]
    Exists(String),
    /// No such user.
    #[error("no user {0}")]
    Missing(String),
    /// A name or hash that cannot be stored.
    #[error("{0}")]
    Invalid(String),
    /// The htpasswd file to import could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An error with its causes (`error performing TLS handshake: invalid peer certificate: …`).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// One user as listed by `users list` (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Name.
    pub name: String,
    /// Whether sign-in is refused.
    pub disabled: bool,
    /// Groups.
    pub groups: Vec<String>,
    /// Unix time of the last successful sign-in, if any.
    pub last_sign_in: Option<i64>,
    /// Where reset links go.
    pub email: Option<String>,
    /// Whether a TOTP second factor is set.
    pub totp: bool,
}

/// An open user database: a SQLite file, or a PostgreSQL database shared by several instances.
pub struct UserDb {
    conn: Conn,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    last_sign_in INTEGER
);
CREATE TABLE IF NOT EXISTS user_groups (
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    grp TEXT NOT NULL,
    PRIMARY KEY (name, grp)
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    hash TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    label TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    expires INTEGER,
    last_used INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    used INTEGER
);
";

/// What every API token starts with (so that a leaked one is recognisable, by people and by
/// secret scanners).
pub const API_TOKEN_PREFIX: &str = "pcl_";

/// The SHA-256 of an API token, as stored.
pub fn api_token_hash(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A user's Digest HA1 values: (user, MD5, SHA-256).
pub type DigestRow = (String, Option<String>, Option<String>);

/// An API token as `tokens list` shows it (never the token itself).
#[derive(Debug, Clone)]
pub struct ApiTokenRow {
    /// The public id (`tokens revoke ID`).
    pub id: String,
    /// The user it acts as.
    pub user: String,
    /// `--name`.
    pub label: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; `None`: until revoked.
    pub expires: Option<i64>,
    /// Unix seconds (recorded at most once a minute).
    pub last_used: Option<i64>,
}

/// A live API token as the verifier keeps it.
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// The public id.
    pub id: String,
    /// The user it acts as.
    pub user: String,
    /// Unix seconds; `None`: until revoked.
    pub expires: Option<i64>,
    /// Unix seconds, as loaded.
    pub last_used: Option<i64>,
}

/// What a single-use link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A new account chooses its first password (`users invite`).
    Invite,
    /// An existing account chooses a new password (`users reset`, "forgot password").
    Reset,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Invite => "invite",
            TokenKind::Reset => "reset",
        }
    }
}

/// The SHA-256 (hex) a link token is stored as: the database never holds a usable link.
fn token_hash(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_name(name: &str) -> Result<(), DbError> {
    if name.is_empty()
        || name.len() > 256
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return Err(DbError::Invalid(format!(
            "{name:?} is not a valid user name (1-256 bytes, no ':' and no control characters)"
        )));
    }
    Ok(())
}

/// `Err(Invalid)` unless `email` looks like an address (one `@`, no spaces, at most 254 bytes).
pub fn check_email(email: &str) -> Result<(), DbError> {
    if email.len() > 254
        || email.matches('@').count() != 1
        || email.starts_with('@')
        || email.ends_with('@')
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(DbError::Invalid(format!(
            "{email:?} is not an email address"
        )));
    }
    Ok(())
}

/// `Err(Missing)` unless `name` is a user (inside a transaction, before changing what hangs on it;
/// in PostgreSQL the row is locked until the transaction ends, so concurrent transactions about
/// the same user take turns).
fn require_user(conn: &Conn, name: &str) -> Result<(), DbError> {
    let sql = match conn {
        Conn::Sqlite(_) => "SELECT 1 FROM users WHERE name = ?1",
        Conn::Postgres(_) => "SELECT 1 FROM users WHERE name = ?1 FOR UPDATE",
    };
    conn.query_opt(sql, &[name.into()])?
        .map(|_| ())
        .ok_or_else(|| DbError::Missing(name.to_owned()))
}

fn check_hash(hash: &str) -> Result<(), DbError> {
    StoredHash::parse(hash)
        .map(|_| ())
        .map_err(|e| DbError::Invalid(format!("unusable password hash: {e}")))
}

/// Where a user database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database (`postgres://…` URL), shared by several instances.
    Postgres(String),
}

impl Location {
    /// Opens the database (creating or upgrading its schema).
    ///
    /// # Errors
    /// [`DbError`] when it cannot be opened or migrated.
    pub fn open(&self) -> Result<UserDb, DbError> {
        match self {
            Location::Sqlite(p) => UserDb::open(p),
            Location::Postgres(url) => UserDb::connect(url),
        }
    }

    /// Opens a database whose schema this process already brought up to date (a request's
    /// short operation): PostgreSQL connects without taking the migration lock.
    ///
    /// # Errors
    /// [`DbError`] when it cannot be opened.
    pub fn open_migrated(&self) -> Result<UserDb, DbError> {
        match self {
            Location::Sqlite(p) => UserDb::open(p),
            Location::Postgres(url) => UserDb::connect_with(url, false),
        }
    }

    /// For messages: the file, or the URL without its password.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => redact_url(url),
        }
    }
}

/// `url` with the password (if any, in the user part or as `password=` in the query) replaced by
/// `***`. The user part ends at the first `@`, as the `postgres` crate reads it, so a password
/// with `/`, `?` or `#` in it is masked whole too.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (userinfo, after) = match rest.find('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (host_path, query) = match after.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (after, None),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@")),
            None => out.push_str(&format!("{userinfo}@")),
        }
    }
    out.push_str(host_path);
    if let Some(q) = query {
        let q: Vec<&str> = q
            .split('&')
            .map(|p| {
                if p.starts_with("password=") {
                    "password=***"
                } else {
                    p
                }
            })
            .collect();
        out.push('?');
        out.push_str(&q.join("&"));
    }
    out
}

/// A connection to either database. SQL is written once, for both: `?N` parameters (rewritten to
/// PostgreSQL's `$N`), `ON CONFLICT`, `RETURNING`, `CAST(… AS TEXT)`; where the dialects differ
/// ([`Conn::dialect`]) both texts are given.
enum Conn {
    Sqlite(Connection),
    Postgres(Box<PgClient>),
}

/// A PostgreSQL client that can be dropped anywhere: the `postgres` client's drop blocks on its
/// own runtime, which panics on a thread already running async code (a reload or shutdown
/// dropping a gateway), so there it is dropped on a thread of its own.
pub(crate) struct PgClient(std::cell::RefCell<Option<postgres::Client>>);

impl PgClient {
    fn new(client: postgres::Client) -> PgClient {
        PgClient(std::cell::RefCell::new(Some(client)))
    }

    fn borrow_mut(&self) -> std::cell::RefMut<'_, postgres::Client> {
        std::cell::RefMut::map(self.0.borrow_mut(), |c| {
            c.as_mut().expect("the client is only taken when dropped")
        })
    }

    fn is_closed(&self) -> bool {
        self.0
            .borrow()
            .as_ref()
            .is_none_or(postgres::Client::is_closed)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.get_mut().take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("portcullis-pg-close".into())
                    .spawn(move || drop(client));
            } else {
                drop(client);
            }
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}
impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match *self {
            Arg::Text(Some(t)) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Arg::Int(Some(n)) => ToSqlOutput::Owned(Value::Integer(n)),
            Arg::Text(None) | Arg::Int(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

impl postgres::types::ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match *self {
            Arg::Text(v) => v.to_sql(ty, out),
            Arg::Int(Some(n)) if *ty == Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
            Arg::Int(Some(n)) if *ty == Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
            Arg::Int(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        <&str as postgres::types::ToSql>::accepts(ty)
            || <i64 as postgres::types::ToSql>::accepts(ty)
            || <i32 as postgres::types::ToSql>::accepts(ty)
            || <i16 as postgres::types::ToSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

/// A column value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Null,
    Int(i64),
    Text(String),
}

/// A result row.
struct Row(Vec<Val>);

impl Row {
    fn text(&self, i: usize) -> Result<String, DbError> {
        self.opt_text(i)?
            .ok_or_else(|| DbError::Invalid(format!("column {i} is NULL")))
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.0.get(i) {
            Some(Val::Text(t)) => Ok(Some(t.clone())),
            Some(Val::Null) => Ok(None),
            other => Err(DbError::Invalid(format!(
                "column {i}: expected text, found {other:?}"
            ))),
        }
    }

    fn int(&self, i: usize) -> Result<i64, DbError> {
        self.opt_int(i)?
            .ok_or_else(|| DbError::Invalid(format!("column {i} is NULL")))
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.0.get(i) {
            Some(Val::Int(n)) => Ok(Some(*n)),
            Some(Val::Null) => Ok(None),
            other => Err(DbError::Invalid(format!(
                "column {i}: expected a number, found {other:?}"
            ))),
        }
    }

    fn flag(&self, i: usize) -> Result<bool, DbError> {
        Ok(self.int(i)? != 0)
    }
}

/// `?N` → `$N` for PostgreSQL.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_value(row: &postgres::Row, i: usize) -> Result<Val, DbError> {
    use postgres::types::Type;
    let ty = row.columns()[i].type_();
    let v = if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?.map(Val::Int)
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?
            .map(|n| Val::Int(i64::from(n)))
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)?
            .map(|n| Val::Int(i64::from(n)))
    } else if *ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)?
            .map(|b| Val::Int(i64::from(b)))
    } else {
        row.try_get::<_, Option<String>>(i)?.map(Val::Text)
    };
    Ok(v.unwrap_or(Val::Null))
}

impl Conn {
    /// The SQL for this connection's dialect.
    fn dialect<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        match self {
            Conn::Sqlite(_) => sqlite,
            Conn::Postgres(_) => postgres,
        }
    }

    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<usize, DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute(sql, rusqlite::params_from_iter(args.iter()))?),
            Conn::Postgres(c) => {
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    args.iter().map(|a| a as _).collect();
                let n = c.borrow_mut().execute(pg_sql(sql).as_str(), &params)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(sql)?;
                let width = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    (0..width)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => Val::Null,
                                rusqlite::types::ValueRef::Integer(n) => Val::Int(n),
                                rusqlite::types::ValueRef::Text(t) => {
                                    Val::Text(String::from_utf8_lossy(t).into_owned())
                                }
                                rusqlite::types::ValueRef::Real(f) => Val::Text(f.to_string()),
                                rusqlite::types::ValueRef::Blob(b) => {
                                    Val::Text(String::from_utf8_lossy(b).into_owned())
                                }
                            })
                        })
                        .collect::<rusqlite::Result<Vec<Val>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Conn::Postgres(c) => {
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    args.iter().map(|a| a as _).collect();
                let rows = c.borrow_mut().query(pg_sql(sql).as_str(), &params)?;
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| pg_value(r, i))
                            .collect::<Result<_, _>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    }

    fn query_opt(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(c) => Ok(c.borrow_mut().batch_execute(sql)?),
        }
    }

    /// Runs `f` in a transaction (SQLite: `BEGIN IMMEDIATE`, one writer at a time), committed
    /// when it returns `Ok`, rolled back otherwise.
    fn transaction<T>(&self, f: impl FnOnce(&Conn) -> Result<T, DbError>) -> Result<T, DbError> {
        self.batch(self.dialect("BEGIN IMMEDIATE", "BEGIN"))?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn is_unique_violation(e: &DbError) -> bool {
        match e {
            DbError::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            DbError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

/// The PostgreSQL schema, by version: each step runs once, in a transaction, and is recorded in
/// `portcullis_schema` (`portcullis users migrate` applies them; so does every start).
const PG_MIGRATIONS: &[&str] = &[
    // 1: the SQLite schema, and a change counter bumped (and announced with NOTIFY) by every
    // statement that changes users, groups or tokens.
    "CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        hash TEXT NOT NULL,
        disabled BIGINT NOT NULL DEFAULT 0,
        created BIGINT NOT NULL,
        last_sign_in BIGINT,
        email TEXT,
        totp TEXT,
        totp_step BIGINT,
        digest_realm TEXT,
        digest_md5 TEXT,
        digest_sha256 TEXT
    );
    CREATE TABLE user_groups (
        name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE ON UPDATE CASCADE,
        grp TEXT NOT NULL,
        PRIMARY KEY (name, grp)
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY NOT NULL,
        hash TEXT UNIQUE NOT NULL,
        name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        label TEXT NOT NULL DEFAULT '',
        created BIGINT NOT NULL,
        expires BIGINT,
        last_used BIGINT
    );
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        created BIGINT NOT NULL,
        expires BIGINT NOT NULL,
        used BIGINT
    );
    CREATE TABLE portcullis_changes (id INT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
    INSERT INTO portcullis_changes VALUES (1, 0);
    CREATE FUNCTION portcullis_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE portcullis_changes SET version = version + 1 WHERE id = 1;
        PERFORM pg_notify('portcullis_users', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER users_changed AFTER INSERT OR DELETE OR TRUNCATE
        OR UPDATE OF name, hash, disabled, totp, digest_realm, digest_md5, digest_sha256
        ON users FOR EACH STATEMENT EXECUTE FUNCTION portcullis_changed();
    CREATE TRIGGER groups_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
        ON user_groups FOR EACH STATEMENT EXECUTE FUNCTION portcullis_changed();
    CREATE TRIGGER api_tokens_changed AFTER INSERT OR DELETE OR TRUNCATE
        OR UPDATE OF id, hash, name, expires
        ON api_tokens FOR EACH STATEMENT EXECUTE FUNCTION portcullis_changed();",
];

/// The channel a PostgreSQL user database announces its changes on.
pub const PG_CHANNEL: &str = "portcullis_users";

/// How long a PostgreSQL connection attempt or statement may take.
pub const PG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `url` without the TLS parameters the `postgres` crate does not read, and what they asked:
/// `sslrootcert=PATH` (the CA the server's certificate must chain to), and `sslmode=verify-ca` /
/// `verify-full` (read as `require`: the certificate is always verified).
fn split_tls_params(url: &str) -> (String, Option<std::path::PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => root = Some(std::path::PathBuf::from(path)),
            Some(("sslmode", "verify-ca" | "verify-full")) => {
                kept.push("sslmode=require".to_owned())
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    // A CA to check the server against means TLS: never the plaintext `prefer` may fall back to.
    if root.is_some() && !kept.iter().any(|p| p.starts_with("sslmode=")) {
        kept.push("sslmode=require".to_owned());
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, root)
}

/// The TLS side of a PostgreSQL connection: rustls (ring), the server's certificate checked
/// against `sslrootcert` when the URL names one, else the system's roots. Used when the server
/// offers TLS (`sslmode=prefer`, the default) or must (`sslmode=require`).
fn pg_tls(
    root: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| DbError::Invalid(format!("sslrootcert {}: {e}", path.display())))?;
            for cert in
                rustls::pki_types::CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok)
            {
                roots.add(cert).map_err(|e| {
                    DbError::Invalid(format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(DbError::Invalid(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Connects to the PostgreSQL database at `url` (TLS as the URL asks), with Portcullis's
/// timeouts. Blocking: call it from a thread that is not running async code.
///
/// # Errors
/// [`DbError`] when the URL cannot be read or the server not reached.
pub fn pg_connect(url: &str) -> Result<postgres::Client, DbError> {
    let (plain, root) = split_tls_params(url);
    let config = pg_config(&plain)?;
    Ok(config.connect(pg_tls(root.as_deref())?)?)
}

/// A PostgreSQL client configuration for `url`, with Portcullis's timeouts.
///
/// # Errors
/// [`DbError`] when the URL cannot be read.
pub fn pg_config(url: &str) -> Result<postgres::Config, DbError> {
    let (url, _) = split_tls_params(url);
    let url = url.as_str();
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| DbError::Invalid(format!("{}: {e}", redact_url(url))))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(PG_TIMEOUT);
    }
    // A peer gone without a word (a NAT that forgot the connection, a failover without a
    // reset) is noticed within about a minute, not the system's two hours.
    if !url.contains("keepalives_idle") {
        config.keepalives_idle(std::time::Duration::from_secs(30));
    }
    if !url.contains("tcp_user_timeout") {
        config.tcp_user_timeout(std::time::Duration::from_secs(30));
    }
    config.application_name("portcullis");
    Ok(config)
}

impl UserDb {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<UserDb, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let conn = Conn::Sqlite(conn);
        // One process at a time creates and upgrades the schema (the CLI and a running gateway
        // may open a new database at the same moment): both would add the same column.
        conn.transaction(Self::migrate_sqlite)?;
        Ok(UserDb { conn })
    }

    /// Connects to the PostgreSQL database at `url` and brings its schema up to date (several
    /// instances starting at once take turns: the migrations run under an advisory lock).
    /// Blocking: call it from a blocking thread, never from async code.
    ///
    /// # Errors
    /// [`DbError`] when it cannot connect or migrate.
    pub fn connect(url: &str) -> Result<UserDb, DbError> {
        Self::connect_with(url, true)
    }

    /// [`UserDb::connect`], migrating the schema or not.
    ///
    /// # Errors
    /// [`DbError`] when it cannot connect or migrate.
    pub fn connect_with(url: &str, migrate: bool) -> Result<UserDb, DbError> {
        let mut client = pg_connect(url)?;
        // A statement that hangs (a lock held by a crashed client) fails instead of waiting.
        client.batch_execute(&format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; SET client_min_messages = warning",
            PG_TIMEOUT.as_millis(),
            PG_TIMEOUT.as_millis()
        ))?;
        let conn = Conn::Postgres(Box::new(PgClient::new(client)));
        if !migrate {
            return Ok(UserDb { conn });
        }
        conn.transaction(|c| {
            c.batch("SELECT pg_advisory_xact_lock(7461727)")?;
            // Created once: a role allowed only to read and write the tables can connect.
            if c
                .query_opt("SELECT to_regclass('portcullis_schema')::text", &[])?
                .and_then(|r| r.opt_text(0).ok().flatten())
                .is_none()
            {
                c.batch("CREATE TABLE portcullis_schema (version INT NOT NULL)")?;
            }
            let current = c
                .query_opt("SELECT max(version) FROM portcullis_schema", &[])?
                .and_then(|r| r.opt_int(0).ok().flatten())
                .unwrap_or(0);
            let known = i64::try_from(PG_MIGRATIONS.len()).unwrap_or(i64::MAX);
            if current > known {
                return Err(DbError::Invalid(format!(
                    "the user database's schema is version {current}, newer than this Portcullis knows ({known}): upgrade Portcullis"
                )));
            }
            for (i, step) in PG_MIGRATIONS.iter().enumerate().skip(usize::try_from(current).unwrap_or(0)) {
                c.batch(step)?;
                c.execute(
                    "INSERT INTO portcullis_schema (version) VALUES (?1)",
                    &[i64::try_from(i + 1).unwrap_or(i64::MAX).into()],
                )?;
                tracing::info!(version = i + 1, "user database schema migrated");
            }
            Ok(())
        })?;
        Ok(UserDb { conn })
    }

    /// The schema version (PostgreSQL; SQLite databases are upgraded in place without one).
    ///
    /// # Errors
    /// [`DbError`] when it cannot be read.
    pub fn schema_version(&self) -> Result<Option<i64>, DbError> {
        match &self.conn {
            Conn::Sqlite(_) => Ok(None),
            Conn::Postgres(_) => Ok(self
                .conn
                .query_opt("SELECT max(version) FROM portcullis_schema", &[])?
                .and_then(|r| r.opt_int(0).ok().flatten())),
        }
    }

    fn migrate_sqlite(conn: &Conn) -> Result<(), DbError> {
        conn.batch(SCHEMA)?;
        let has = |column: &str| -> Result<bool, DbError> {
            Ok(conn
                .query_opt(
                    "SELECT 1 FROM pragma_table_info('users') WHERE name = ?1",
                    &[column.into()],
                )?
                .is_some())
        };
        // Databases made before emails existed get the column.
        if !has("email")? {
            conn.batch("ALTER TABLE users ADD COLUMN email TEXT")?;
        }
        if !has("totp")? {
            conn.batch(
                "ALTER TABLE users ADD COLUMN totp TEXT; ALTER TABLE users ADD COLUMN totp_step INTEGER;",
            )?;
        }
        // Digest HA1 values for one realm (set with the password while `digest` is on).
        if !has("digest_realm")? {
            conn.batch(
                "ALTER TABLE users ADD COLUMN digest_realm TEXT; \
                 ALTER TABLE users ADD COLUMN digest_md5 TEXT; \
                 ALTER TABLE users ADD COLUMN digest_sha256 TEXT;",
            )?;
        }
        Ok(())
    }

    /// Makes sure `name` has a row (for a user who lives in a directory and keeps only a second
    /// factor here): a new row gets a hash of 32 random bytes, which no password matches.
    ///
    /// # Errors
    /// [`DbError`] when the database cannot be written.
    pub fn ensure_factor_user(&self, name: &str) -> Result<(), DbError> {
        check_name(name)?;
        let unknowable = crate::hash_bcrypt(&rand::random::<[u8; 32]>(), 4)
            .map_err(|e| DbError::Invalid(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            &[name.into(), unknowable.as_str().into(), now().into()],
        )?;
        Ok(())
    }

    /// Whether `name` is a user here, enabled or not.
    ///
    /// # Errors
    /// [`DbError`] when the database cannot be read.
    pub fn has_user(&self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .query_opt("SELECT 1 FROM users WHERE name = ?1", &[name.into()])?
            .is_some())
    }

    /// Sets (a base32 secret) or removes (`None`) a user's TOTP second factor.
    pub fn set_totp(&self, name: &str, secret: Option<&str>) -> Result<(), DbError> {
        match self.conn.execute(
            "UPDATE users SET totp = ?2, totp_step = NULL WHERE name = ?1",
            &[name.into(), secret.into()],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// The users with a TOTP second factor.
    pub fn totp_users(&self) -> Result<std::collections::HashSet<String>, DbError> {
        self.conn
            .query("SELECT name FROM users WHERE totp IS NOT NULL", &[])?
            .iter()
            .map(|r| r.text(0))
            .collect()
    }

    /// Checks `code` against the user's TOTP secret and spends its step (a code works once).
    pub fn check_totp(&self, name: &str, code: &str, unix_now: u64) -> Result<bool, DbError> {
        let secret: Option<String> = self
            .conn
            .query_opt("SELECT totp FROM users WHERE name = ?1", &[name.into()])?
            .map(|r| r.opt_text(0))
            .transpose()?
            .flatten();
        let Some(raw) = secret.as_deref().and_then(crate::totp::unbase32) else {
            return Ok(false);
        };
        let Some(step) = crate::totp::matching_step(&raw, code, unix_now) else {
            return Ok(false);
        };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        // One UPDATE decides: of two instances given the same code at once, one spends it.
        let claimed = self.conn.execute(
            "UPDATE users SET totp_step = ?2 WHERE name = ?1 AND (totp_step IS NULL OR totp_step < ?2)",
            &[name.into(), step.into()],
        )?;
        Ok(claimed == 1)
    }

    /// Sets (or with `None` removes) a user's email address, where reset links go.
    pub fn set_email(&self, name: &str, email: Option<&str>) -> Result<(), DbError> {
        if let Some(e) = email {
            check_email(e)?;
        }
        match self.conn.execute(
            "UPDATE users SET email = ?2 WHERE name = ?1",
            &[name.into(), email.into()],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// A user's email address.
    pub fn email_of(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .query_opt("SELECT email FROM users WHERE name = ?1", &[name.into()])?
            .map(|r| r.opt_text(0))
            .transpose()?
            .flatten())
    }

    /// The enabled user with this email address (case-insensitive), if exactly one has it.
    pub fn user_by_email(&self, email: &str) -> Result<Option<String>, DbError> {
        let names: Vec<String> = self
            .conn
            .query(
                "SELECT name FROM users WHERE lower(email) = lower(?1) AND disabled = 0 LIMIT 2",
                &[email.trim().into()],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        Ok(match names.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        })
    }

    /// Issues a single-use link token for `name`, valid for `ttl`; returns the token (only its
    /// hash is stored). Earlier unused tokens of the same kind stop working. With
    /// `min_interval`, nothing is issued (`None`) when a token of this kind was issued for the
    /// user less than that long ago — checked in the same transaction, so concurrent requests
    /// cannot all pass it.
    pub fn issue_token(
        &mut self,
        name: &str,
        kind: TokenKind,
        ttl: std::time::Duration,
        min_interval: Option<std::time::Duration>,
    ) -> Result<Option<String>, DbError> {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = now();
        let expires = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        self.conn.transaction(|tx| {
            require_user(tx, name)?;
            if let Some(within) = min_interval {
                let since =
                    now.saturating_sub(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
                if tx
                    .query_opt(
                        "SELECT 1 FROM tokens WHERE name = ?1 AND kind = ?2 AND created > ?3",
                        &[name.into(), kind.as_str().into(), since.into()],
                    )?
                    .is_some()
                {
                    return Ok(None);
                }
            }
            tx.execute(
                "UPDATE tokens SET used = ?3 WHERE name = ?1 AND kind = ?2 AND used IS NULL",
                &[name.into(), kind.as_str().into(), now.into()],
            )?;
            let hash = token_hash(&token);
            tx.execute(
                "INSERT INTO tokens (hash, name, kind, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    hash.as_str().into(),
                    name.into(),
                    kind.as_str().into(),
                    now.into(),
                    expires.into(),
                ],
            )?;
            // Spent and expired tokens older than a week are of no use to anyone.
            tx.execute(
                "DELETE FROM tokens WHERE expires < ?1",
                &[(now - 7 * 24 * 3600).into()],
            )?;
            Ok(Some(token.clone()))
        })
    }

    /// The user a live (unused, unexpired) token belongs to, and its kind.
    pub fn token_user(&self, token: &str) -> Result<Option<(String, TokenKind)>, DbError> {
        let hash = token_hash(token);
        let Some(row) = self.conn.query_opt(
            "SELECT name, kind FROM tokens WHERE hash = ?1 AND used IS NULL AND expires > ?2",
            &[hash.as_str().into(), now().into()],
        )?
        else {
            return Ok(None);
        };
        let kind = if row.text(1)? == "invite" {
            TokenKind::Invite
        } else {
            TokenKind::Reset
        };
        Ok(Some((row.text(0)?, kind)))
    }

    /// Spends `token` and sets its user's password hash, in one transaction: of two concurrent
    /// uses of a link (through one instance or two), exactly one succeeds; a failure (disk full)
    /// changes nothing. Returns the user, or `None` if the token was unknown, used or expired.
    pub fn redeem_token(&mut self, token: &str, hash: &str) -> Result<Option<String>, DbError> {
        check_hash(hash)?;
        let now = now();
        let token_hash = token_hash(token);
        self.conn.transaction(|tx| {
            // PostgreSQL: a concurrent redeemer waits on the row, then finds it used.
            let Some(row) = tx.query_opt(
                "UPDATE tokens SET used = ?2 WHERE hash = ?1 AND used IS NULL AND expires > ?2 RETURNING name",
                &[token_hash.as_str().into(), now.into()],
            )?
            else {
                return Ok(None);
            };
            let name = row.text(0)?;
            tx.execute(
                "UPDATE users SET hash = ?2, digest_realm = NULL, digest_md5 = NULL, digest_sha256 = NULL WHERE name = ?1",
                &[name.as_str().into(), hash.into()],
            )?;
            // Other outstanding links of this user stop working with the new password.
            tx.execute(
                "UPDATE tokens SET used = ?2 WHERE name = ?1 AND used IS NULL",
                &[name.as_str().into(), now.into()],
            )?;
            Ok(Some(name))
        })
    }

    /// Adds a user with a hash (as `portcullis hash` or `htpasswd` writes it).
    pub fn add(&self, name: &str, hash: &str) -> Result<(), DbError> {
        check_name(name)?;
        check_hash(hash)?;
        match self.conn.execute(
            "INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3)",
            &[name.into(), hash.into(), now().into()],
        ) {
            Ok(_) => Ok(()),
            Err(e) if Conn::is_unique_violation(&e) => Err(DbError::Exists(name.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// Replaces a user's hash.
    pub fn set_hash(&self, name: &str, hash: &str) -> Result<(), DbError> {
        check_hash(hash)?;
        match self.conn.execute(
            "UPDATE users SET hash = ?2, digest_realm = NULL, digest_md5 = NULL, digest_sha256 = NULL WHERE name = ?1",
            &[name.into(), hash.into()],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Deletes a user (and its groups).
    pub fn delete(&self, name: &str) -> Result<(), DbError> {
        match self
            .conn
            .execute("DELETE FROM users WHERE name = ?1", &[name.into()])?
        {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Disables or enables sign-in for a user; disabling also cancels the user's outstanding
    /// invitation and reset links.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), DbError> {
        match self.conn.execute(
            "UPDATE users SET disabled = ?2 WHERE name = ?1",
            &[name.into(), disabled.into()],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => {
                if disabled {
                    self.conn.execute(
                        "UPDATE tokens SET used = ?2 WHERE name = ?1 AND used IS NULL",
                        &[name.into(), now().into()],
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Replaces a user's groups.
    pub fn set_groups(&mut self, name: &str, groups: &[String]) -> Result<(), DbError> {
        self.conn.transaction(|tx| {
            require_user(tx, name)?;
            tx.execute("DELETE FROM user_groups WHERE name = ?1", &[name.into()])?;
            for g in groups {
                tx.execute(
                    "INSERT INTO user_groups (name, grp) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    &[name.into(), g.into()],
                )?;
            }
            Ok(())
        })
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<UserRow>, DbError> {
        let sql = self.conn.dialect(
            "SELECT u.name, u.disabled, u.last_sign_in, group_concat(g.grp, ','), u.email, \
             u.totp IS NOT NULL FROM users u \
             LEFT JOIN user_groups g ON g.name = u.name GROUP BY u.name ORDER BY u.name",
            "SELECT u.name, u.disabled, u.last_sign_in, string_agg(g.grp, ',' ORDER BY g.grp), \
             u.email, u.totp IS NOT NULL FROM users u \
             LEFT JOIN user_groups g ON g.name = u.name GROUP BY u.name ORDER BY u.name",
        );
        self.conn
            .query(sql, &[])?
            .iter()
            .map(|r| {
                Ok(UserRow {
                    name: r.text(0)?,
                    disabled: r.flag(1)?,
                    last_sign_in: r.opt_int(2)?,
                    email: r.opt_text(4)?,
                    totp: r.flag(5)?,
                    groups: r
                        .opt_text(3)?
                        .map(|g| g.split(',').map(str::to_owned).collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Imports an htpasswd file, keeping its hashes; existing users get the file's hash.
    /// Returns how many users were imported and the lines that were skipped.
    pub fn import_htpasswd(&mut self, path: &Path) -> Result<(usize, Vec<LineProblem>), DbError> {
        let text = std::fs::read_to_string(path)?;
        let mut problems = Vec::new();
        let count = self.conn.transaction(|tx| {
            let mut count = 0;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((name, hash)) = line.split_once(':') else {
                    problems.push(LineProblem {
                        line: i + 1,
                        message: "no ':' between user and hash".into(),
                    });
                    continue;
                };
                if let Err(e) = check_name(name).and_then(|()| check_hash(hash)) {
                    problems.push(LineProblem {
                        line: i + 1,
                        message: e.to_string(),
                    });
                    continue;
                }
                tx.execute(
                    "INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, digest_realm = NULL, digest_md5 = NULL, digest_sha256 = NULL",
                    &[name.into(), hash.into(), now().into()],
                )?;
                count += 1;
            }
            Ok(count)
        })?;
        Ok((count, problems))
    }

    /// The enabled users and their hashes, as the verifier loads them.
    pub fn enabled_users(&self) -> Result<UserFile, DbError> {
        let entries = self
            .conn
            .query(
                "SELECT name, hash FROM users WHERE disabled = 0 ORDER BY created, name",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        UserFile::from_entries(entries).map_err(|e| DbError::Invalid(e.to_string()))
    }

    /// Notes a successful sign-in now.
    pub fn record_sign_in(&self, name: &str) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE users SET last_sign_in = ?2 WHERE name = ?1",
            &[name.into(), now().into()],
        )?;
        Ok(())
    }

    /// Every user's groups.
    pub fn all_groups(&self) -> Result<std::collections::HashMap<String, Vec<String>>, DbError> {
        let mut map: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for row in self
            .conn
            .query("SELECT name, grp FROM user_groups ORDER BY name, grp", &[])?
        {
            map.entry(row.text(0)?).or_default().push(row.text(1)?);
        }
        Ok(map)
    }

    /// The groups of `name`.
    pub fn groups_of(&self, name: &str) -> Result<Vec<String>, DbError> {
        self.conn
            .query(
                "SELECT grp FROM user_groups WHERE name = ?1 ORDER BY grp",
                &[name.into()],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
    }

    /// Makes an API token for `name` (`portcullis tokens create`), valid for `ttl` or until
    /// revoked. Returns its id and the token itself, which is shown once: only its SHA-256 is
    /// stored (the token is 256 random bits, so a slow hash would add nothing).
    pub fn create_api_token(
        &self,
        name: &str,
        label: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<(String, String), DbError> {
        use base64::Engine as _;
        require_user(&self.conn, name)?;
        let token = format!(
            "{API_TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        let id: String = rand::random::<[u8; 6]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let now = now();
        let expires =
            ttl.map(|t| now.saturating_add(i64::try_from(t.as_secs()).unwrap_or(i64::MAX)));
        let hash = api_token_hash(&token);
        self.conn.execute(
            "INSERT INTO api_tokens (id, hash, name, label, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &[
                id.as_str().into(),
                hash.as_str().into(),
                name.into(),
                label.into(),
                now.into(),
                expires.into(),
            ],
        )?;
        Ok((id, token))
    }

    /// The API tokens, of one user or of all, newest first.
    pub fn api_tokens(&self, name: Option<&str>) -> Result<Vec<ApiTokenRow>, DbError> {
        self.conn
            .query(
                "SELECT id, name, label, created, expires, last_used FROM api_tokens \
                 WHERE CAST(?1 AS TEXT) IS NULL OR name = ?1 ORDER BY created DESC, id",
                &[name.into()],
            )?
            .iter()
            .map(|r| {
                Ok(ApiTokenRow {
                    id: r.text(0)?,
                    user: r.text(1)?,
                    label: r.text(2)?,
                    created: r.int(3)?,
                    expires: r.opt_int(4)?,
                    last_used: r.opt_int(5)?,
                })
            })
            .collect()
    }

    /// Revokes (deletes) an API token by id; returns its user.
    pub fn revoke_api_token(&self, id: &str) -> Result<String, DbError> {
        self.conn
            .query_opt(
                "DELETE FROM api_tokens WHERE id = ?1 RETURNING name",
                &[id.into()],
            )?
            .ok_or_else(|| DbError::Missing(format!("token {id}")))?
            .text(0)
    }

    /// Every API token of an enabled user, by the SHA-256 of the token, as the verifier loads
    /// them (expired ones included: they are refused as expired, not as unknown).
    pub fn live_api_tokens(&self) -> Result<HashMap<[u8; 32], ApiToken>, DbError> {
        let mut map = HashMap::new();
        for r in self.conn.query(
            "SELECT t.hash, t.id, t.name, t.expires, t.last_used FROM api_tokens t \
             JOIN users u ON u.name = t.name WHERE u.disabled = 0",
            &[],
        )? {
            if let Some(key) = decode_hex32(&r.text(0)?) {
                map.insert(
                    key,
                    ApiToken {
                        id: r.text(1)?,
                        user: r.text(2)?,
                        expires: r.opt_int(3)?,
                        last_used: r.opt_int(4)?,
                    },
                );
            }
        }
        Ok(map)
    }

    /// Notes that the token `id` was used at `at` (unix seconds).
    pub fn touch_api_token(&self, id: &str, at: i64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE api_tokens SET last_used = ?2 WHERE id = ?1",
            &[id.into(), at.into()],
        )?;
        Ok(())
    }

    /// Sets (or with `None`, removes) a user's Digest HA1 values for `realm` (MD5, SHA-256).
    pub fn set_digest(&self, name: &str, ha1: Option<(&str, &str, &str)>) -> Result<(), DbError> {
        let (realm, md5, sha256) = match ha1 {
            Some((r, m, s)) => (Some(r), Some(m), Some(s)),
            None => (None, None, None),
        };
        match self.conn.execute(
            "UPDATE users SET digest_realm = ?2, digest_md5 = ?3, digest_sha256 = ?4 WHERE name = ?1",
            &[name.into(), realm.into(), md5.into(), sha256.into()],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// The enabled users' Digest HA1 values for `realm`: (user, MD5, SHA-256).
    pub fn digest_rows(&self, realm: &str) -> Result<Vec<DigestRow>, DbError> {
        self.conn
            .query(
                "SELECT name, digest_md5, digest_sha256 FROM users \
                 WHERE disabled = 0 AND digest_realm = ?1 ORDER BY name",
                &[realm.into()],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.opt_text(1)?, r.opt_text(2)?)))
            .collect()
    }

    /// A number that changes when users, groups or tokens change: SQLite's `PRAGMA
    /// data_version` (other connections' changes), PostgreSQL's change counter (bumped by
    /// triggers, whoever made the change).
    pub fn data_version(&self) -> Result<i64, DbError> {
        let sql = self.conn.dialect(
            "PRAGMA data_version",
            "SELECT version FROM portcullis_changes WHERE id = 1",
        );
        self.conn
            .query_opt(sql, &[])?
            .ok_or_else(|| DbError::Invalid("no data version".into()))?
            .int(0)
    }

    /// Whether the connection is gone (a PostgreSQL server that restarted or went away).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        match &self.conn {
            Conn::Sqlite(_) => false,
            Conn::Postgres(c) => c.is_closed(),
        }
    }

    /// Whether this is a PostgreSQL database.
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_off_the_url() {
        assert_eq!(
            split_tls_params(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3"
            ),
            (
                "postgres://u@h/db?sslmode=require&connect_timeout=3".to_owned(),
                Some(std::path::PathBuf::from("/etc/ca.pem"))
            )
        );
        assert_eq!(
            split_tls_params("postgres://u@h/db?sslrootcert=/ca.pem&sslmode=disable"),
            (
                "postgres://u@h/db?sslmode=disable".to_owned(),
                Some(std::path::PathBuf::from("/ca.pem"))
            )
        );
        assert_eq!(split_tls_params("postgres://u@h/db").1, None);
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=secret"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://app:ab/cd?e@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(
            split_tls_params("postgres://u@h/db?sslrootcert=/ca.pem").0,
            "postgres://u@h/db?sslmode=require"
        );
    }

    #[test]
    fn totp_codes_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&dir.path().join("users.db")).unwrap();
        db.add("alice", &crate::hash_bcrypt(b"pw", 4).unwrap())
            .unwrap();
        let secret = crate::totp::new_secret();
        db.set_totp("alice", Some(&secret)).unwrap();
        assert!(db.totp_users().unwrap().contains("alice"));
        let raw = crate::totp::unbase32(&secret).unwrap();
        let now = 1_800_000_000;
        let code = format!(
            "{:06}",
            crate::totp::code_at(&raw, crate::totp::step_of(now))
        );
        assert!(!db.check_totp("alice", "000000", now).unwrap() || code == "000000");
        assert!(db.check_totp("alice", &code, now).unwrap());
        assert!(!db.check_totp("alice", &code, now).unwrap(), "replayed");
        db.set_totp("alice", None).unwrap();
        assert!(db.totp_users().unwrap().is_empty());
    }

    #[test]
    fn link_tokens_are_single_use_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let mut db = UserDb::open(&path).unwrap();
        db.add("alice", &crate::hash_bcrypt(b"old", 4).unwrap())
            .unwrap();
        db.set_email("alice", Some("Alice@Example.com")).unwrap();
        assert_eq!(
            db.user_by_email("alice@example.com").unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(db.user_by_email("nobody@example.com").unwrap(), None);
        assert!(db.set_email("alice", Some("not an address")).is_err());

        let hour = std::time::Duration::from_secs(3600);
        let first = db
            .issue_token("alice", TokenKind::Reset, hour, None)
            .unwrap()
            .unwrap();
        // Within a minute of the last one, with a minimum interval: nothing is issued.
        let minute = Some(std::time::Duration::from_secs(60));
        assert_eq!(
            db.issue_token("alice", TokenKind::Reset, hour, minute)
                .unwrap(),
            None
        );
        let token = db
            .issue_token("alice", TokenKind::Reset, hour, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            db.token_user(&first).unwrap(),
            None,
            "a newer link replaces the older one"
        );
        assert_eq!(
            db.token_user(&token).unwrap(),
            Some(("alice".into(), TokenKind::Reset))
        );
        let hash = crate::hash_bcrypt(b"new", 4).unwrap();
        // Two uses from two connections: one wins.
        let mut other = UserDb::open(&path).unwrap();
        assert_eq!(
            db.redeem_token(&token, &hash).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(other.redeem_token(&token, &hash).unwrap(), None);
        assert!(db.enabled_users().unwrap().verify("alice", b"new"));
        // Expired links do nothing.
        let stale = db
            .issue_token("alice", TokenKind::Reset, std::time::Duration::ZERO, None)
            .unwrap()
            .unwrap();
        assert_eq!(db.redeem_token(&stale, &hash).unwrap(), None);
        assert!(
            db.issue_token(
                "nobody",
                TokenKind::Invite,
                std::time::Duration::from_secs(1),
                None
            )
            .is_err()
        );
        // The database holds hashes of tokens, never the tokens.
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
    }

    #[test]
    fn users_round_trip_without_exposing_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let mut db = UserDb::open(&path).unwrap();
        let hash = crate::hash_bcrypt(b"pw", 4).unwrap();
        db.add("alice", &hash).unwrap();
        assert!(matches!(db.add("alice", &hash), Err(DbError::Exists(_))));
        assert!(matches!(db.add("a:b", &hash), Err(DbError::Invalid(_))));
        assert!(matches!(
            db.add("bob", "plaintext"),
            Err(DbError::Invalid(_))
        ));
        db.set_groups("alice", &["admins".into(), "staff".into()])
            .unwrap();
        assert!(db.enabled_users().unwrap().verify("alice", b"pw"));
        let list = db.list().unwrap();
        assert_eq!(list[0].groups, ["admins", "staff"]);
        db.set_disabled("alice", true).unwrap();
        assert!(!db.enabled_users().unwrap().contains("alice"));
        // Another connection's change is seen through data_version.
        let before = db.data_version().unwrap();
        UserDb::open(&path)
            .unwrap()
            .set_disabled("alice", false)
            .unwrap();
        assert_ne!(db.data_version().unwrap(), before);
        db.delete("alice").unwrap();
        assert!(
            db.groups_of("alice").unwrap().is_empty(),
            "groups go with the user"
        );
    }
}
