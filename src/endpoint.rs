//! RDS host names: what kind of endpoint a host is, its region, and how instance endpoints
//! of the same cluster are spelled.

use std::fmt;
use std::net::IpAddr;

use crate::error::{Error, Result};

/// What a host name points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointKind {
    /// The cluster (writer) endpoint: `<name>.cluster-<id>.<region>.rds.amazonaws.com`.
    ClusterWriter,
    /// The reader endpoint: `<name>.cluster-ro-<id>.<region>.rds.amazonaws.com`.
    ClusterReader,
    /// A custom endpoint: `<name>.cluster-custom-<id>.<region>.rds.amazonaws.com`.
    ClusterCustom,
    /// An RDS Proxy endpoint: `<name>.proxy-<id>.<region>.rds.amazonaws.com`.
    Proxy,
    /// An Aurora Limitless shard group endpoint: `<name>.shardgrp-<id>.<region>.rds.amazonaws.com`.
    ShardGroup,
    /// An instance endpoint: `<instance>.<id>.<region>.rds.amazonaws.com`.
    Instance,
    /// An Aurora Global Database writer endpoint: `<name>.global-<id>.global.rds.amazonaws.com`.
    Global,
    /// An IPv4 or IPv6 address.
    Ip,
    /// Anything else: a custom DNS name, a tunnel, `localhost`.
    Other,
}

impl EndpointKind {
    /// An RDS cluster-level DNS name (writer, reader or custom), which moves on failover.
    pub fn is_cluster_dns(self) -> bool {
        matches!(
            self,
            EndpointKind::ClusterWriter | EndpointKind::ClusterReader | EndpointKind::ClusterCustom
        )
    }

    /// Any host name under an RDS domain.
    pub fn is_rds(self) -> bool {
        !matches!(self, EndpointKind::Ip | EndpointKind::Other)
    }
}

/// A classified host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    kind: EndpointKind,
    region: Option<String>,
    /// The part after the DNS prefix: `<id>.<region>.rds.amazonaws.com`.
    domain: Option<String>,
}

impl Endpoint {
    /// Classifies `host` (case-insensitive; a trailing dot is ignored).
    ///
    /// ```
    /// use aurora_pool::endpoint::{Endpoint, EndpointKind};
    /// let e = Endpoint::classify("app.cluster-ro-abc123.eu-west-1.rds.amazonaws.com");
    /// assert_eq!(e.kind(), EndpointKind::ClusterReader);
    /// assert_eq!(e.region(), Some("eu-west-1"));
    /// assert_eq!(
    ///     e.instance_host_pattern().unwrap().to_string(),
    ///     "?.abc123.eu-west-1.rds.amazonaws.com"
    /// );
    /// ```
    pub fn classify(host: &str) -> Endpoint {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Endpoint::plain(EndpointKind::Ip);
        }
        let labels: Vec<&str> = host.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Endpoint::plain(EndpointKind::Other);
        }
        if let Some(global) = classify_global(&labels) {
            return global;
        }
        let Some((suffix_len, region)) = rds_suffix(&labels) else {
            return Endpoint::plain(EndpointKind::Other);
        };
        // <instance…>.<prefix?><id>.<suffix>: at least one label before the id label.
        if labels.len() < suffix_len + 2 {
            return Endpoint::plain(EndpointKind::Other);
        }
        let id_index = labels.len() - suffix_len - 1;
        let id_label = labels[id_index];
        let (kind, id) = split_dns_prefix(id_label);
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Endpoint::plain(EndpointKind::Other);
        }
        let domain = std::iter::once(id)
            .chain(labels[id_index + 1..].iter().copied())
            .collect::<Vec<_>>()
            .join(".");
        Endpoint {
            kind,
            region: Some(region.to_owned()),
            domain: Some(domain),
        }
    }

    fn plain(kind: EndpointKind) -> Endpoint {
        Endpoint {
            kind,
            region: None,
            domain: None,
        }
    }

    /// The kind of endpoint.
    pub fn kind(&self) -> EndpointKind {
        self.kind
    }

    /// The AWS region in the host name, for RDS names other than global endpoints.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The pattern of this cluster's instance endpoints (`?.<id>.<region>.rds.amazonaws.com`),
    /// for RDS host names other than global endpoints.
    pub fn instance_host_pattern(&self) -> Option<HostPattern> {
        self.domain.as_ref().map(|domain| HostPattern {
            prefix: String::new(),
            suffix: format!(".{domain}"),
            port: None,
        })
    }
}

