//! Phases 1–9 in proxy mode: every reason x deny_action an in-process request can produce.

use super::*;

// --- Phase 1: framing -------------------------------------------------------------------------

#[tokio::test]
async fn transfer_encoding_twice_is_400_and_closes_the_connection() {
    let site = Site::new("", "").await;
    let a = site
        .get(
            "/public/x",
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
                JSON,
            ],
        )
        .await;
    assert_refused(&site, &a, 400, 0, "bad_request").await;
    assert_eq!(a.header("connection"), Some("close"));
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501() {
    let site = Site::new("", "").await;
    let a = site
        .get("/public/x", &[("transfer-encoding", "gzip, chunked"), JSON])
        .await;
    assert_eq!(a.status, 501, "{a:?}");
    assert_eq!(a.header("connection"), Some("close"));
}

// --- Phase 2: the client address --------------------------------------------------------------

#[tokio::test]
async fn a_trusted_proxys_unreadable_forwarding_header_is_400_10() {
    let site = Site::new("", "").await;
    let a = site
        .send_from(
            "10.1.2.3",
            request(
                "GET",
                "/public/x",
                &[("x-forwarded-for", "not an address"), JSON],
            ),
        )
        .await
        .unwrap();
    assert_refused(&site, &a, 400, 10, "bad_forwarded_header").await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_an_untrusted_peer_does_not() {
    let site = Site::new("", "[ip]\ndeny = [\"198.51.100.0/24\"]").await;
    // From a trusted proxy, the client it names is the one judged (and logged).
    let a = site
        .send_from(
            "10.1.2.3",
            request(
                "GET",
                "/public/x",
                &[("x-forwarded-for", "198.51.100.9"), JSON],
            ),
        )
        .await
        .unwrap();
    assert_eq!(a.logged(), "403.503 ip_denied");
    assert_eq!(a.log["c_ip"], "198.51.100.9");
    // From anyone else, the header is a claim: the peer is judged.
    let a = site
        .send_from(
            "192.0.2.50",
            request(
                "GET",
                "/public/x",
                &[("x-forwarded-for", "198.51.100.9"), JSON],
            ),
        )
        .await
        .unwrap();
    assert_eq!(a.logged(), "502.0 upstream_unavailable");
    assert_eq!(a.log["c_ip"], "192.0.2.50");
}

// --- Phase 3: IP rules × deny_action -----------------------------------------------------------

async fn listed(action: &str) -> (Site, Result<Answered, Abort>) {
    let site = Site::new(
        "",
        &format!("[ip]\ndeny = [\"198.51.100.0/24\"]\ndeny_action = \"{action}\""),
    )
    .await;
    let a = site
        .send_from("198.51.100.7", request("GET", "/private", &[JSON]))
        .await;
    (site, a)
}

#[tokio::test]
async fn a_listed_address_is_403_503_by_default() {
    let (site, a) = listed("forbidden").await;
    assert_refused(&site, &a.unwrap(), 403, 503, "ip_denied").await;
}

#[tokio::test]
async fn a_listed_address_with_unauthorized_is_401_503_with_a_challenge() {
    let (site, a) = listed("unauthorized").await;
    let a = a.unwrap();
    assert_refused(&site, &a, 401, 503, "ip_denied").await;
    assert!(a.header("www-authenticate").unwrap().starts_with("Basic"));
}

#[tokio::test]
async fn a_listed_address_with_not_found_is_404_503() {
    let (site, a) = listed("not_found").await;
    assert_refused(&site, &a.unwrap(), 404, 503, "ip_denied").await;
}

#[tokio::test]
async fn a_listed_address_with_too_many_requests_is_429_503() {
    let (site, a) = listed("too_many_requests").await;
    assert_refused(&site, &a.unwrap(), 429, 503, "ip_denied").await;
}

#[tokio::test]
async fn a_listed_address_with_abort_gets_no_response_and_is_logged_as_0_503() {
    let (site, a) = listed("abort").await;
    let abort = a.unwrap_err();
    assert_eq!(abort.0, Reason::IpDenied);
    let log = site.last_log_line();
    assert_eq!(
        (log["sc_status"].as_u64(), log["sc_substatus"].as_u64()),
        (Some(0), Some(503))
    );
    assert_eq!(log["reason"], "ip_denied");
    assert_eq!(
        site.requests_metric(0, 503, "ip_denied").await.as_deref(),
        Some("1")
    );
}

// --- Phase 4: dynamic limits -------------------------------------------------------------------

#[tokio::test]
async fn the_rate_limit_is_403_502_with_retry_after() {
    let site = Site::new(
        "",
        "[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 1, interval = \"1m\" }",
    )
    .await;
    assert_eq!(site.get("/public/x", &[JSON]).await.status, 502);
    let a = site.get("/public/x", &[JSON]).await;
    assert_refused(&site, &a, 403, 502, "rate_limit").await;
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn the_rate_limit_with_too_many_requests_is_429_502() {
    let site = Site::new(
        "",
        "[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 1, interval = \"1m\" }\ndeny_action = \"too_many_requests\"",
    )
    .await;
    site.get("/public/x", &[JSON]).await;
    let a = site.get("/public/x", &[JSON]).await;
    assert_refused(&site, &a, 429, 502, "rate_limit").await;
}

#[tokio::test]
async fn logging_only_serves_and_logs_what_it_would_have_refused() {
    let site = Site::new(
        "",
        "[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 1, interval = \"1m\" }\nlogging_only = true",
    )
    .await;
    site.get("/public/x", &[JSON]).await;
    let a = site.get("/public/x", &[JSON]).await;
    assert_eq!(a.status, 502, "served (to the closed upstream): {a:?}");
    assert_eq!(a.log["would_refuse"], "rate_limit");
}

#[tokio::test]
async fn the_concurrent_limit_counts_a_response_until_its_body_has_gone() {
    let site = Site::new(
        "",
        "[dynamic]\ndeny_by_concurrent = { enabled = true, max_concurrent = 1 }",
    )
    .await;
    let conn = ConnInfo {
        peer: "192.0.2.1:1".parse().unwrap(),
        local: "127.0.0.1:8080".parse().unwrap(),
        tls: false,
    };
    // The first response is not read yet: its request is still in flight.
    let first = site
        .gateway
        .handle(request("GET", "/public/x", &[JSON]), conn)
        .await
        .unwrap();
    let a = site.get("/public/x", &[JSON]).await;
    assert_refused(&site, &a, 403, 501, "concurrent_limit").await;
    drop(first);
    assert_eq!(site.get("/public/x", &[JSON]).await.status, 502);
}

// --- Phase 5: authentication -------------------------------------------------------------------

#[tokio::test]
async fn no_credentials_is_401_2_with_the_basic_challenge() {
    let site = Site::new("realm = \"Staff\"", "").await;
    let a = site.get("/private", &[JSON]).await;
    assert_refused(&site, &a, 401, 2, "no_credentials").await;
    assert_eq!(
        a.header("www-authenticate"),
        Some("Basic realm=\"Staff\", charset=\"UTF-8\"")
    );
}

#[tokio::test]
async fn a_wrong_password_is_401_1_and_names_the_user_in_the_log() {
    let site = Site::new("", "").await;
    let a = site
        .get(
            "/private",
            &[("authorization", &basic("alice", "wrong")), JSON],
        )
        .await;
    assert_refused(&site, &a, 401, 1, "logon_failed").await;
    assert_eq!(a.log["cs_username"], "alice");
}

#[tokio::test]
async fn two_authorization_headers_are_refused_400() {
    let site = Site::new("", "").await;
    let a = site
        .get(
            "/private",
            &[
                ("authorization", &basic("alice", PW)),
                ("authorization", "Bearer eyJhbGciOiJub25lIn0.e30."),
                JSON,
            ],
        )
        .await;
    assert_refused(&site, &a, 400, 0, "bad_request").await;
}

#[tokio::test]
async fn an_unknown_user_is_answered_as_a_wrong_password() {
    let site = Site::new("", "").await;
    let a = site
        .get(
            "/private",
            &[("authorization", &basic("nobody", "wrong")), JSON],
        )
        .await;
    let b = site
        .get(
            "/private",
            &[("authorization", &basic("alice", "wrong")), JSON],
        )
        .await;
    assert_eq!((a.status, a.logged()), (b.status, b.logged()));
    let strip = |s: &str| s.replace(a.log["request_id"].as_str().unwrap(), "ID");
    assert_eq!(
        strip(&a.body),
        b.body.replace(b.log["request_id"].as_str().unwrap(), "ID")
    );
}

#[tokio::test]
async fn the_right_password_passes_to_the_upstream() {
    let site = Site::new("", "").await;
    let a = site
        .get("/private", &[("authorization", &basic("alice", PW)), JSON])
        .await;
    assert_eq!(a.logged(), "502.0 upstream_unavailable");
    assert_eq!(a.log["cs_username"], "alice");
}

#[tokio::test]
async fn repeated_failures_lock_the_user_out_with_403_505() {
    let site = Site::new("", "[logon]\nmax_failures = 3").await;
    for _ in 0..3 {
        let a = site
            .get(
                "/private",
                &[("authorization", &basic("bob", "wrong")), JSON],
            )
            .await;
        assert_eq!(a.status, 401);
    }
    // Even the right password is refused now, without being looked at.
    let a = site
        .get("/private", &[("authorization", &basic("bob", PW)), JSON])
        .await;
    assert_refused(&site, &a, 403, 505, "locked_out").await;
    assert!(a.header("retry-after").is_some());
}

#[tokio::test]
async fn a_public_path_needs_no_credentials() {
    let site = Site::new("", "").await;
    let a = site.get("/public/page", &[JSON]).await;
    assert_eq!(a.logged(), "502.0 upstream_unavailable");
    assert!(a.log["cs_username"].is_null());
}

// --- Phase 5 with the form: sessions -----------------------------------------------------------

#[tokio::test]
async fn a_browser_without_a_session_is_sent_to_the_sign_in_page_and_back() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let a = site.get("/private/doc?x=1", &[HTML]).await;
    assert_eq!(a.status, 302, "{a:?}");
    let location = a.header("location").unwrap();
    assert!(
        location.starts_with("/.portcullis/login?rd=") && location.contains("private"),
        "{location}"
    );
    assert_eq!(a.logged(), "302.2 no_credentials");
}

#[tokio::test]
async fn a_program_without_a_session_gets_401_with_both_challenges() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let a = site.get("/private", &[JSON]).await;
    assert_refused(&site, &a, 401, 2, "no_credentials").await;
    let challenges: Vec<&str> = a
        .headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(challenges.len(), 2, "{challenges:?}");
}

