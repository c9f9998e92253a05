use super::*;
use crate::auth::CredentialProvider;

const RDS: &str =
    "postgres://app:s3cr%40t@db.cluster-abc123.us-east-1.rds.amazonaws.com:5433/orders";

#[test]
fn parses_url_and_defaults() {
    let c = Config::from_url(RDS).unwrap();
    assert_eq!(c.host, "db.cluster-abc123.us-east-1.rds.amazonaws.com");
    assert_eq!(c.port, 5433);
    assert_eq!(c.user(), "app");
    assert_eq!(c.password(), Some("s3cr@t"));
    assert_eq!(c.cluster_id, "1");
    assert_eq!(c.cluster_topology_refresh_rate, Duration::from_secs(30));
    assert_eq!(c.reader_host_selector_strategy, ReaderSelection::Random);
    assert_eq!(c.failover_mode, FailoverMode::StrictWriter);
    assert_eq!(c.failover_timeout, Duration::from_secs(30));
    assert_eq!(
        c.cluster_topology_high_refresh_rate,
        Duration::from_millis(100)
    );
    assert!(c.failure_detection_enabled);
    assert_eq!(
        (
            c.failure_detection_time,
            c.failure_detection_interval,
            c.failure_detection_count
        ),
        (Duration::ZERO, Duration::from_millis(500), 2)
    );
    assert_eq!(c.monitor_idle_pause, Some(Duration::from_secs(60)));
    let ro =
        Config::from_url("postgres://app@db.cluster-ro-abc123.us-east-1.rds.amazonaws.com/app")
            .unwrap();
    assert_eq!(ro.failover_mode, FailoverMode::ReaderOrWriter);
    assert_eq!(
        c.driver_url().as_str(),
        "postgres://app@db.cluster-abc123.us-east-1.rds.amazonaws.com:5433/orders"
    );
    let addressing = c.addressing();
    assert_eq!(
        addressing.address("instance-2").unwrap().to_string(),
        "instance-2.abc123.us-east-1.rds.amazonaws.com:5433"
    );
}

#[test]
fn parses_own_and_driver_parameters() {
    let c = Config::from_url(&format!(
        "{RDS}?cluster_id=orders&instance_endpoints=instance-1%3D127.0.0.1%3A6001,instance-2%3D127.0.0.1%3A6002\
         &cluster_topology_refresh_rate_ms=500&reader_host_selector_strategy=least_connections\
         &failover_mode=strict_reader&failover_timeout_ms=1500&writer_max_connections=4&reader_min_connections=1\
         &idle_timeout_ms=0&dialect=aurora-pg&sslmode=require&application_name=svc&options=-c%20statement_timeout%3D5s"
    ))
    .unwrap();
    assert_eq!(c.cluster_id, "orders");
    assert_eq!(
        c.instance_endpoints["instance-2"].to_string(),
        "127.0.0.1:6002"
    );
    assert_eq!(c.cluster_topology_refresh_rate, Duration::from_millis(500));
    assert_eq!(
        c.reader_host_selector_strategy,
        ReaderSelection::LeastConnections
    );
    assert_eq!(c.failover_mode, FailoverMode::StrictReader);
    assert_eq!(c.failover_timeout, Duration::from_millis(1500));
    assert_eq!(c.writer.max_connections, 4);
    assert_eq!(c.reader.min_connections, 1);
    assert_eq!(c.idle_timeout, None);
    assert_eq!(c.dialect, Some(Dialect::AuroraPg));
    let query = c.driver_url().query().unwrap();
    assert!(
        query.contains("sslmode=require") && query.contains("application_name=svc"),
        "{query}"
    );
    assert!(!query.contains("cluster_id"), "{query}");
    assert_eq!(
        c.addressing().address("instance-1").unwrap().to_string(),
        "127.0.0.1:6001"
    );
}