fn classify_global(labels: &[&str]) -> Option<Endpoint> {
    let n = labels.len();
    if n >= 6
        && labels[n - 4..] == ["global", "rds", "amazonaws", "com"]
        && labels[n - 5].starts_with("global-")
    {
        return Some(Endpoint::plain(EndpointKind::Global));
    }
    None
}

fn is_region(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Matches the RDS domain at the end of `labels`: returns how many labels it spans and the
/// region. Covers the commercial partitions (`.amazonaws.com`, `.au`, `.eu`, `.uk`, FIPS),
/// China (`rds.<region>.amazonaws.com.cn` and the older `<region>.rds.amazonaws.com.cn`),
/// GovCloud and the ISO partitions (`rds.<region>.amazonaws.com`, `.c2s.ic.gov`,
/// `.sc2s.sgov.gov`).
fn rds_suffix<'a>(labels: &[&'a str]) -> Option<(usize, &'a str)> {
    let n = labels.len();
    let tail = |k: usize| -> Option<&[&'a str]> { n.checked_sub(k).map(|start| &labels[start..]) };
    if let Some(t) = tail(5) {
        match t {
            ["rds", region, "amazonaws", "com", "cn"] if is_region(region) => {
                return Some((5, region));
            }
            [region, "rds", "amazonaws", "com", "cn"] if is_region(region) => {
                return Some((5, region));
            }
            ["rds", region, "c2s", "ic", "gov"] | ["rds", region, "sc2s", "sgov", "gov"]
                if is_region(region) =>
            {
                return Some((5, region));
            }
            _ => {}
        }
    }
    if let Some(t) = tail(4) {
        match t {
            [
                region,
                "rds" | "rds-fips",
                "amazonaws",
                "com" | "au" | "eu" | "uk",
            ] if is_region(region) => {
                return Some((4, region));
            }
            ["rds", region, "amazonaws", "com"] if is_region(region) => return Some((4, region)),
            _ => {}
        }
    }
    None
}

fn split_dns_prefix(label: &str) -> (EndpointKind, &str) {
    // Longest prefixes first: `cluster-ro-` and `cluster-custom-` also start with `cluster-`.
    const PREFIXES: [(&str, EndpointKind); 5] = [
        ("cluster-custom-", EndpointKind::ClusterCustom),
        ("cluster-ro-", EndpointKind::ClusterReader),
        ("cluster-", EndpointKind::ClusterWriter),
        ("proxy-", EndpointKind::Proxy),
        ("shardgrp-", EndpointKind::ShardGroup),
    ];
    for (prefix, kind) in PREFIXES {
        if let Some(id) = label.strip_prefix(prefix) {
            return (kind, id);
        }
    }
    (EndpointKind::Instance, label)
}

/// How the instance endpoints of a cluster are spelled: `?` stands for the instance id.
///
/// Parsed from `cluster_instance_host_pattern`, e.g. `?.abc123.us-east-1.rds.amazonaws.com`,
/// `?.db.internal.example.com:6432` or `tunnel-?.local`.
#[derive(Clone, PartialEq, Eq)]
pub struct HostPattern {
    prefix: String,
    suffix: String,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses a pattern. It must contain exactly one `?`, no scheme or path, and an optional
    /// `:port`.
    pub fn parse(pattern: &str) -> Result<HostPattern> {
        const PARAM: &str = "cluster_instance_host_pattern";
        let pattern = pattern.trim();
        if pattern.contains("://") || pattern.contains('/') {
            return Err(Error::config(
                PARAM,
                format!(
                    "`{pattern}` must be a host pattern such as `?.my-domain.com`, without scheme or path"
                ),
            ));
        }
        let (host, port) = match pattern.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        Error::config(
                            PARAM,
                            format!("`{port}` in `{pattern}` is not a valid port"),
                        )
                    })?;
                (host, Some(port))
            }
            None => (pattern, None),
        };
        if host.matches('?').count() != 1 {
            return Err(Error::config(
                PARAM,
                format!(
                    "`{pattern}` must contain exactly one `?`, which stands for the instance id"
                ),
            ));
        }
        let (prefix, suffix) = host.split_once('?').unwrap_or((host, ""));
        if !prefix
            .bytes()
            .chain(suffix.bytes())
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(Error::config(
                PARAM,
                format!("`{pattern}` may only contain letters, digits, `-`, `.` and one `?`"),
            ));
        }
        if matches!(
            Endpoint::classify(&host.replace('?', "x")).kind(),
            EndpointKind::ClusterWriter
                | EndpointKind::ClusterReader
                | EndpointKind::ClusterCustom
                | EndpointKind::Proxy
                | EndpointKind::Global
        ) {
            return Err(Error::config(
                PARAM,
                format!(
                    "`{pattern}` is a cluster, proxy or global endpoint; the pattern must describe instance endpoints"
                ),
            ));
        }
        Ok(HostPattern {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            port,
        })
    }

    /// Whether the `?` is followed by a dotted domain (`?.db.example.com`, `tunnel-?.local`):
    /// an instance id then becomes a name inside that domain, never a bare host name.
    pub fn is_qualified(&self) -> bool {
        self.suffix.starts_with('.') && self.suffix.len() > 1
    }

    /// The host of instance `instance_id`.
    pub fn host_for(&self, instance_id: &str) -> String {
        format!("{}{}{}", self.prefix, instance_id, self.suffix)
    }

    /// The port given in the pattern, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

