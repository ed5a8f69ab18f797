//! Forward-auth questions, as a trusted front proxy and as anyone else asks them.

use super::*;

// --- Forward-auth ----------------------------------------------------------------------------------

fn question(original: &str, headers: &[(&str, &str)]) -> Request<RequestBody> {
    let mut all = vec![("x-original-uri", original), ("x-original-method", "GET")];
    all.extend_from_slice(headers);
    request("GET", "/.portcullis/auth", &all)
}

#[tokio::test]
async fn forward_auth_allows_with_the_identity_headers() {
    let site = Site::new("", "").await;
    let a = site
        .send_from(
            "10.0.0.2",
            question("/private/x", &[("authorization", &basic("alice", PW))]),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("remote-user"), Some("alice"));
    assert_eq!(a.header("remote-groups"), Some("admins"));
    assert_eq!(a.log["cs_uri_stem"], "/private/x");
    assert_eq!(
        site.requests_metric(200, 0, "none").await.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn forward_auth_answers_nginx_with_headers_only_and_the_reason() {
    let site = Site::new("", "").await;
    let a = site
        .send_from("10.0.0.2", question("/private/x", &[JSON]))
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    assert!(a.body.is_empty(), "auth_request discards bodies: {a:?}");
    assert_eq!(a.header("x-portcullis-problem"), Some("no_credentials"));
    assert!(a.header("www-authenticate").unwrap().starts_with("Basic"));
    assert_eq!(a.logged(), "401.2 no_credentials");
}

#[tokio::test]
async fn forward_auth_sends_nginx_a_browser_redirect_as_a_401_with_an_absolute_location() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let a = site
        .send_from(
            "10.0.0.2",
            question("/private/x", &[HTML, ("x-forwarded-host", "app.example")]),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{a:?}");
    let location = a.header("location").unwrap();
    assert!(
        location.starts_with("http://app.example/.portcullis/login?rd="),
        "{location}"
    );
}

#[tokio::test]
async fn forward_auth_from_an_untrusted_peer_judges_its_own_address() {
    let site = Site::new("", "").await;
    // The client describes a public path; it is not believed.
    let a = site
        .send_from("192.0.2.9", question("/public/x", &[JSON]))
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.log["cs_uri_stem"], "/.portcullis/auth");
}

#[tokio::test]
async fn forward_auth_without_the_original_request_is_400() {
    let site = Site::new("", "").await;
    let a = site
        .send_from("10.0.0.2", request("GET", "/.portcullis/auth", &[JSON]))
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.log["reason"], "bad_forwarded_header");
}

#[tokio::test]
async fn forward_auth_refuses_a_dot_segment_in_the_original_path() {
    let site = Site::new("", "").await;
    let a = site
        .send_from(
            "10.0.0.2",
            question(
                "/public/../private/x",
                &[("authorization", &basic("alice", PW))],
            ),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{a:?}");
}
