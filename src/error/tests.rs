//! The error type's classification, kinds and display.

use super::*;

#[test]
fn config_errors_name_the_parameter() {
    let err = Error::config("cluster_id", "must not be empty");
    assert!(err.is_config());
    assert_eq!(err.parameter(), Some("cluster_id"));
    assert_eq!(
        err.to_string(),
        "invalid configuration: `cluster_id`: must not be empty"
    );
    assert!(!err.is_connect());
}

#[test]
fn classifies_sqlstates_like_the_aws_drivers() {
    for network in [
        "08006", "08001", "57P01", "57P02", "57P03", "58030", "99999", "F0000",
    ] {
        assert_eq!(
            ErrorClass::from_sqlstate(network),
            ErrorClass::Network,
            "{network}"
        );
    }
    for login in ["28P01", "28000", "08004"] {
        assert_eq!(
            ErrorClass::from_sqlstate(login),
            ErrorClass::Login,
            "{login}"
        );
    }
    assert_eq!(ErrorClass::from_sqlstate("25006"), ErrorClass::ReadOnly);
    // A statement the caller cancelled or timed out is not a network failure.
    for other in ["57014", "23505", "42601", "40001", "53300", "25P02"] {
        assert_eq!(
            ErrorClass::from_sqlstate(other),
            ErrorClass::Other,
            "{other}"
        );
    }
    assert!(ErrorClass::ReadOnly.triggers_failover());
    assert!(!ErrorClass::Login.triggers_failover());
}

#[test]
fn failover_kinds_are_distinguishable() {
    let failover = Error::failover("lost").with_sqlstate(Some("57P01".into()));
    assert!(failover.is_failover() && failover.is_retryable());
    assert_eq!(failover.class(), ErrorClass::Network);
    let unknown = failover.in_transaction();
    assert!(unknown.is_transaction_state_unknown() && !unknown.is_failover());
    assert_eq!(unknown.sqlstate(), Some("57P01"));
    let failed = Error::failover_failed("no writer");
    assert!(failed.is_failover_failed() && !failed.is_retryable());
    assert!(
        !Error::driver("x")
            .in_transaction()
            .is_transaction_state_unknown()
    );
}

#[test]
fn only_a_refusal_or_a_close_is_proof_of_death() {
    let io = |kind: std::io::ErrorKind, text: &str| {
        Error::connect("connecting to db:5432 failed")
            .with_source(std::io::Error::new(kind, text.to_owned()))
    };
    for kind in [
        std::io::ErrorKind::ConnectionRefused,
        std::io::ErrorKind::ConnectionReset,
        std::io::ErrorKind::UnexpectedEof,
    ] {
        assert!(io(kind, "gone").is_refused_or_closed(), "{kind:?}");
    }
    // What a failed name lookup looks like from tokio and the drivers.
    let dns = io(
        std::io::ErrorKind::Other,
        "failed to lookup address information: Name or service not known",
    );
    assert!(!dns.is_refused_or_closed());
    assert!(!io(std::io::ErrorKind::TimedOut, "slow").is_refused_or_closed());
    assert!(!Error::connect("no source").is_refused_or_closed());
    // One session terminated by an administrator: not the instance's death.
    let terminated = Error::driver("terminating connection due to administrator command")
        .with_sqlstate(Some("57P01".into()));
    assert!(!terminated.is_refused_or_closed());
}

#[test]
fn source_and_sqlstate_are_kept() {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    let err = Error::connect("cannot reach instance-1 at 127.0.0.1:1")
        .with_source(io)
        .with_sqlstate(Some("08001".into()));
    assert_eq!(err.sqlstate(), Some("08001"));
    let source = err.source().expect("source kept");
    assert_eq!(source.to_string(), "refused");
    // One level in `{}`, the causes in `{:#}`: a reporter that walks `source()` prints the
    // cause once.
    assert_eq!(err.to_string(), "cannot reach instance-1 at 127.0.0.1:1");
    assert_eq!(
        format!("{err:#}"),
        "cannot reach instance-1 at 127.0.0.1:1: refused"
    );
}