/// Whether `name` is one DNS label as instance ids are (`[A-Za-z0-9-]{1,63}`): what a
/// catalog row may put into a host pattern. A dot, `@`, `:` or `/` would let a row name any
/// host, which then receives the application's credentials.
pub(crate) fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}?{}", self.prefix, self.suffix)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({self})")
    }
}

/// A host and port.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` (`[v6]:port` for IPv6).
    pub fn parse(parameter: &str, text: &str) -> Result<HostPort> {
        let bad = || Error::config(parameter, format!("`{text}` is not `host:port`"));
        let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(host: &str) -> EndpointKind {
        Endpoint::classify(host).kind()
    }

    #[test]
    fn classifies_commercial_endpoints() {
        let base = "xyz.us-east-1.rds.amazonaws.com";
        assert_eq!(
            kind(&format!("db.cluster-{base}")),
            EndpointKind::ClusterWriter
        );
        assert_eq!(
            kind(&format!("db.cluster-ro-{base}")),
            EndpointKind::ClusterReader
        );
        assert_eq!(
            kind(&format!("db.cluster-custom-{base}")),
            EndpointKind::ClusterCustom
        );
        assert_eq!(kind(&format!("db.proxy-{base}")), EndpointKind::Proxy);
        assert_eq!(
            kind(&format!("db.shardgrp-{base}")),
            EndpointKind::ShardGroup
        );
        assert_eq!(kind(&format!("instance-1.{base}")), EndpointKind::Instance);
        assert_eq!(
            kind(&format!("DB.CLUSTER-{}", base.to_uppercase())),
            EndpointKind::ClusterWriter
        );
        assert_eq!(
            kind(&format!("db.cluster-{base}.")),
            EndpointKind::ClusterWriter
        );
        assert_eq!(
            kind("db.cluster-xyz.eu-west-2.rds-fips.amazonaws.com"),
            EndpointKind::ClusterWriter
        );
        assert_eq!(
            kind("db.cluster-xyz.ap-southeast-2.rds.amazonaws.au"),
            EndpointKind::ClusterWriter
        );
    }

    #[test]
    fn classifies_china_govcloud_and_iso() {
        let e = Endpoint::classify("db.cluster-xyz.rds.cn-north-1.amazonaws.com.cn");
        assert_eq!(e.kind(), EndpointKind::ClusterWriter);
        assert_eq!(e.region(), Some("cn-north-1"));
        let old = Endpoint::classify("db.cluster-ro-xyz.cn-northwest-1.rds.amazonaws.com.cn");
        assert_eq!(old.kind(), EndpointKind::ClusterReader);
        assert_eq!(old.region(), Some("cn-northwest-1"));
        let gov = Endpoint::classify("instance-1.xyz.rds.us-gov-west-1.amazonaws.com");
        assert_eq!(gov.kind(), EndpointKind::Instance);
        assert_eq!(gov.region(), Some("us-gov-west-1"));
        let gov_cluster = Endpoint::classify("db.cluster-xyz.us-gov-east-1.rds.amazonaws.com");
        assert_eq!(gov_cluster.region(), Some("us-gov-east-1"));
        assert_eq!(
            kind("db.cluster-xyz.rds.us-iso-east-1.c2s.ic.gov"),
            EndpointKind::ClusterWriter
        );
        assert_eq!(
            Endpoint::classify("db.cluster-xyz.rds.cn-north-1.amazonaws.com.cn")
                .instance_host_pattern()
                .unwrap()
                .host_for("i-1"),
            "i-1.xyz.rds.cn-north-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn classifies_global_ip_and_other() {
        assert_eq!(
            kind("app.global-abc123.global.rds.amazonaws.com"),
            EndpointKind::Global
        );
        assert_eq!(
            Endpoint::classify("app.global-abc123.global.rds.amazonaws.com")
                .instance_host_pattern(),
            None
        );
        assert_eq!(kind("10.0.0.12"), EndpointKind::Ip);
        assert_eq!(kind("::1"), EndpointKind::Ip);
        assert_eq!(kind("[fe80::1]"), EndpointKind::Ip);
        assert_eq!(kind("localhost"), EndpointKind::Other);
        assert_eq!(kind("db.internal.example.com"), EndpointKind::Other);
        // Lookalikes stay `Other`: no instance label, or a bad id label.
        assert_eq!(kind("xyz.us-east-1.rds.amazonaws.com"), EndpointKind::Other);
        assert_eq!(
            kind("db.cluster-x_y.us-east-1.rds.amazonaws.com"),
            EndpointKind::Other
        );
        assert_eq!(
            kind("db.cluster-xyz.us-east-1.rds.amazonaws.org"),
            EndpointKind::Other
        );
        assert_eq!(Endpoint::classify("localhost").region(), None);
    }

    #[test]
    fn derives_instance_host_pattern() {
        let e = Endpoint::classify("my-app.cluster-custom-xyz.us-east-1.rds.amazonaws.com");
        let pattern = e.instance_host_pattern().unwrap();
        assert_eq!(pattern.to_string(), "?.xyz.us-east-1.rds.amazonaws.com");
        assert_eq!(
            pattern.host_for("instance-2"),
            "instance-2.xyz.us-east-1.rds.amazonaws.com"
        );
        assert_eq!(pattern.port(), None);
        assert_eq!(
            Endpoint::classify("127.0.0.1").instance_host_pattern(),
            None
        );
    }

    #[test]
    fn parses_host_patterns() {
        let p = HostPattern::parse("?.db.example.com:6432").unwrap();
        assert_eq!(p.host_for("a"), "a.db.example.com");
        assert_eq!(p.port(), Some(6432));
        assert_eq!(p.to_string(), "?.db.example.com:6432");
        assert_eq!(
            HostPattern::parse("tunnel-?.local").unwrap().host_for("b"),
            "tunnel-b.local"
        );
        for bad in [
            "db.example.com",
            "?.?.example.com",
            "https://?.x.com",
            "?.x.com:0",
            "?.x.com:port",
            "? .x.com",
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert_eq!(
                err.parameter(),
                Some("cluster_instance_host_pattern"),
                "{bad}"
            );
        }
        let err = HostPattern::parse("?.cluster-xyz.us-east-1.rds.amazonaws.com").unwrap_err();
        assert!(err.to_string().contains("instance endpoints"), "{err}");
    }

    #[test]
    fn only_one_dns_label_goes_into_a_pattern() {
        for good in ["instance-1", "db-ABCDEFGHIJKLMNOP", "a", &"x".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "x.attacker.example",
            "a@b",
            "a:1",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(
            HostPattern::parse("?.db.example.com")
                .unwrap()
                .is_qualified()
        );
        assert!(HostPattern::parse("tunnel-?.local").unwrap().is_qualified());
        for bare in ["?", "db-?", "?-db", "?.:6432"] {
            if let Ok(p) = HostPattern::parse(bare) {
                assert!(!p.is_qualified(), "{bare}");
            }
        }
    }

    #[test]
    fn parses_host_ports() {
        let hp = HostPort::parse("instance_endpoints", "127.0.0.1:5433").unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("127.0.0.1", 5433));
        let v6 = HostPort::parse("instance_endpoints", "[::1]:5433").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:5433");
        for bad in ["127.0.0.1", ":5432", "h:0", "h:99999"] {
            assert!(HostPort::parse("instance_endpoints", bad).is_err(), "{bad}");
        }
    }
}
