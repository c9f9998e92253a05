//! IAM tokens equal botocore's for the same inputs (`scripts/iam_fixtures.py` made the
//! fixtures with a fixed clock). Query parameters are compared parsed, because botocore
//! orders them differently and encodes spaces as `%20`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use aurora_pool::iam::generate_auth_token;
use aws_credential_types::Credentials;

#[derive(serde::Deserialize)]
struct Fixtures {
    generator: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    host: String,
    port: u16,
    user: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    unix_time: u64,
    token: String,
}

/// `host:port/` and the decoded query parameters.
fn parse(token: &str) -> (String, BTreeMap<String, String>) {
    let (base, query) = token.split_once('?').expect("a query");
    let params = url::form_urlencoded::parse(query.replace("%20", "+").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (base.to_owned(), params)
}

#[test]
fn tokens_match_botocore() {
    let fixtures: Fixtures =
        serde_json::from_str(include_str!("fixtures/iam_tokens.json")).expect("fixtures");
    assert!(fixtures.generator.starts_with("botocore"));
    assert!(fixtures.cases.len() >= 7);
    for case in &fixtures.cases {
        let credentials = Credentials::new(
            &case.access_key_id,
            &case.secret_access_key,
            case.session_token.clone(),
            None,
            "fixture",
        );
        let at = UNIX_EPOCH + Duration::from_secs(case.unix_time);
        let ours = generate_auth_token(
            &case.host,
            case.port,
            &case.user,
            &case.region,
            &credentials,
            at,
        )
        .expect("token");
        let (our_base, our_params) = parse(&ours);
        let (their_base, their_params) = parse(&case.token);
        assert_eq!(our_base, their_base, "{}", case.user);
        assert_eq!(
            our_params, their_params,
            "user {:?} on {}:{}",
            case.user, case.host, case.port
        );
        assert_eq!(our_params["DBUser"], case.user);
        assert_eq!(our_params["X-Amz-Expires"], "900");
    }
}

#[test]
fn bad_inputs_are_named_and_secrets_stay_out_of_errors() {
    let credentials = Credentials::new(
        "AKID",
        "very-secret",
        Some("session-secret".into()),
        None,
        "test",
    );
    for (host, user, region, parameter) in [
        ("", "app", "us-east-1", "iam_host"),
        ("h", "", "us-east-1", "user"),
        ("h", "app", " ", "iam_region"),
        ("bad host/name", "app", "us-east-1", "iam_host"),
    ] {
        let err =
            generate_auth_token(host, 5432, user, region, &credentials, UNIX_EPOCH).unwrap_err();
        assert_eq!(err.parameter(), Some(parameter), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("session-secret"),
            "{shown}"
        );
    }
}
