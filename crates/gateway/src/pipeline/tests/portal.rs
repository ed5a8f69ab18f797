//! The portal's pages behind phases 2–4.

use super::*;

// --- The portal ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_sign_in_page_is_served_with_its_csrf_cookie() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let a = site.get("/.portcullis/login", &[HTML]).await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("<form"), "{}", a.body);
    assert!(a.headers.contains_key(http::header::SET_COOKIE));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert!(a.header("x-request-id").is_some());
}

#[tokio::test]
async fn a_portal_page_answers_an_unknown_method_405() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let a = site
        .send(request("DELETE", "/.portcullis/login", &[]))
        .await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("GET, HEAD, POST"));
}

#[tokio::test]
async fn a_sign_in_form_from_another_site_is_refused() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let mut req = request(
        "POST",
        "/.portcullis/login",
        &[
            ("origin", "https://evil.example"),
            ("host", "app.example"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
    );
    *req.body_mut() = RequestBody::from("username=alice&password=right-pw");
    let a = site.send(req).await;
    assert!(a.status >= 400, "{a:?}");
    assert!(
        !a.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("portcullis_session=")),
        "no session for a cross-site form: {a:?}"
    );
}

#[tokio::test]
async fn the_portal_is_behind_the_ip_rules_too() {
    let site = Site::new(
        "schemes = [\"form\", \"basic\"]",
        "[ip]\ndeny = [\"198.51.100.0/24\"]",
    )
    .await;
    let a = site
        .send_from(
            "198.51.100.7",
            request("GET", "/.portcullis/login", &[JSON]),
        )
        .await
        .unwrap();
    assert_refused(&site, &a, 403, 503, "ip_denied").await;
}
