//! The row rules for Aurora's `aurora_replica_status()` (and a global database's
//! `aurora_global_db_instance_status()`, read in the same shape plus a region): de-duplicate,
//! newest writer wins, no writer means no valid topology.

use std::collections::HashMap;

use crate::connector::TextRow;
use crate::error::{Error, Result};

/// One parsed row of the Aurora topology query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AuroraRow {
    pub(crate) id: String,
    pub(crate) is_writer: bool,
    pub(crate) cpu: Option<f64>,
    pub(crate) lag_ms: Option<f64>,
    /// Microseconds since the Unix epoch; `None` when the catalog reports NULL.
    pub(crate) last_update: Option<i64>,
    /// The sixth column, where the query has one: the instance's AWS region (Aurora Global
    /// Database).
    pub(crate) region: Option<String>,
}

/// Parses rows of `id, is_writer, cpu, lag, last_update_timestamp` (all as text) and applies
/// the rules the AWS drivers apply:
/// - a row per instance, the one with the newest `LAST_UPDATE_TIMESTAMP` kept;
/// - more than one writer: the writer with the newest timestamp wins, the others are dropped
///   (a just-promoted instance and a stale row of the old writer);
/// - no writer: the topology is invalid (a failover is in progress).
pub(crate) fn aurora_rows(rows: &[TextRow]) -> Result<Vec<AuroraRow>> {
    let mut by_id: HashMap<String, AuroraRow> = HashMap::new();
    for row in rows {
        let parsed = parse_row(row)?;
        match by_id.get(&parsed.id) {
            Some(existing) if existing.last_update >= parsed.last_update => {}
            _ => {
                by_id.insert(parsed.id.clone(), parsed);
            }
        }
    }
    let newest_writer = by_id
        .values()
        .filter(|r| r.is_writer)
        .max_by(|a, b| {
            a.last_update
                .cmp(&b.last_update)
                .then_with(|| b.id.cmp(&a.id))
        })
        .map(|r| r.id.clone())
        .ok_or_else(|| {
            Error::topology(
                "aurora_replica_status() reports no writer (a failover may be in progress)",
            )
        })?;
    let mut out: Vec<AuroraRow> = by_id
        .into_values()
        .filter(|r| !r.is_writer || r.id == newest_writer)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn parse_row(row: &TextRow) -> Result<AuroraRow> {
    if row.len() < 5 {
        return Err(Error::topology(format!(
            "aurora_replica_status() returned {} columns, expected 5 (a failover may be in progress)",
            row.len()
        )));
    }
    let id = row[0]
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::topology("aurora_replica_status() returned a row without SERVER_ID"))?
        .to_owned();
    let is_writer = parse_bool(row[1].as_deref()).ok_or_else(|| {
        Error::topology(format!(
            "aurora_replica_status(): bad writer flag for `{id}`"
        ))
    })?;
    let number = |i: usize| row[i].as_deref().and_then(|s| s.parse::<f64>().ok());
    let last_update = match row[4].as_deref() {
        None => None,
        Some(text) => Some(parse_timestamp(text).ok_or_else(|| {
            Error::topology(format!(
                "aurora_replica_status(): cannot read LAST_UPDATE_TIMESTAMP `{text}` of `{id}`"
            ))
        })?),
    };
    Ok(AuroraRow {
        id,
        is_writer,
        cpu: number(2),
        lag_ms: number(3),
        last_update,
        region: row
            .get(5)
            .and_then(|r| r.as_deref())
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
    })
}

