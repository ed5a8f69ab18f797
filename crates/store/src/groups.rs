//! Apache AuthGroupFile (`group: alice bob`): which groups each user belongs to, re-read when the
//! file changes (checked at most once a second, like the user file).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::htpasswd::LineProblem;
use crate::throttle::Throttle;
use crate::verifier::FileStamp;

/// A parsed group file.
#[derive(Debug, Clone, Default)]
pub struct GroupFile {
    by_user: HashMap<String, Vec<String>>,
    groups: HashSet<String>,
}

impl GroupFile {
    /// Parses `group: member member …` lines; `#` starts a comment line.
    pub fn parse(text: &str) -> (GroupFile, Vec<LineProblem>) {
        let mut file = GroupFile::default();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((group, members)) = line.split_once(':') else {
                problems.push(LineProblem {
                    line: i + 1,
                    message: "expected \"group: user user …\"".into(),
                });
                continue;
            };
            let group = group.trim();
            if group.is_empty() || group.contains(char::is_whitespace) {
                problems.push(LineProblem {
                    line: i + 1,
                    message: "the group name is empty or contains spaces".into(),
                });
                continue;
            }
            file.groups.insert(group.to_owned());
            for member in members.split_whitespace() {
                let list = file.by_user.entry(member.to_owned()).or_default();
                if !list.iter().any(|g| g == group) {
                    list.push(group.to_owned());
                }
            }
        }
        (file, problems)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> std::io::Result<(GroupFile, Vec<LineProblem>)> {
        Ok(GroupFile::parse(&std::fs::read_to_string(path)?))
    }

    /// The groups of `user`, in file order.
    pub fn groups_of(&self, user: &str) -> &[String] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }

    /// Whether the file defines `group`.
    pub fn defines(&self, group: &str) -> bool {
        self.groups.contains(group)
    }
}

/// The group file in force, reloaded when it changes.
pub struct Groups {
    path: Option<PathBuf>,
    current: ArcSwap<GroupFile>,
    stamp: Mutex<Option<FileStamp>>,
    /// The file is looked at once a second at most.
    poll: Throttle,
}

impl Groups {
    /// No groups at all (no `auth.groups`).
    pub fn none() -> Groups {
        Groups {
            path: None,
            current: ArcSwap::from_pointee(GroupFile::default()),
            stamp: Mutex::new(None),
            poll: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Loads `path`; problems are logged with their line.
    pub fn load(path: PathBuf) -> std::io::Result<Groups> {
        let stamp = FileStamp::of(&path).ok();
        let (file, problems) = GroupFile::load(&path)?;
        log_problems(&path, &problems);
        Ok(Groups {
            current: ArcSwap::from_pointee(file),
            path: Some(path),
            stamp: Mutex::new(stamp),
            poll: Throttle::new(Duration::from_secs(1)),
        })
    }

    /// The groups of `user` (re-reading the file first if it changed and a second has passed).
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        self.poll();
        self.current.load().groups_of(user).to_vec()
    }

    fn poll(&self) {
        let Some(path) = &self.path else { return };
        if self.poll.due() {
            self.reload_if_changed(path);
        }
    }

    /// Re-reads the file if its stamp changed.
    pub fn reload_now(&self) {
        if let Some(path) = &self.path {
            self.reload_if_changed(path);
        }
    }

    fn reload_if_changed(&self, path: &Path) {
        let Ok(mut stamp) = self.stamp.lock() else {
            return;
        };
        let new = FileStamp::of(path).ok();
        if new.is_none() || *stamp == new {
            return;
        }
        match GroupFile::load(path) {
            Ok((file, problems)) => {
                log_problems(path, &problems);
                self.current.store(std::sync::Arc::new(file));
                *stamp = new;
                tracing::info!(file = %path.display(), "group file reloaded");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot re-read the group file; keeping the previous groups")
            }
        }
    }
}

fn log_problems(path: &Path, problems: &[LineProblem]) {
    for p in problems {
        tracing::warn!("{}:{}: {}; line skipped", path.display(), p.line, p.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apache_group_files() {
        let (f, problems) = GroupFile::parse(
            "# staff\nadmins: alice bob\nops:alice\n\nbroken line\nadmins: carol alice\n",
        );
        assert_eq!(f.groups_of("alice"), ["admins", "ops"]);
        assert_eq!(f.groups_of("carol"), ["admins"]);
        assert!(f.groups_of("nobody").is_empty());
        assert!(f.defines("ops") && !f.defines("broken line"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 5);
    }

    #[test]
    fn a_changed_file_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        std::fs::write(&path, "admins: alice\n").unwrap();
        let g = Groups::load(path.clone()).unwrap();
        assert_eq!(g.groups_of("bob"), Vec::<String>::new());
        std::fs::write(&path, "admins: alice bob\nextra: x\n").unwrap();
        g.reload_now();
        assert_eq!(g.groups_of("bob"), ["admins"]);
    }
}