#[test]
fn bad_input_names_the_parameter() {
    let cases = [
        ("?cluster_id=", "cluster_id"),
        ("?colour=blue", "colour"),
        ("?sslmode=sometimes", "sslmode"),
        ("?writer_max_connections=0", "writer_max_connections"),
        ("?writer_max_connections=lots", "writer_max_connections"),
        ("?reader_min_connections=11", "reader_min_connections"),
        (
            "?cluster_topology_refresh_rate_ms=0",
            "cluster_topology_refresh_rate_ms",
        ),
        ("?instance_endpoints=instance-1", "instance_endpoints"),
        (
            "?instance_endpoints=instance-1%3Dlocalhost",
            "instance_endpoints",
        ),
        (
            "?cluster_instance_host_pattern=nope.example.com",
            "cluster_instance_host_pattern",
        ),
        (
            "?reader_host_selector_strategy=fastest",
            "reader_host_selector_strategy",
        ),
        ("?failover_mode=sometimes", "failover_mode"),
        ("?failover_timeout_ms=0", "failover_timeout_ms"),
        ("?failure_detection_count=0", "failure_detection_count"),
        (
            "?failure_detection_enabled=yes",
            "failure_detection_enabled",
        ),
        (
            "?cluster_topology_high_refresh_rate_ms=0",
            "cluster_topology_high_refresh_rate_ms",
        ),
        ("?dialect=mysql", "dialect"),
        ("?port=5432", "port"),
        ("?statement-cache-capacity=-1", "statement-cache-capacity"),
    ];
    for (query, parameter) in cases {
        let err = Config::from_url(&format!("{RDS}{query}")).unwrap_err();
        assert_eq!(err.parameter(), Some(parameter), "{query}: {err}");
        assert!(format!("{err:#}").contains(parameter), "{err}");
        assert!(!format!("{err:#}").contains("s3cr"), "{err}");
    }
    for (url, needle) in [
        ("mysql://h/db", "scheme"),
        ("not a url", "not a valid URL"),
        ("postgres:///db", "no host"),
    ] {
        let err = Config::from_url(url).unwrap_err();
        assert_eq!(err.parameter(), Some("url"));
        assert!(format!("{err:#}").contains(needle), "{err}");
    }
}