#[test]
fn the_alternate_form_prints_a_repeated_cause_once() {
    /// An error whose text already holds its source's, as sqlx's `Io` does.
    #[derive(Debug)]
    struct Repeats(std::io::Error);
    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "error communicating with database: {}", self.0)
        }
    }
    impl StdError for Repeats {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
    let err = Error::connect("the statement failed").with_source(Repeats(io));
    assert_eq!(
        format!("{err:#}"),
        "the statement failed: error communicating with database: reset by peer"
    );
    let config = Error::config("cluster_id", "must not be empty");
    assert_eq!(format!("{config:#}"), config.to_string());
}

#[test]
fn every_kind_has_its_own_name() {
    let cases = [
        (Error::config("x", "bad"), ErrorKind::Config),
        (Error::connect("c"), ErrorKind::Connect),
        (Error::certificate("c"), ErrorKind::CertificateRefused),
        (Error::topology("t"), ErrorKind::Topology),
        (
            Error::cluster_id_mismatch("a", "m"),
            ErrorKind::ClusterIdMismatch,
        ),
        (Error::no_reader("n"), ErrorKind::NoReader),
        (Error::closed(), ErrorKind::Closed),
        (Error::timeout("t"), ErrorKind::Timeout),
        (Error::failover("f"), ErrorKind::Failover),
        (
            Error::failover("f").in_transaction(),
            ErrorKind::TransactionStateUnknown,
        ),
        (Error::unknown_outcome("u"), ErrorKind::OutcomeUnknown),
        (Error::failover_failed("f"), ErrorKind::FailoverFailed),
        (Error::driver("d"), ErrorKind::Driver),
        (Error::credentials("c"), ErrorKind::Credentials),
        (
            Error::custom_endpoint_unavailable("c"),
            ErrorKind::CustomEndpointUnavailable,
        ),
    ];
    let mut names = std::collections::HashSet::new();
    for (err, kind) in cases {
        assert_eq!(err.kind(), kind, "{err:?}");
        assert!(names.insert(kind.to_string()), "{kind} named twice");
    }
    // The predicates say the same as the kind.
    assert!(Error::failover("f").is_failover());
    assert_eq!(Error::no_reader("n").kind().as_str(), "no_reader");
}

#[test]
fn the_context_prints_after_the_causes_in_the_alternate_form_only() {
    use crate::ClusterEvent;
    use crate::topology::Role;
    use std::time::Duration;
    let context = ErrorContext {
        cluster_id: "orders".into(),
        topology_version: 4,
        writer: "instance-1".into(),
        instances: vec![
            InstanceState {
                id: "instance-1".into(),
                role: Role::Writer,
                available: false,
            },
            InstanceState {
                id: "instance-2".into(),
                role: Role::Reader,
                available: true,
            },
        ],
        failing_over_for: Some(Duration::from_millis(1250)),
        writer_silent: false,
        recent_events: vec![RecentEvent {
            ago: Duration::from_millis(900),
            event: ClusterEvent::InstanceDown {
                instance: "instance-1".into(),
            },
        }],
    };
    let err = Error::failover("the connection to instance-1 was lost")
        .with_source(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        ))
        .with_context(context);
    assert!(!err.wants_context());
    assert_eq!(err.to_string(), "the connection to instance-1 was lost");
    assert_eq!(
        format!("{err:#}"),
        "the connection to instance-1 was lost: reset by peer [cluster `orders` at topology v4: \
         writer instance-1; instances instance-1 (writer, down), instance-2 (reader, up); \
         searching for a new writer for 1250 ms; recent events: instance-1 is down (900 ms ago)]"
    );
    assert!(format!("{err:?}").contains("context"));
    assert!(Error::driver("duplicate key").context().is_none());
    assert!(!Error::driver("duplicate key").wants_context());
}
