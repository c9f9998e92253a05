use super::settings::region_from_arn;
use super::*;

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn parameters_have_the_wrappers_defaults() {
    let settings = SecretsManagerSettings::from_parameters(&params(&[(
        "secrets_manager_secret_id",
        "aur/app",
    )]))
    .unwrap();
    assert_eq!(settings.secret_id, "aur/app");
    assert_eq!(settings.region, None);
    assert_eq!(settings.endpoint, None);
    assert_eq!(settings.expiration, Duration::from_secs(870));
    assert_eq!(settings.username_key, "username");
    assert_eq!(settings.password_key, "password");
    assert_eq!(settings.connect_retry_timeout, Duration::ZERO);
    assert_eq!(settings.connect_retry_interval, Duration::from_secs(1));
}

#[test]
fn parameters_are_read() {
    let settings = SecretsManagerSettings::from_parameters(&params(&[
        ("sslmode", "require"),
        ("secrets_manager_secret_id", "first"),
        ("secrets_manager_secret_id", "aur/app"),
        ("secrets_manager_region", "eu-west-1"),
        ("secrets_manager_endpoint", "http://127.0.0.1:5000"),
        ("secrets_manager_expiration_ms", "60000"),
        ("secrets_manager_secret_username_key", "user"),
        ("secrets_manager_secret_password_key", "pass"),
        ("secrets_manager_connect_retry_timeout_ms", "60000"),
        ("secrets_manager_connect_retry_interval_ms", "250"),
    ]))
    .unwrap();
    assert_eq!(settings.secret_id, "aur/app");
    assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
    assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(settings.expiration, Duration::from_secs(60));
    assert_eq!(settings.username_key, "user");
    assert_eq!(settings.password_key, "pass");
    assert_eq!(settings.connect_retry_timeout, Duration::from_secs(60));
    assert_eq!(settings.connect_retry_interval, Duration::from_millis(250));
    let shown = format!("{settings:?}");
    assert!(
        shown.contains("aur/app") && shown.contains("eu-west-1"),
        "{shown}"
    );
}

#[test]
fn bad_parameters_are_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "secrets_manager_secret_id"),
        (
            &[("secrets_manager_region", "us-east-1")],
            "secrets_manager_secret_id",
        ),
        (
            &[("secrets_manager_secret_id", " ")],
            "secrets_manager_secret_id",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_expiration", "5"),
            ],
            "secrets_manager_expiration",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_expiration_s", "soon"),
            ],
            "secrets_manager_expiration_s",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_expiration_ms", "0"),
            ],
            "secrets_manager_expiration_ms",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_connect_retry_timeout_ms", "-1"),
            ],
            "secrets_manager_connect_retry_timeout_ms",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_connect_retry_interval_ms", "0"),
            ],
            "secrets_manager_connect_retry_interval_ms",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_endpoint", "localhost:5000"),
            ],
            "secrets_manager_endpoint",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_region", ""),
            ],
            "secrets_manager_region",
        ),
        (
            &[
                ("secrets_manager_secret_id", "s"),
                ("secrets_manager_secret_password_key", ""),
            ],
            "secrets_manager_secret_password_key",
        ),
    ];
    for (pairs, parameter) in cases {
        let err = SecretsManagerSettings::from_parameters(&params(pairs))
            .expect_err(&format!("{pairs:?} must be refused"));
        assert!(err.is_config(), "{err}");
        assert_eq!(err.parameter(), Some(*parameter), "{pairs:?}: {err}");
    }
}

#[test]
fn regions_are_read_from_arns() {
    for (id, region) in [
        (
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aur/app-AbCdEf",
            Some("eu-west-1"),
        ),
        (
            "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:app-AbCdEf",
            Some("cn-north-1"),
        ),
        (
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:a:b",
            Some("us-gov-west-1"),
        ),
        ("aur/app", None),
        ("arn:aws:secretsmanager::123456789012:secret:app", None),
        ("arn:aws:rds:us-east-1:123456789012:db:app", None),
        (
            "arn:other:secretsmanager:us-east-1:123456789012:secret:app",
            None,
        ),
        ("arn:aws:secretsmanager:us-east-1", None),
    ] {
        assert_eq!(region_from_arn(id), region, "{id}");
    }
    let settings = SecretsManagerSettings::new(
        "arn:aws:secretsmanager:ap-south-1:123456789012:secret:x-AbCdEf",
    );
    assert_eq!(settings.arn_region(), Some("ap-south-1"));
}

#[test]
fn secrets_are_parsed_without_leaking_values() {
    let parse = |text: Option<&str>, binary: bool| {
        parse_secret("aur/app", text, binary, "username", "password")
    };
    assert_eq!(
        parse(
            Some(r#"{"username":"app","password":"hunter2","host":"db","port":5432}"#),
            false
        )
        .unwrap(),
        ("app".to_owned(), "hunter2".to_owned())
    );
    let cases: &[(Option<&str>, bool, &str)] = &[
        (
            Some(r#"{"username":"app","passwd":"hunter2"}"#),
            false,
            "no key `password`",
        ),
        (
            Some(r#"{"password":"hunter2"}"#),
            false,
            "no key `username`",
        ),
        (
            Some(r#"{"username":"app","password":12345678}"#),
            false,
            "`password`",
        ),
        (Some("hunter2"), false, "not valid JSON"),
        (
            Some(r#"{"username":"app","password":"hunter2""#),
            false,
            "not valid JSON",
        ),
        (Some(r#"["hunter2"]"#), false, "not a JSON object"),
        (None, true, "binary"),
        (None, false, "no SecretString"),
    ];
    for (text, binary, expected) in cases {
        let err = parse(*text, *binary).expect_err(&format!("{text:?}"));
        assert!(err.is_credentials(), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(expected), "{shown}");
        assert!(shown.contains("aur/app"), "{shown}");
        for secret in ["hunter2", "12345678"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    let custom = parse_secret("s", Some(r#"{"u":"app","p":"x"}"#), false, "u", "pw")
        .expect_err("missing custom key");
    assert!(custom.to_string().contains("`pw`"), "{custom}");
    assert!(
        custom
            .to_string()
            .contains("secrets_manager_secret_password_key"),
        "{custom}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any `SecretString` is read or rejected naming the secret, never showing a value.
    #[test]
    fn any_secret_is_read_or_rejected_without_its_values(
        text in "\\PC{0,80}|\\{\"username\": ?(\"[a-z]{0,8}\"|1|null), ?\"password\": ?(\"s3cr3t-[a-z]{0,8}\"|[0-9]{1,3}|null|\\[\\])\\}",
        binary in proptest::prelude::any::<bool>(),
    ) {
        if let Err(err) = parse_secret("orders/app", Some(&text), binary, "username", "password") {
            let shown = format!("{err} {err:?}");
            proptest::prop_assert!(err.is_credentials(), "{}", shown);
            proptest::prop_assert!(shown.contains("orders/app"), "{}", shown);
            proptest::prop_assert!(!shown.contains("s3cr3t"), "{}", shown);
        }
    }
}

#[test]
fn backoff_doubles_up_to_30_seconds() {
    let second = Duration::from_secs(1);
    assert_eq!(backoff(second, 1), second);
    assert_eq!(backoff(second, 2), 2 * second);
    assert_eq!(backoff(second, 5), 16 * second);
    assert_eq!(backoff(second, 6), 30 * second);
    assert_eq!(backoff(second, u32::MAX), 30 * second);
    assert_eq!(
        backoff(Duration::from_millis(100), 0),
        Duration::from_millis(100)
    );
}