#[tokio::test]
async fn a_dead_session_cookie_is_401_session_expired_and_is_cleared() {
    let site = Site::new("schemes = [\"form\", \"basic\"]", "").await;
    let cookie = format!("portcullis_session={}", "A".repeat(43));
    let a = site.get("/private", &[("cookie", &cookie), JSON]).await;
    assert_refused(&site, &a, 401, 2, "session_expired").await;
    let cleared = a
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .any(|c| c.to_str().unwrap().contains("Max-Age=0"));
    assert!(cleared, "{a:?}");
}

// --- Phase 6: rules ------------------------------------------------------------------------------

const ADMIN_RULE: &str = "[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]";

#[tokio::test]
async fn a_rule_refusal_is_401_3() {
    let site = Site::new("", ADMIN_RULE).await;
    let a = site
        .get("/admin/x", &[("authorization", &basic("bob", PW)), JSON])
        .await;
    assert_refused(&site, &a, 401, 3, "acl_denied").await;
    assert_eq!(a.log["cs_username"], "bob");
}

#[tokio::test]
async fn a_rule_refusal_with_acl_status_403_is_403_3() {
    let site = Site::new("acl_status = 403", ADMIN_RULE).await;
    let a = site
        .get("/admin/x", &[("authorization", &basic("bob", PW)), JSON])
        .await;
    assert_refused(&site, &a, 403, 3, "acl_denied").await;
}

