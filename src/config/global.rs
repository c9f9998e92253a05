//! Aurora Global Database settings: how each region's instances are reached, the home region
//! whose readers serve reads, and where reads go when it has none.

use std::collections::BTreeMap;

use crate::endpoint::{Endpoint, HostPattern};
use crate::error::{Error, Result};

/// Where `.reader()` reads go in an Aurora Global Database (`global_read_mode`), named
/// after the AWS drivers' global failover modes. "Home" is `failover_home_region`.
///
/// Writes always go to the primary region's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GlobalReadMode {
    /// `home-reader-or-writer` (default): readers in the home region, else the writer
    /// (wherever it is).
    #[default]
    HomeReaderOrWriter,
    /// `strict-home-reader`: readers in the home region only; with none, reads wait for one
    /// (as `failover_mode=strict_reader`).
    StrictHomeReader,
    /// `out-of-home-reader-or-writer`: readers outside the home region, else the writer.
    OutOfHomeReaderOrWriter,
    /// `strict-out-of-home-reader`: readers outside the home region only.
    StrictOutOfHomeReader,
    /// `any-reader-or-writer`: any reader, else the writer.
    AnyReaderOrWriter,
    /// `strict-any-reader`: any reader, never the writer.
    StrictAnyReader,
}

impl GlobalReadMode {
    pub(crate) fn parse(parameter: &str, text: &str) -> Result<GlobalReadMode> {
        Ok(match text.trim() {
            "home-reader-or-writer" => GlobalReadMode::HomeReaderOrWriter,
            "strict-home-reader" => GlobalReadMode::StrictHomeReader,
            "out-of-home-reader-or-writer" => GlobalReadMode::OutOfHomeReaderOrWriter,
            "strict-out-of-home-reader" => GlobalReadMode::StrictOutOfHomeReader,
            "any-reader-or-writer" => GlobalReadMode::AnyReaderOrWriter,
            "strict-any-reader" => GlobalReadMode::StrictAnyReader,
            other => {
                return Err(Error::config(
                    parameter,
                    format!(
                        "unknown mode `{other}`; expected home-reader-or-writer, strict-home-reader, \
                         out-of-home-reader-or-writer, strict-out-of-home-reader, \
                         any-reader-or-writer or strict-any-reader"
                    ),
                ));
            }
        })
    }

    /// Whether a reader in `region` may serve reads, `home` being the home region.
    pub(crate) fn allows_region(self, region: &str, home: &str) -> bool {
        let at_home = region.eq_ignore_ascii_case(home);
        match self {
            GlobalReadMode::HomeReaderOrWriter | GlobalReadMode::StrictHomeReader => at_home,
            GlobalReadMode::OutOfHomeReaderOrWriter | GlobalReadMode::StrictOutOfHomeReader => {
                !at_home
            }
            GlobalReadMode::AnyReaderOrWriter | GlobalReadMode::StrictAnyReader => true,
        }
    }

    /// Whether reads may use the writer when no reader the mode allows is available.
    pub(crate) fn may_use_writer(self) -> bool {
        matches!(
            self,
            GlobalReadMode::HomeReaderOrWriter
                | GlobalReadMode::OutOfHomeReaderOrWriter
                | GlobalReadMode::AnyReaderOrWriter
        )
    }
}

/// An Aurora Global Database's settings (used once the cluster turns out to be one).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GlobalSettings {
    /// How each region's instances are spelled (`global_cluster_instance_host_patterns`:
    /// `[region]?.domain:port` entries, or RDS patterns whose host names the region,
    /// comma-separated). The URL's own pattern (derived from an RDS host name, or
    /// `cluster_instance_host_pattern`) serves the URL's region.
    pub host_patterns: BTreeMap<String, HostPattern>,
    /// The region whose readers serve reads (`failover_home_region`); default the region of
    /// the URL's host. Required when the URL's host names no region (the global writer
    /// endpoint, an IP address, a custom domain).
    pub home_region: Option<String>,
    /// Where reads go (`global_read_mode`). See [`GlobalReadMode`].
    pub read_mode: GlobalReadMode,
}