#[test]
fn secrets_stay_out_of_debug() {
    let c = Config::from_url(&format!("{RDS}?sslmode=require")).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr"), "{debug}");
    assert!(debug.contains("<redacted>"));
    let c = Config::from_url("postgres://app@h/db?password=p%40ram&sslmode=require").unwrap();
    assert_eq!(c.password(), Some("p@ram"));
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("p@ram") && !debug.contains("p%40ram"),
        "{debug}"
    );
    assert!(!c.driver_url().as_str().contains("ram"));
    let b = Builder::new().url(RDS).password("hunter2");
    assert!(!format!("{b:?}").contains("s3cr"));
    let c = b.build().unwrap();
    assert_eq!(c.password(), Some("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn builder_settings_win_and_are_validated() {
    let c = Builder::new()
        .url(format!(
            "{RDS}?cluster_id=from-url&writer_max_connections=3"
        ))
        .cluster_id("from-code")
        .instance_endpoint("instance-9", "10.1.1.1:5432")
        .cluster_instance_host_pattern("?.internal:6432")
        .build()
        .unwrap();
    assert_eq!(c.cluster_id, "from-code");
    assert_eq!(c.writer.max_connections, 3);
    assert_eq!(
        c.addressing().address("instance-9").unwrap().to_string(),
        "10.1.1.1:5432"
    );
    assert_eq!(
        c.addressing().address("instance-1").unwrap().to_string(),
        "instance-1.internal:6432"
    );

    assert_eq!(Builder::new().build().unwrap_err().parameter(), Some("url"));
    let err = Builder::new()
        .url(RDS)
        .writer_min_connections(50)
        .build()
        .unwrap_err();
    assert_eq!(err.parameter(), Some("writer_min_connections"));
    let err = Builder::new()
        .url(RDS)
        .instance_endpoint("x", "nowhere")
        .build()
        .unwrap_err();
    assert_eq!(err.parameter(), Some("instance_endpoints"));
}

#[test]
fn non_rds_hosts_need_a_pattern_or_overrides() {
    let c = Config::from_url("postgres://app@10.0.0.5/app").unwrap();
    let err = c.addressing().address("instance-1").unwrap_err();
    assert_eq!(err.parameter(), Some("cluster_instance_host_pattern"));
    assert!(format!("{err:#}").contains("instance_endpoints"), "{err}");
}

#[test]
fn auth_modes_and_their_parameters() {
    let c = Config::from_url(RDS).unwrap();
    assert!(matches!(c.auth, Auth::Password));
    for (query, parameter) in [
        ("auth=kerberos", "auth"),
        ("iam_region=us-east-1", "iam_region"),
        (
            "auth=password&secrets_manager_secret_id=x",
            "secrets_manager_secret_id",
        ),
    ] {
        let err = Config::from_url(&format!(
            "postgres://app@h.cluster-x.us-east-1.rds.amazonaws.com/db?{query}"
        ))
        .unwrap_err();
        assert_eq!(err.parameter(), Some(parameter), "{query}: {err}");
    }
}

#[cfg(feature = "iam")]
#[test]
fn iam_parameters() {
    let host = "postgres://app@db.cluster-abc.eu-west-1.rds.amazonaws.com/app";
    let c = Config::from_url(&format!(
        "{host}?auth=iam&iam_host=db.example.com&iam_default_port=6432&iam_expiration_ms=600000"
    ))
    .unwrap();
    let Auth::Iam(settings) = &c.auth else {
        panic!("{:?}", c.auth)
    };
    assert_eq!(settings.host.as_deref(), Some("db.example.com"));
    assert_eq!(settings.default_port, Some(6432));
    assert_eq!(settings.expiration, Duration::from_secs(600));
    assert!(c.auth.requires_tls());
    assert_eq!(c.ssl_mode(), None);
    assert_eq!(
        c.effective_ssl_mode(),
        SslMode::VerifyFull,
        "tokens go only to a verified server"
    );

    for (query, parameter) in [
        ("auth=iam&iam_expiration_ms=900001", "iam_expiration_ms"),
        ("auth=iam&iam_expiration_s=soon", "iam_expiration_s"),
        ("auth=iam&iam_default_port=x", "iam_default_port"),
        ("auth=iam&iam_token_name=x", "iam_token_name"),
        ("auth=iam&sslmode=disable", "sslmode"),
        ("auth=iam&password=secret", "password"),
    ] {
        let err = Config::from_url(&format!("{host}?{query}")).unwrap_err();
        assert_eq!(err.parameter(), Some(parameter), "{query}: {err}");
        assert!(!format!("{err:#}").contains("secret"), "{err}");
    }
    // An IP address names no region.
    let err = Config::from_url("postgres://app@10.0.0.5/app?auth=iam").unwrap_err();
    assert_eq!(err.parameter(), Some("iam_region"), "{err}");
    Config::from_url("postgres://app@10.0.0.5/app?auth=iam&iam_region=us-east-1").unwrap();
}

#[test]
fn the_user_name_is_percent_decoded() {
    let c = Config::from_url("postgres://alice%40corp@10.0.0.1/db").expect("config");
    assert_eq!(c.user(), "alice@corp");
    let c = Config::from_url("postgres://plain@10.0.0.1/db").expect("config");
    assert_eq!(c.user(), "plain");
    let err = Config::from_url("postgres://%FF@10.0.0.1/db").expect_err("not UTF-8");
    assert_eq!(err.parameter(), Some("url"));
}

#[test]
fn a_bare_host_pattern_needs_an_opt_in() {
    let err = Config::from_url("postgres://app@10.0.0.1/db?cluster_instance_host_pattern=db-%3F")
        .expect_err("bare pattern");
    assert_eq!(
        err.parameter(),
        Some("cluster_instance_host_pattern"),
        "{err}"
    );
    assert!(
        format!("{err:#}").contains("allow_unqualified_host_pattern"),
        "{err}"
    );
    let allowed = Config::from_url(
        "postgres://app@10.0.0.1/db?cluster_instance_host_pattern=db-%3F&allow_unqualified_host_pattern=true",
    )
    .expect("parsed");
    allowed.validate().expect("opted in");
    let qualified = Config::from_url(
        "postgres://app@10.0.0.1/db?cluster_instance_host_pattern=%3F.db.example.com",
    )
    .expect("parsed");
    qualified.validate().expect("qualified");
}

#[cfg(not(feature = "iam"))]
#[test]
fn iam_needs_its_feature() {
    let err = Config::from_url(&format!("{RDS}?auth=iam")).unwrap_err();
    assert_eq!(err.parameter(), Some("auth"));
    assert!(format!("{err:#}").contains("feature `iam`"), "{err}");
}

/// A provider whose credentials go only to a verified server, as IAM's and Secrets
/// Manager's do.
#[derive(Debug)]
struct Bearer;

impl CredentialProvider for Bearer {
    fn credentials<'a>(
        &'a self,
        _: &'a crate::auth::ConnectTarget,
    ) -> crate::BoxFuture<'a, Result<crate::auth::Credentials>> {
        Box::pin(std::future::ready(Ok(crate::auth::Credentials::new("t"))))
    }

    fn needs_verified_server(&self) -> bool {
        true
    }
}

