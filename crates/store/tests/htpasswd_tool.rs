//! Compatibility with files written by the real Apache `htpasswd` tool.
//!
//! The fixtures are generated at test time by Debian's `htpasswd`
//! (apache2-utils), so these tests prove we read what operators actually have.
//! They fail, rather than skip, when the tool is missing.

use std::path::Path;
use std::process::Command;

use portcullis_store::{HashAlgorithm, UserFile, hash_bcrypt};

/// Runs `htpasswd` with `args`, panicking with install advice if it is missing.
fn htpasswd(args: &[&str]) -> std::process::Output {
    match Command::new("htpasswd").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the `htpasswd` tool is required by these tests; install it with \
             `apt-get install apache2-utils`"
        ),
        Err(e) => panic!("cannot run htpasswd: {e}"),
    }
}

/// Adds (or creates the file with) `user` using `htpasswd -b [flags]`.
fn add_user(file: &Path, flags: &[&str], user: &str, password: &str) {
    let file_arg = file.to_str().expect("utf-8 temp path");
    let mut args = vec![if file.exists() { "-b" } else { "-bc" }];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[file_arg, user, password]);
    let output = htpasswd(&args);
    assert!(
        output.status.success(),
        "htpasswd {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every format this Debian `htpasswd` can write that we support.
const FORMATS: &[(&str, &[&str], HashAlgorithm)] = &[
    ("default", &[], HashAlgorithm::Apr1),
    ("md5", &["-m"], HashAlgorithm::Apr1),
    ("bcrypt", &["-B"], HashAlgorithm::Bcrypt),
    ("bcrypt4", &["-B", "-C", "4"], HashAlgorithm::Bcrypt),
    ("sha1", &["-s"], HashAlgorithm::Sha1),
    ("sha256", &["-2"], HashAlgorithm::Sha256Crypt),
    ("sha512", &["-5"], HashAlgorithm::Sha512Crypt),
    ("sha256r", &["-2", "-r", "1000"], HashAlgorithm::Sha256Crypt),
    (
        "sha512r",
        &["-5", "-r", "12345"],
        HashAlgorithm::Sha512Crypt,
    ),
];

fn password_for(user: &str) -> String {
    // Over 32 bytes (several MD5 / SHA-256 blocks), under bcrypt's 72.
    format!("pässwörd {user} :$\\\"' 🦀 long enough tail")
}

#[test]
fn every_htpasswd_format_verifies_right_and_refuses_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    for (user, flags, _) in FORMATS {
        add_user(&path, flags, user, &password_for(user));
    }
    // Short and empty passwords too.
    add_user(&path, &["-m"], "short", "x");
    add_user(&path, &["-B", "-C", "4"], "empty", "");

    let (file, problems) = UserFile::load(&path).expect("load");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(file.len(), FORMATS.len() + 2);

    for (user, _, algorithm) in FORMATS {
        let password = password_for(user);
        assert_eq!(
            file.get(user).map(|hash| hash.algorithm()),
            Some(*algorithm),
            "{user}"
        );
        assert!(file.verify(user, password.as_bytes()), "{user} refused");
        assert!(!file.verify(user, b"wrong"), "{user} accepted wrong");
        assert!(
            !file.verify(user, format!("{password}x").as_bytes()),
            "{user} accepted a longer password"
        );
        // Another user's password does not work.
        assert!(!file.verify(user, password_for("sha1").as_bytes()) || *user == "sha1");
    }
    assert!(file.verify("short", b"x") && !file.verify("short", b"y"));
    assert!(file.verify("empty", b"") && !file.verify("empty", b" "));

    // Parameters written by the tool are honoured.
    let shown = |user: &str| file.get(user).expect(user).to_string();
    assert_eq!(shown("bcrypt"), "bcrypt (cost 5)");
    assert_eq!(shown("sha256r"), "sha256-crypt (rounds 1000)");
    assert_eq!(shown("sha512r"), "sha512-crypt (rounds 12345)");
}

#[test]
fn bcrypt_truncates_at_72_bytes_like_apache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    let long = "a".repeat(72);
    add_user(&path, &["-B", "-C", "4"], "alice", &format!("{long}first"));
    let (file, _) = UserFile::load(&path).expect("load");
    let other = format!("{long}second");
    assert!(file.verify("alice", other.as_bytes()));
    let file_arg = path.to_str().expect("utf-8");
    assert!(
        htpasswd(&["-vb", file_arg, "alice", &other])
            .status
            .success()
    );
}

#[test]
fn des_and_plaintext_lines_are_reported_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    add_user(&path, &["-B", "-C", "4"], "alice", "alice pw");
    add_user(&path, &["-d"], "des", "secret");
    add_user(&path, &["-p"], "plain", "plaintext-secret");
    add_user(&path, &["-5"], "bob", "bob pw");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("# managed by hand\n{text}garbage line\n")).expect("write");

    let (file, problems) = UserFile::load(&path).expect("load");
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [3, 4, 6], "{problems:?}");
    assert!(
        problems[0].message.contains("DES"),
        "{}",
        problems[0].message
    );
    assert!(
        problems[1].message.contains("plaintext"),
        "{}",
        problems[1].message
    );
    assert!(problems[2].message.contains("missing ':'"));
    for problem in &problems {
        assert!(!problem.message.contains("plaintext-secret"));
    }
    assert_eq!(file.len(), 2);
    assert!(file.verify("alice", b"alice pw"));
    assert!(file.verify("bob", b"bob pw"));
    assert!(!file.verify("plain", b"plaintext-secret"));
    assert!(!file.verify("des", b"secret"));
}

#[test]
fn hash_bcrypt_output_is_accepted_by_htpasswd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    let hash = hash_bcrypt("höhö pw".as_bytes(), 5).expect("hash");
    assert!(hash.starts_with("$2y$05$"));
    std::fs::write(&path, format!("alice:{hash}\n")).expect("write");
    let file_arg = path.to_str().expect("utf-8");
    assert!(
        htpasswd(&["-vb", file_arg, "alice", "höhö pw"])
            .status
            .success()
    );
    assert!(
        !htpasswd(&["-vb", file_arg, "alice", "nope"])
            .status
            .success()
    );
}

#[test]
fn unknown_users_are_checked_against_a_hash_like_the_first_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    add_user(&path, &["-B", "-C", "9"], "first", "first pw");
    add_user(&path, &["-m"], "second", "second pw");
    let (file, problems) = UserFile::load(&path).expect("load");
    assert!(problems.is_empty());
    let dummy = file.timing_dummy().expect("dummy");
    assert_eq!(dummy.algorithm(), HashAlgorithm::Bcrypt);
    assert_eq!(dummy.to_string(), "bcrypt (cost 9)");
    assert!(!file.verify("nobody", b"first pw"));

    // Timing itself is measured in bench/, not here: tests never assert on durations.

    // A file starting with SHA-512-crypt gets a SHA-512-crypt dummy.
    let other = dir.path().join("other");
    add_user(&other, &["-5", "-r", "20000"], "first", "pw");
    add_user(&other, &["-B", "-C", "4"], "second", "pw");
    let (file, _) = UserFile::load(&other).expect("load");
    assert_eq!(
        file.timing_dummy().map(ToString::to_string).as_deref(),
        Some("sha512-crypt (rounds 20000)")
    );
}