impl GlobalSettings {
    /// Applies one global-database parameter; `Ok(false)` when `key` is not one.
    pub(crate) fn apply_parameter(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "global_cluster_instance_host_patterns" => {
                self.host_patterns = parse_patterns(key, value)?;
            }
            "failover_home_region" => {
                let region = value.trim().to_ascii_lowercase();
                if region.is_empty() {
                    return Err(Error::config(key, "must name a region, e.g. `us-east-1`"));
                }
                self.home_region = Some(region);
            }
            "global_read_mode" => self.read_mode = GlobalReadMode::parse(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses `[region]?.domain:port` and RDS pattern entries, comma-separated, into a pattern
/// per region.
fn parse_patterns(key: &str, value: &str) -> Result<BTreeMap<String, HostPattern>> {
    let mut patterns = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (region, pattern) = match entry.strip_prefix('[') {
            Some(rest) => {
                let (region, pattern) = rest.split_once(']').ok_or_else(|| {
                    Error::config(key, format!("`{entry}` has no `]` after its region"))
                })?;
                let pattern = HostPattern::parse(pattern)
                    .map_err(|err| Error::config(key, format!("`{entry}`: {err}")))?;
                (region.trim().to_ascii_lowercase(), pattern)
            }
            None => {
                let pattern = HostPattern::parse(entry)
                    .map_err(|err| Error::config(key, format!("`{entry}`: {err}")))?;
                let region = Endpoint::classify(&pattern.host_for("instance"))
                    .region()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::config(
                            key,
                            format!(
                                "`{entry}` names no region: write it `[region]{entry}`, or use an \
                                 RDS pattern such as `?.abc123.us-east-2.rds.amazonaws.com`"
                            ),
                        )
                    })?;
                (region, pattern)
            }
        };
        if region.is_empty() {
            return Err(Error::config(key, format!("`{entry}` has an empty region")));
        }
        if patterns.insert(region.clone(), pattern).is_some() {
            return Err(Error::config(
                key,
                format!("region `{region}` has more than one pattern"),
            ));
        }
    }
    Ok(patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_their_region_or_take_it_from_the_rds_host() {
        let patterns = parse_patterns(
            "p",
            "[us-east-1]?.db.example.com:6432, ?.xyz789.eu-west-1.rds.amazonaws.com",
        )
        .expect("patterns");
        assert_eq!(
            patterns["us-east-1"].host_for("db-1"),
            "db-1.db.example.com"
        );
        assert_eq!(patterns["us-east-1"].port(), Some(6432));
        assert_eq!(
            patterns["eu-west-1"].host_for("db-2"),
            "db-2.xyz789.eu-west-1.rds.amazonaws.com"
        );
    }

    #[test]
    fn bad_patterns_are_errors_naming_the_entry() {
        let err = parse_patterns("p", "?.db.example.com").expect_err("no region");
        assert!(format!("{err:#}").contains("names no region"), "{err}");
        let err = parse_patterns("p", "[us-east-1?.db.example.com").expect_err("no ]");
        assert!(format!("{err:#}").contains("no `]`"), "{err}");
        let err = parse_patterns("p", "[us-east-1]?.a.com,[us-east-1]?.b.com").expect_err("twice");
        assert!(
            format!("{err:#}").contains("more than one pattern"),
            "{err}"
        );
        let err = parse_patterns("p", "[us-east-1]db.example.com").expect_err("no ?");
        assert!(err.is_config(), "{err}");
    }

    #[test]
    fn read_modes_pick_regions_and_the_writer() {
        use GlobalReadMode::*;
        assert!(HomeReaderOrWriter.allows_region("US-WEST-2", "us-west-2"));
        assert!(!HomeReaderOrWriter.allows_region("us-east-1", "us-west-2"));
        assert!(StrictOutOfHomeReader.allows_region("us-east-1", "us-west-2"));
        assert!(AnyReaderOrWriter.allows_region("us-east-1", "us-west-2"));
        assert!(HomeReaderOrWriter.may_use_writer());
        assert!(!StrictHomeReader.may_use_writer());
        assert!(!StrictAnyReader.may_use_writer());
        assert!(GlobalReadMode::parse("m", "strict-writer").is_err());
    }
}