#[tokio::test]
async fn a_member_of_the_group_passes_the_rule() {
    let site = Site::new("", ADMIN_RULE).await;
    let a = site
        .get("/admin/x", &[("authorization", &basic("alice", PW)), JSON])
        .await;
    assert_eq!(a.logged(), "502.0 upstream_unavailable");
}

#[tokio::test]
async fn an_encoded_slash_is_refused_before_any_rule_reads_the_path() {
    let site = Site::new("", ADMIN_RULE).await;
    let a = site
        .get("/admin%2fx", &[("authorization", &basic("bob", PW)), JSON])
        .await;
    assert_eq!(a.status, 400, "{a:?}");
}

#[tokio::test]
async fn a_move_into_a_refused_tree_is_refused_by_its_destination() {
    let site = Site::new("", ADMIN_RULE).await;
    let a = site
        .send(request(
            "MOVE",
            "/public/a.txt",
            &[
                ("authorization", &basic("bob", PW)),
                ("destination", "http://localhost/admin/a.txt"),
                JSON,
            ],
        ))
        .await;
    assert_refused(&site, &a, 401, 3, "acl_denied").await;
}

// --- Phase 8 and 9: the upstream, the body's format ---------------------------------------------

#[tokio::test]
async fn a_closed_upstream_is_502_upstream_unavailable() {
    let site = Site::new("", "").await;
    let a = site.get("/public/x", &[JSON]).await;
    assert_refused(&site, &a, 502, 0, "upstream_unavailable").await;
}

