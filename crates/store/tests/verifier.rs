//! Behaviour of the cached, bounded, reloading [`Verifier`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis_store::{LoadError, UserSource, Verification, Verifier, hash_bcrypt};

fn bcrypt(password: &str) -> String {
    hash_bcrypt(password.as_bytes(), 4).expect("hash")
}

fn write_users(path: &Path, users: &[(&str, &str)]) {
    let text: String = users
        .iter()
        .map(|(user, password)| format!("{user}:{}\n", bcrypt(password)))
        .collect();
    std::fs::write(path, text).expect("write users");
}

fn file_verifier(path: &Path, cache_ttl: Duration) -> Verifier {
    Verifier::new(UserSource::File(path.to_owned()), cache_ttl, 4).expect("load")
}

#[test]
fn verifier_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Verifier>();
    fn assert_send<T: Send>(_: &T) {}
    let verifier = Verifier::new(UserSource::Inline(Vec::new()), Duration::ZERO, 1)
        .expect("empty inline source");
    assert_send(&verifier.verify("a", "b"));
}

#[tokio::test]
async fn outcomes_are_cached_accepted_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    write_users(&path, &[("alice", "alice pw"), ("bob", "bob pw")]);
    let verifier = file_verifier(&path, Duration::from_secs(60));
    assert_eq!(verifier.user_count(), 2);

    assert_eq!(
        verifier.verify("alice", "alice pw").await,
        Verification::Accepted
    );
    assert_eq!(verifier.hash_checks(), 1);
    assert_eq!(
        verifier.verify("alice", "alice pw").await,
        Verification::Accepted
    );
    assert_eq!(verifier.hash_checks(), 1, "second check must hit the cache");

    assert_eq!(
        verifier.verify("alice", "wrong").await,
        Verification::Refused
    );
    assert_eq!(
        verifier.verify("alice", "wrong").await,
        Verification::Refused
    );
    assert_eq!(verifier.hash_checks(), 2, "refusals are cached too");

    assert_eq!(verifier.verify("nobody", "x").await, Verification::Refused);
    assert_eq!(verifier.verify("nobody", "x").await, Verification::Refused);
    assert_eq!(verifier.hash_checks(), 3);

    // The key covers user and password unambiguously.
    assert_eq!(
        verifier.verify("bob", "alice pw").await,
        Verification::Refused
    );
    assert_eq!(
        verifier.verify("alic", "ealice pw").await,
        Verification::Refused
    );
    assert_eq!(
        verifier.verify("bob", "bob pw").await,
        Verification::Accepted
    );
    assert_eq!(verifier.hash_checks(), 6);
}

#[tokio::test]
async fn zero_ttl_disables_the_cache() {
    let verifier = Verifier::new(
        UserSource::Inline(vec![("alice".into(), bcrypt("pw"))]),
        Duration::ZERO,
        2,
    )
    .expect("inline");
    for expected_checks in 1..=3 {
        assert_eq!(verifier.verify("alice", "pw").await, Verification::Accepted);
        assert_eq!(verifier.hash_checks(), expected_checks);
    }
}

#[tokio::test]
async fn file_change_takes_effect_and_drops_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    write_users(&path, &[("alice", "old pw")]);
    let verifier = file_verifier(&path, Duration::from_secs(3600));
    assert_eq!(verifier.generation(), 0);
    assert_eq!(
        verifier.verify("alice", "old pw").await,
        Verification::Accepted
    );
    assert_eq!(
        verifier.verify("alice", "new pw").await,
        Verification::Refused
    );
    assert_eq!(verifier.hash_checks(), 2);

    write_users(&path, &[("alice", "new pw"), ("carol", "carol pw")]);
    verifier.reload_now();
    assert_eq!(verifier.generation(), 1);
    assert_eq!(verifier.user_count(), 2);

    // Both earlier outcomes were cached; after the reload they are recomputed.
    assert_eq!(
        verifier.verify("alice", "new pw").await,
        Verification::Accepted
    );
    assert_eq!(
        verifier.verify("alice", "old pw").await,
        Verification::Refused
    );
    assert_eq!(verifier.hash_checks(), 4);
    assert_eq!(
        verifier.verify("carol", "carol pw").await,
        Verification::Accepted
    );
}

#[tokio::test]
async fn unreadable_file_on_reload_keeps_old_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    write_users(&path, &[("alice", "pw")]);
    let verifier = file_verifier(&path, Duration::from_secs(60));
    std::fs::remove_file(&path).expect("remove");
    verifier.reload_now();
    assert_eq!(verifier.generation(), 0);
    assert_eq!(verifier.verify("alice", "pw").await, Verification::Accepted);

    // Recovery: the file comes back changed.
    write_users(&path, &[("bob", "pw")]);
    verifier.reload_now();
    assert_eq!(verifier.generation(), 1);
    assert_eq!(verifier.verify("bob", "pw").await, Verification::Accepted);
    assert_eq!(verifier.verify("alice", "pw").await, Verification::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_permit_serves_a_flood_correctly() {
    let verifier = Arc::new(
        Verifier::new(
            UserSource::Inline(vec![
                ("alice".into(), bcrypt("alice pw")),
                ("bob".into(), bcrypt("bob pw")),
            ]),
            Duration::from_secs(60),
            1,
        )
        .expect("inline"),
    );
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let verifier = Arc::clone(&verifier);
            tokio::spawn(async move {
                let (user, password, expected) = match i % 4 {
                    0 => ("alice", "alice pw".to_owned(), Verification::Accepted),
                    1 => ("bob", "bob pw".to_owned(), Verification::Accepted),
                    2 => ("alice", format!("guess {i}"), Verification::Refused),
                    _ => ("mallory", format!("guess {i}"), Verification::Refused),
                };
                (verifier.verify(user, &password).await, expected)
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            let (got, expected) = task.await.expect("join");
            assert_eq!(got, expected);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("all verifications complete");
    // 20 distinct wrong guesses plus at most one check per correct pair.
    let checks = verifier.hash_checks();
    assert!((22..=40).contains(&checks), "{checks} checks");
}

#[test]
fn missing_file_is_a_load_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("does-not-exist");
    let error =
        Verifier::new(UserSource::File(path.clone()), Duration::ZERO, 1).expect_err("missing file");
    assert!(matches!(error, LoadError::Read { .. }));
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn file_without_valid_users_loads_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users");
    std::fs::write(&path, "alice:plaintext\n# nothing else\n").expect("write");
    let verifier = file_verifier(&path, Duration::ZERO);
    assert_eq!(verifier.user_count(), 0);
}

#[test]
fn bad_inline_user_is_named() {
    let error = Verifier::new(
        UserSource::Inline(vec![
            ("alice".into(), bcrypt("pw")),
            ("mallory".into(), "secret".into()),
        ]),
        Duration::ZERO,
        1,
    )
    .expect_err("plaintext inline hash");
    assert!(matches!(error, LoadError::Inline(_)));
    let message = error.to_string();
    assert!(
        message.contains("mallory") && !message.contains("secret"),
        "{message}"
    );
}
