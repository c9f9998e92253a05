//! Property tests of every parser that reads input from outside: the URL and its
//! parameters, host patterns and the topology rows of each dialect (Secrets Manager's JSON
//! is fuzzed beside its parser, behind its feature).
//! None may panic, and every rejection names the parameter, the catalog function or the
//! secret it is about. Bounded case counts keep them in the test command's budget.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::config::Config;
use crate::connector::TextRow;
use crate::endpoint::HostPattern;
use crate::topology::dialect::multi_az_rows;
use crate::topology::rows::aurora_rows;
use crate::topology::{Addressing, Role};

const CASES: u32 = 512;

/// Parameter names the URL parser knows, and some it does not.
const KEYS: &[&str] = &[
    "cluster_id",
    "connect_timeout",
    "failover_timeout_ms",
    "failure_detection_interval_ms",
    "failure_detection_count",
    "failure_detection_time_ms",
    "cluster_topology_refresh_rate_ms",
    "cluster_topology_high_refresh_rate_ms",
    "cluster_instance_host_pattern",
    "instance_endpoints",
    "writer_max_connections",
    "reader_max_connections",
    "sslmode",
    "sslrootcert",
    "auth",
    "dialect",
    "failover_mode",
    "reader_host_selector_strategy",
    "iam_expiration_ms",
    "iam_expiration_s",
    "secrets_manager_secret_id",
    "secrets_manager_expiration_ms",
    "secrets_manager_expiration_s",
    "options",
    "user",
    "colour",
];

/// Values that have broken parsers before: huge numbers, negatives, units, unicode, NULs.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("18446744073709551615".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("".to_owned()),
        Just("?".to_owned()),
        Just("%00".to_owned()),
        Just("1.5".to_owned()),
        "[0-9]{1,25}",
        "\\PC{0,40}",
        "[a-z?.:=,%-]{0,40}",
    ]
}

fn url() -> impl Strategy<Value = String> {
    (
        "[a-z%@:]{0,12}",
        "[a-z0-9.?-]{0,40}",
        proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6),
    )
        .prop_map(|(user, host, params)| {
            let query: Vec<String> = params
                .into_iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(&v)))
                .collect();
            format!("postgres://{user}@{host}/db?{}", query.join("&"))
        })
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cell() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("t".to_owned())),
        Just(Some("f".to_owned())),
        Just(Some("2026-11-30 13:47:32.123456+00".to_owned())),
        Just(Some("2026-11-30 13:47:32+05:30".to_owned())),
        Just(Some("instance-1".to_owned())),
        Just(Some(
            "instance-1.abc.us-east-1.rds.amazonaws.com".to_owned()
        )),
        "\\PC{0,30}".prop_map(Some),
        "[0-9:+. -]{0,35}".prop_map(Some),
    ]
}

fn rows() -> impl Strategy<Value = Vec<TextRow>> {
    proptest::collection::vec(proptest::collection::vec(cell(), 0..7), 0..8)
}

fn addressing() -> Addressing {
    Addressing {
        overrides: BTreeMap::new(),
        pattern: Some(HostPattern::parse("?.db.example.com").expect("pattern")),
        default_port: 5432,
        regions: BTreeMap::new(),
        url_region: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_url_is_parsed_or_rejected_naming_the_parameter(url in url()) {
        if let Err(err) = Config::from_url(&url) {
            prop_assert!(err.is_config(), "{err:?}");
            prop_assert!(err.parameter().is_some(), "{err:?}");
        }
    }

    #[test]
    fn any_text_as_a_url_is_rejected_naming_the_parameter(text in "\\PC{0,200}") {
        if let Err(err) = Config::from_url(&text) {
            prop_assert!(err.is_config() && err.parameter().is_some(), "{err:?}");
        }
    }

    #[test]
    fn any_host_pattern_is_parsed_or_rejected(pattern in "[a-z0-9?.:/%-]{0,40}|\\PC{0,40}") {
        if let Err(err) = HostPattern::parse(&pattern) {
            prop_assert_eq!(err.parameter(), Some("cluster_instance_host_pattern"));
        }
    }

    #[test]
    fn any_aurora_rows_are_read_or_rejected(rows in rows()) {
        match aurora_rows(&rows) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.iter().filter(|r| r.is_writer).count(), 1);
                let mut ids: Vec<_> = parsed.iter().map(|r| &r.id).collect();
                ids.dedup();
                prop_assert_eq!(ids.len(), parsed.len());
            }
            Err(err) => {
                prop_assert!(err.is_topology(), "{err:?}");
                prop_assert!(format!("{err:#}").contains("aurora_replica_status()"), "{err}");
            }
        }
    }

    #[test]
    fn any_multi_az_rows_are_read_or_rejected(rows in rows(), writer in "instance-[0-9]|\\PC{0,10}") {
        match multi_az_rows(&rows, &writer, &addressing()) {
            Ok(instances) => {
                for instance in &instances {
                    prop_assert_eq!(instance.role() == Role::Writer, instance.id() == writer);
                    // Only a DNS label goes into the pattern: no row names another host.
                    let host = &instance.address().host;
                    let label = host.strip_suffix(".db.example.com");
                    prop_assert!(label.is_some_and(crate::endpoint::is_dns_label), "{host}");
                }
            }
            Err(err) => prop_assert!(err.is_topology(), "{err:?}"),
        }
    }
}