#[test]
fn the_ssl_mode_applied_follows_libpq_and_the_credentials() {
    let mode =
        |params: &str| Config::from_url(&format!("{RDS}{params}")).map(|c| c.effective_ssl_mode());
    // A password of the URL: libpq's rules.
    assert_eq!(mode("").unwrap(), SslMode::Prefer);
    assert_eq!(mode("?sslmode=allow").unwrap(), SslMode::Allow);
    assert_eq!(mode("?sslmode=require").unwrap(), SslMode::Require);
    assert_eq!(
        mode("?sslmode=require&sslrootcert=/ca.pem").unwrap(),
        SslMode::VerifyCa,
        "require with a CA file verifies the chain"
    );
    assert_eq!(mode("?sslmode=verify-full").unwrap(), SslMode::VerifyFull);
    // The last one wins, as in libpq and sqlx.
    assert_eq!(
        mode("?sslmode=disable&ssl-mode=verify-full").unwrap(),
        SslMode::VerifyFull
    );
    let c = Config::from_url(&format!("{RDS}?sslrootcert=/a.pem&ssl-ca=/b.pem")).unwrap();
    assert_eq!(c.ssl_root_cert().as_deref(), Some("/b.pem"));
    // Credentials that need a verified server: verify-full by default, weaker modes only
    // with the opt-out.
    let with_bearer = |params: &str| {
        Builder::new()
            .url(format!(
                "postgres://app@db.cluster-abc123.us-east-1.rds.amazonaws.com/app{params}"
            ))
            .credential_provider(Bearer)
            .build()
    };
    assert_eq!(
        with_bearer("").unwrap().effective_ssl_mode(),
        SslMode::VerifyFull
    );
    for weak in ["disable", "allow", "prefer", "require", "verify-ca"] {
        let err = with_bearer(&format!("?sslmode={weak}")).unwrap_err();
        assert_eq!(err.parameter(), Some("sslmode"), "{err}");
        assert!(
            format!("{err:#}").contains("allow_unverified_server"),
            "{err}"
        );
        let c = with_bearer(&format!("?sslmode={weak}&allow_unverified_server=true")).unwrap();
        assert_eq!(c.effective_ssl_mode().as_str(), weak);
    }
    // `require` with a CA file is `verify-ca`: no name checked, so not enough either.
    let err = with_bearer("?sslmode=require&sslrootcert=/ca.pem").unwrap_err();
    assert_eq!(err.parameter(), Some("sslmode"), "{err}");
    let c = with_bearer("?allow_unverified_server=true").unwrap();
    assert_eq!(
        c.effective_ssl_mode(),
        SslMode::Prefer,
        "the opt-out leaves libpq's default"
    );
}

#[test]
fn a_misspelt_parameter_names_the_closest_known_one() {
    let base = "postgres://app@db.cluster-abc.us-east-1.rds.amazonaws.com/app";
    for (typo, meant) in [
        ("failover_timout_ms", "failover_timeout_ms"),
        (
            "failure_detection_intervall_ms",
            "failure_detection_interval_ms",
        ),
        ("writer_max_conections", "writer_max_connections"),
        ("ssl_mode", "sslmode"),
        ("clusterid", "cluster_id"),
    ] {
        let err = Config::from_url(&format!("{base}?{typo}=1")).expect_err(typo);
        assert_eq!(err.parameter(), Some(typo), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("did you mean `{meant}`?")),
            "{typo}: {err}"
        );
    }
    let err = Config::from_url(&format!("{base}?colour=blue")).expect_err("unknown");
    assert!(!err.to_string().contains("did you mean"), "{err}");
}

#[test]
fn every_parameter_suggested_is_one_the_url_accepts() {
    let base = "postgres://app@db.cluster-abc.us-east-1.rds.amazonaws.com/app";
    for known in super::parse::KNOWN_PARAMETERS {
        if let Err(err) = Config::from_url(&format!("{base}?{known}=x")) {
            assert!(
                !err.to_string().contains("unknown parameter"),
                "`{known}` is suggested but refused as unknown: {err}"
            );
        }
    }
}

/// The former names of two durations, in seconds, are still accepted (with a warning) and
/// mean the same; libpq's `connect_timeout` stays in seconds beside `connect_timeout_ms`,
/// and the two together are refused.
#[test]
fn former_duration_names_and_units_are_accepted() {
    let host = "postgres://app@db.cluster-abc.eu-west-1.rds.amazonaws.com/app";
    let c = Config::from_url(&format!("{host}?connect_timeout=3")).unwrap();
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    let c = Config::from_url(&format!("{host}?connect_timeout_ms=2500")).unwrap();
    assert_eq!(c.connect_timeout, Duration::from_millis(2500));
    let err = Config::from_url(&format!("{host}?connect_timeout=3&connect_timeout_ms=2500"))
        .expect_err("both");
    assert_eq!(err.parameter(), Some("connect_timeout_ms"), "{err:#}");
    #[cfg(feature = "iam")]
    {
        let c = Config::from_url(&format!("{host}?auth=iam&iam_expiration_s=600")).unwrap();
        let Auth::Iam(settings) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!(settings.expiration, Duration::from_secs(600));
    }
}