/// PostgreSQL's text form of a boolean.
pub(crate) fn parse_bool(text: Option<&str>) -> Option<bool> {
    match text? {
        "t" | "true" | "TRUE" | "on" | "1" => Some(true),
        "f" | "false" | "FALSE" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Parses a `timestamptz` in PostgreSQL's ISO output style
/// (`2026-11-22 03:20:00.123456+00`, offsets like `+05:30` or `-08`) into microseconds since
/// the Unix epoch.
pub(crate) fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_once([' ', 'T'])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let offset_at = rest.find(['+', '-']).unwrap_or(rest.len());
    let (time, offset) = rest.split_at(offset_at);
    let mut time_parts = time.splitn(3, ':');
    let hour: i64 = time_parts.next()?.parse().ok()?;
    let minute: i64 = time_parts.next()?.parse().ok()?;
    let seconds = time_parts.next()?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let second: i64 = whole.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = format!("{fraction:0<6}")[..6].parse().ok()?;
    let offset_seconds = parse_offset(offset)?;
    let days = days_from_civil(year, month, day);
    let local = ((days * 24 + hour) * 60 + minute) * 60 + second;
    Some((local - offset_seconds) * 1_000_000 + micros)
}

fn parse_offset(offset: &str) -> Option<i64> {
    if offset.is_empty() {
        return Some(0);
    }
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    let seconds: i64 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    Some(sign * (hours * 3600 + minutes * 60 + seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, writer: bool, ts: Option<&str>) -> TextRow {
        vec![
            Some(id.into()),
            Some(if writer { "t" } else { "f" }.into()),
            Some("1.5".into()),
            Some("12".into()),
            ts.map(Into::into),
        ]
    }

    #[test]
    fn parses_timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.5+00"), Some(1_500_000));
        assert_eq!(parse_timestamp("1970-01-01 01:00:00+01"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 05:30:00+05:30"), Some(0));
        assert_eq!(parse_timestamp("1969-12-31 16:00:00-08"), Some(0));
        assert_eq!(
            parse_timestamp("2026-11-22 03:20:00.123456+00"),
            Some(1_795_317_600_123_456)
        );
        assert_eq!(
            parse_timestamp("2024-02-29 00:00:00+00"),
            Some(1_709_164_800_000_000)
        );
        for bad in [
            "",
            "2026-13-01 00:00:00+00",
            "2026-11-22",
            "yesterday",
            "2026-11-22 03:20:00.12x+00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn keeps_the_newest_row_per_instance() {
        let rows = vec![
            row("instance-1", true, Some("2026-11-22 03:20:00+00")),
            row("instance-2", false, Some("2026-11-22 03:19:00+00")),
            row("instance-2", false, Some("2026-11-22 03:20:00.5+00")),
        ];
        let out = aurora_rows(&rows).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].id, "instance-2");
        assert_eq!(
            out[1].last_update,
            parse_timestamp("2026-11-22 03:20:00.5+00")
        );
        assert_eq!(out[1].cpu, Some(1.5));
        assert_eq!(out[1].lag_ms, Some(12.0));
    }

    #[test]
    fn newest_writer_wins_and_the_stale_writer_is_dropped() {
        let rows = vec![
            row("instance-1", true, Some("2026-11-22 03:20:00+00")),
            row("instance-2", true, Some("2026-11-22 03:20:00.010+00")),
            row("instance-3", false, Some("2026-11-22 03:20:00+00")),
        ];
        let out = aurora_rows(&rows).unwrap();
        let ids: Vec<_> = out.iter().map(|r| (r.id.as_str(), r.is_writer)).collect();
        assert_eq!(ids, [("instance-2", true), ("instance-3", false)]);
    }

    #[test]
    fn no_writer_is_invalid() {
        let rows = vec![
            row("instance-2", false, None),
            row("instance-3", false, None),
        ];
        let err = aurora_rows(&rows).unwrap_err();
        assert!(err.is_topology());
        assert!(format!("{err:#}").contains("no writer"), "{err}");
        assert!(aurora_rows(&[]).unwrap_err().is_topology());
    }

    #[test]
    fn malformed_rows_are_rejected() {
        assert!(
            aurora_rows(&[vec![Some("x".into())]])
                .unwrap_err()
                .is_topology()
        );
        let mut bad_flag = row("instance-1", true, None);
        bad_flag[1] = Some("maybe".into());
        assert!(aurora_rows(&[bad_flag]).is_err());
        let bad_ts = row("instance-1", true, Some("soon"));
        assert!(
            aurora_rows(&[bad_ts])
                .unwrap_err()
                .to_string()
                .contains("soon")
        );
        // NULL timestamps are allowed (the query keeps them on purpose).
        assert_eq!(
            aurora_rows(&[row("instance-1", true, None)]).unwrap().len(),
            1
        );
    }
}