#[tokio::test]
async fn the_body_follows_accept_html_problem_json_or_text() {
    let site = Site::new("", "").await;
    let html = site.get("/private", &[HTML]).await;
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(html.body.contains("401"), "{}", html.body);
    assert!(html.header("content-security-policy").is_some());
    let json = site.get("/private", &[JSON]).await;
    assert_eq!(
        json.header("content-type"),
        Some("application/problem+json")
    );
    let text = site.get("/private", &[("accept", "*/*")]).await;
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(text.body.starts_with("401 Unauthorized"), "{}", text.body);
}

#[tokio::test]
async fn a_well_formed_request_id_is_kept_and_logged() {
    let site = Site::new("", "").await;
    let a = site
        .get("/private", &[("x-request-id", "trace-123"), JSON])
        .await;
    assert_eq!(a.header("x-request-id"), Some("trace-123"));
    assert_eq!(a.log["request_id"], "trace-123");
}

#[tokio::test]
async fn the_detailed_page_traces_the_phases_for_a_local_client_only() {
    let site = Site::new("", "").await;
    let local = site
        .send_from("127.0.0.1", request("GET", "/private", &[JSON]))
        .await
        .unwrap();
    let problem: serde_json::Value = serde_json::from_str(&local.body).unwrap();
    assert!(
        problem["trace"].as_array().is_some_and(|t| !t.is_empty()),
        "{problem}"
    );
    let remote = site.get("/private", &[JSON]).await;
    let problem: serde_json::Value = serde_json::from_str(&remote.body).unwrap();
    assert!(problem.get("trace").is_none(), "{problem}");
}

#[tokio::test]
async fn an_explanation_page_is_200_and_an_unknown_slug_404() {
    let site = Site::new("", "").await;
    let a = site.get("/.portcullis/problems/ip_denied", &[JSON]).await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("ip_denied"));
    let b = site.get("/.portcullis/problems/nonsense", &[]).await;
    assert_eq!(b.status, 404);
}

#[tokio::test]
async fn without_an_upstream_only_forward_auth_is_answered() {
    let site = Site::with_upstream("", "", false).await;
    let a = site.get("/anything", &[]).await;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("no upstream"), "{}", a.body);
}
