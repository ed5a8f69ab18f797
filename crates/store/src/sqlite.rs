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

use rusqlite::{Connection, OptionalExtension, params};

use crate::htpasswd::{LineProblem, StoredHash, UserFile};

/// Why a user-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("user database: {0}")]
    Sql(#[from] rusqlite::Error),
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

/// An open user database.
pub struct UserDb {
    conn: Connection,
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

/// `Err(Missing)` unless `name` is a user (inside a transaction, before changing what hangs on it).
fn require_user(conn: &Connection, name: &str) -> Result<(), DbError> {
    conn.query_row("SELECT 1 FROM users WHERE name = ?1", params![name], |_| {
        Ok(())
    })
    .optional()?
    .ok_or_else(|| DbError::Missing(name.to_owned()))
}

fn check_hash(hash: &str) -> Result<(), DbError> {
    StoredHash::parse(hash)
        .map(|_| ())
        .map_err(|e| DbError::Invalid(format!("unusable password hash: {e}")))
}

impl UserDb {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<UserDb, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // One process at a time creates and upgrades the schema (the CLI and a running gateway
        // may open a new database at the same moment): both would add the same column.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let migrated = Self::migrate(&conn);
        conn.execute_batch(if migrated.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        })?;
        migrated?;
        Ok(UserDb { conn })
    }

    fn migrate(conn: &Connection) -> Result<(), DbError> {
        conn.execute_batch(SCHEMA)?;
        // Databases made before emails existed get the column.
        let has_email = conn
            .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'email'")?
            .exists([])?;
        if !has_email {
            conn.execute_batch("ALTER TABLE users ADD COLUMN email TEXT")?;
        }
        let has_totp = conn
            .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'totp'")?
            .exists([])?;
        if !has_totp {
            conn.execute_batch(
                "ALTER TABLE users ADD COLUMN totp TEXT; ALTER TABLE users ADD COLUMN totp_step INTEGER;",
            )?;
        }
        // Digest HA1 values for one realm (set with the password while `digest` is on).
        let has_digest = conn
            .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'digest_realm'")?
            .exists([])?;
        if !has_digest {
            conn.execute_batch(
                "ALTER TABLE users ADD COLUMN digest_realm TEXT; \
                 ALTER TABLE users ADD COLUMN digest_md5 TEXT; \
                 ALTER TABLE users ADD COLUMN digest_sha256 TEXT;",
            )?;
        }
        Ok(())
    }

    /// Sets (a base32 secret) or removes (`None`) a user's TOTP second factor.
    pub fn set_totp(&self, name: &str, secret: Option<&str>) -> Result<(), DbError> {
        match self.conn.execute(
            "UPDATE users SET totp = ?2, totp_step = NULL WHERE name = ?1",
            params![name, secret],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// The users with a TOTP second factor.
    pub fn totp_users(&self) -> Result<std::collections::HashSet<String>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM users WHERE totp IS NOT NULL")?;
        Ok(stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    /// Checks `code` against the user's TOTP secret and spends its step (a code works once).
    pub fn check_totp(&self, name: &str, code: &str, unix_now: u64) -> Result<bool, DbError> {
        let secret: Option<String> = self
            .conn
            .query_row(
                "SELECT totp FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(raw) = secret.as_deref().and_then(crate::totp::unbase32) else {
            return Ok(false);
        };
        let Some(step) = crate::totp::matching_step(&raw, code, unix_now) else {
            return Ok(false);
        };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let claimed = self.conn.execute(
            "UPDATE users SET totp_step = ?2 WHERE name = ?1 AND (totp_step IS NULL OR totp_step < ?2)",
            params![name, step],
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
            params![name, email],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// A user's email address.
    pub fn email_of(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT email FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// The enabled user with this email address (case-insensitive), if exactly one has it.
    pub fn user_by_email(&self, email: &str) -> Result<Option<String>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT name FROM users WHERE lower(email) = lower(?1) AND disabled = 0 LIMIT 2",
        )?;
        let names: Vec<String> = stmt
            .query_map(params![email.trim()], |r| r.get(0))?
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
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        require_user(&tx, name)?;
        if let Some(within) = min_interval {
            let since = now.saturating_sub(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
            if tx
                .prepare("SELECT 1 FROM tokens WHERE name = ?1 AND kind = ?2 AND created > ?3")?
                .exists(params![name, kind.as_str(), since])?
            {
                return Ok(None);
            }
        }
        tx.execute(
            "UPDATE tokens SET used = ?3 WHERE name = ?1 AND kind = ?2 AND used IS NULL",
            params![name, kind.as_str(), now],
        )?;
        tx.execute(
            "INSERT INTO tokens (hash, name, kind, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash(&token), name, kind.as_str(), now, expires],
        )?;
        // Spent and expired tokens older than a week are of no use to anyone.
        tx.execute(
            "DELETE FROM tokens WHERE expires < ?1",
            params![now - 7 * 24 * 3600],
        )?;
        tx.commit()?;
        Ok(Some(token))
    }

    /// The user a live (unused, unexpired) token belongs to, and its kind.
    pub fn token_user(&self, token: &str) -> Result<Option<(String, TokenKind)>, DbError> {
        let found: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT name, kind FROM tokens WHERE hash = ?1 AND used IS NULL AND expires > ?2",
                params![token_hash(token), now()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(found.map(|(name, kind)| {
            let kind = if kind == "invite" {
                TokenKind::Invite
            } else {
                TokenKind::Reset
            };
            (name, kind)
        }))
    }

    /// Spends `token` and sets its user's password hash, in one transaction: of two concurrent
    /// uses of a link, exactly one succeeds; a failure (disk full) changes nothing. Returns the
    /// user, or `None` if the token was unknown, used or expired.
    pub fn redeem_token(&mut self, token: &str, hash: &str) -> Result<Option<String>, DbError> {
        check_hash(hash)?;
        let now = now();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let name: Option<String> = tx
            .query_row(
                "UPDATE tokens SET used = ?2 WHERE hash = ?1 AND used IS NULL AND expires > ?2 RETURNING name",
                params![token_hash(token), now],
                |r| r.get(0),
            )
            .optional()?;
        let Some(name) = name else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE users SET hash = ?2, digest_realm = NULL, digest_md5 = NULL, digest_sha256 = NULL WHERE name = ?1",
            params![name, hash],
        )?;
        // Other outstanding links of this user stop working with the new password.
        tx.execute(
            "UPDATE tokens SET used = ?2 WHERE name = ?1 AND used IS NULL",
            params![name, now],
        )?;
        tx.commit()?;
        Ok(Some(name))
    }

    /// Adds a user with a hash (as `portcullis hash` or `htpasswd` writes it).
    pub fn add(&self, name: &str, hash: &str) -> Result<(), DbError> {
        check_name(name)?;
        check_hash(hash)?;
        match self.conn.execute(
            "INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3)",
            params![name, hash, now()],
        ) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(DbError::Exists(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a user's hash.
    pub fn set_hash(&self, name: &str, hash: &str) -> Result<(), DbError> {
        check_hash(hash)?;
        match self.conn.execute(
            "UPDATE users SET hash = ?2, digest_realm = NULL, digest_md5 = NULL, digest_sha256 = NULL WHERE name = ?1",
            params![name, hash],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Deletes a user (and its groups).
    pub fn delete(&self, name: &str) -> Result<(), DbError> {
        match self
            .conn
            .execute("DELETE FROM users WHERE name = ?1", params![name])?
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
            params![name, disabled],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => {
                if disabled {
                    self.conn.execute(
                        "UPDATE tokens SET used = ?2 WHERE name = ?1 AND used IS NULL",
                        params![name, now()],
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Replaces a user's groups.
    pub fn set_groups(&mut self, name: &str, groups: &[String]) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        require_user(&tx, name)?;
        tx.execute("DELETE FROM user_groups WHERE name = ?1", params![name])?;
        for g in groups {
            tx.execute(
                "INSERT OR IGNORE INTO user_groups (name, grp) VALUES (?1, ?2)",
                params![name, g],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<UserRow>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT u.name, u.disabled, u.last_sign_in, group_concat(g.grp, ','), u.email, \
             u.totp IS NOT NULL FROM users u \
             LEFT JOIN user_groups g ON g.name = u.name GROUP BY u.name ORDER BY u.name",
        )?;
        let rows = stmt.query_map([], |r| {
            let groups: Option<String> = r.get(3)?;
            Ok(UserRow {
                name: r.get(0)?,
                disabled: r.get(1)?,
                last_sign_in: r.get(2)?,
                email: r.get(4)?,
                totp: r.get(5)?,
                groups: groups
                    .map(|g| g.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Imports an htpasswd file, keeping its hashes; existing users get the file's hash.
    /// Returns how many users were imported and the lines that were skipped.
    pub fn import_htpasswd(&mut self, path: &Path) -> Result<(usize, Vec<LineProblem>), DbError> {
        let text = std::fs::read_to_string(path)?;
        let mut problems = Vec::new();
        let tx = self.conn.transaction()?;
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
                params![name, hash, now()],
            )?;
            count += 1;
        }
        tx.commit()?;
        Ok((count, problems))
    }

    /// The enabled users and their hashes, as the verifier loads them.
    pub fn enabled_users(&self) -> Result<UserFile, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, hash FROM users WHERE disabled = 0 ORDER BY created, name")?;
        let entries = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        UserFile::from_entries(entries).map_err(|e| DbError::Invalid(e.to_string()))
    }

    /// Notes a successful sign-in now.
    pub fn record_sign_in(&self, name: &str) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE users SET last_sign_in = ?2 WHERE name = ?1",
            params![name, now()],
        )?;
        Ok(())
    }

    /// Every user's groups.
    pub fn all_groups(&self) -> Result<std::collections::HashMap<String, Vec<String>>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, grp FROM user_groups ORDER BY name, grp")?;
        let mut map: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (name, grp) = row?;
            map.entry(name).or_default().push(grp);
        }
        Ok(map)
    }

    /// The groups of `name`.
    pub fn groups_of(&self, name: &str) -> Result<Vec<String>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT grp FROM user_groups WHERE name = ?1 ORDER BY grp")?;
        Ok(stmt
            .query_map(params![name], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
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
        self.conn.execute(
            "INSERT INTO api_tokens (id, hash, name, label, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, api_token_hash(&token), name, label, now, expires],
        )?;
        Ok((id, token))
    }

    /// The API tokens, of one user or of all, newest first.
    pub fn api_tokens(&self, name: Option<&str>) -> Result<Vec<ApiTokenRow>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, label, created, expires, last_used FROM api_tokens              WHERE ?1 IS NULL OR name = ?1 ORDER BY created DESC, id",
        )?;
        let rows = stmt.query_map(params![name], |r| {
            Ok(ApiTokenRow {
                id: r.get(0)?,
                user: r.get(1)?,
                label: r.get(2)?,
                created: r.get(3)?,
                expires: r.get(4)?,
                last_used: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes (deletes) an API token by id; returns its user.
    pub fn revoke_api_token(&self, id: &str) -> Result<String, DbError> {
        self.conn
            .query_row(
                "DELETE FROM api_tokens WHERE id = ?1 RETURNING name",
                params![id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| DbError::Missing(format!("token {id}")))
    }

    /// Every API token of an enabled user, by the SHA-256 of the token, as the verifier loads
    /// them (expired ones included: they are refused as expired, not as unknown).
    pub fn live_api_tokens(&self) -> Result<HashMap<[u8; 32], ApiToken>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT t.hash, t.id, t.name, t.expires, t.last_used FROM api_tokens t              JOIN users u ON u.name = t.name WHERE u.disabled = 0",
        )?;
        let mut map = HashMap::new();
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                ApiToken {
                    id: r.get(1)?,
                    user: r.get(2)?,
                    expires: r.get(3)?,
                    last_used: r.get(4)?,
                },
            ))
        })? {
            let (hex, token) = row?;
            if let Some(key) = decode_hex32(&hex) {
                map.insert(key, token);
            }
        }
        Ok(map)
    }

    /// Notes that the token `id` was used at `at` (unix seconds).
    pub fn touch_api_token(&self, id: &str, at: i64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE api_tokens SET last_used = ?2 WHERE id = ?1",
            params![id, at],
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
            params![name, realm, md5, sha256],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// The enabled users' Digest HA1 values for `realm`: (user, MD5, SHA-256).
    pub fn digest_rows(&self, realm: &str) -> Result<Vec<DigestRow>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, digest_md5, digest_sha256 FROM users \
             WHERE disabled = 0 AND digest_realm = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![realm], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Changes made by other connections since this one last looked (`PRAGMA data_version`).
    pub fn data_version(&self) -> Result<i64, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
