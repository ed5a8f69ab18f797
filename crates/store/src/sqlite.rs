//! The SQLite user store (`auth.users = "sqlite:PATH"`), for sites that manage their users in
//! Portcullis rather than in an htpasswd file: names, password hashes (argon2id by default, or
//! any htpasswd format kept by `users import`), groups and a disabled flag.
//!
//! The database runs in WAL mode with a busy timeout, so `portcullis users …` can change it
//! while the server reads it; the server notices changes through `PRAGMA data_version` and
//! reloads the enabled users (see [`crate::verifier`]).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

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
";

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
        conn.execute_batch(SCHEMA)?;
        Ok(UserDb { conn })
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
            "UPDATE users SET hash = ?2 WHERE name = ?1",
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

    /// Disables or enables sign-in for a user.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), DbError> {
        match self.conn.execute(
            "UPDATE users SET disabled = ?2 WHERE name = ?1",
            params![name, disabled],
        )? {
            0 => Err(DbError::Missing(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Replaces a user's groups.
    pub fn set_groups(&mut self, name: &str, groups: &[String]) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        if tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", params![name], |_| {
                Ok(())
            })
            .optional()?
            .is_none()
        {
            return Err(DbError::Missing(name.to_owned()));
        }
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
            "SELECT u.name, u.disabled, u.last_sign_in, group_concat(g.grp, ',') FROM users u \
             LEFT JOIN user_groups g ON g.name = u.name GROUP BY u.name ORDER BY u.name",
        )?;
        let rows = stmt.query_map([], |r| {
            let groups: Option<String> = r.get(3)?;
            Ok(UserRow {
                name: r.get(0)?,
                disabled: r.get(1)?,
                last_sign_in: r.get(2)?,
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
                "INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET hash = excluded.hash",
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
