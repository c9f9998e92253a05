//! TCP settings of every connection the pool opens: keepalives and a user timeout, libpq's
//! parameters, so that a connection to an instance this process can no longer reach ends
//! even where the monitor sees nothing.

use std::time::Duration;

use crate::error::{Error, Result};

/// TCP keepalives and user timeout of every connection (pools, probes, monitor), as libpq's
/// URL parameters. Without them a query waiting for a reply from a silent (black-holed) host
/// waits for ever, and one with unacknowledged data about 15 minutes (Linux's
/// `tcp_retries2`). Both flavours honour them: tokio-postgres sets them when it connects; the
/// sqlx flavour sets them on its connections' sockets right after each connect (Linux, see the
/// README's *Silent failures*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpSettings {
    /// Whether TCP keepalives are on (`keepalives`, `1` or `0`, default 1).
    pub keepalives: bool,
    /// Silence before the first keepalive probe (`keepalives_idle`, seconds, default 15).
    pub keepalives_idle: Duration,
    /// Time between keepalive probes (`keepalives_interval`, seconds, default 5).
    pub keepalives_interval: Duration,
    /// Unanswered keepalive probes that end the connection (`keepalives_count`, default 3).
    pub keepalives_count: u32,
    /// How long sent data may stay unacknowledged before the connection ends
    /// (`tcp_user_timeout`, milliseconds, default 10000; 0 = the system's default, about 15
    /// minutes on Linux).
    pub tcp_user_timeout: Option<Duration>,
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            keepalives: true,
            keepalives_idle: Duration::from_secs(15),
            keepalives_interval: Duration::from_secs(5),
            keepalives_count: 3,
            tcp_user_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl TcpSettings {
    /// Applies one URL parameter; returns whether `key` is one of these settings.
    pub(super) fn apply_parameter(&mut self, key: &str, value: &str) -> Result<bool> {
        let number = |max: u64| -> Result<u64> {
            match value.trim().parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(Error::config(
                    key,
                    format!("`{value}` is not an integer from 0 to {max}"),
                )),
            }
        };
        // Linux takes at most 32767 s for the keepalive times and 127 probes.
        match key {
            "keepalives" => {
                self.keepalives = match value.trim() {
                    "1" => true,
                    "0" => false,
                    _ => return Err(Error::config(key, format!("`{value}` is not 1 or 0"))),
                }
            }
            "keepalives_idle" => self.keepalives_idle = Duration::from_secs(number(32_767)?.max(1)),
            "keepalives_interval" => {
                self.keepalives_interval = Duration::from_secs(number(32_767)?.max(1))
            }
            "keepalives_count" => self.keepalives_count = number(127)?.max(1) as u32,
            "tcp_user_timeout" => {
                let ms = number(u64::from(u32::MAX))?;
                self.tcp_user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_names_and_units() {
        let mut tcp = TcpSettings::default();
        for (key, value) in [
            ("keepalives_idle", "30"),
            ("keepalives_interval", "2"),
            ("keepalives_count", "4"),
            ("tcp_user_timeout", "2500"),
        ] {
            assert!(tcp.apply_parameter(key, value).unwrap());
        }
        assert_eq!(tcp.keepalives_idle, Duration::from_secs(30));
        assert_eq!(tcp.keepalives_interval, Duration::from_secs(2));
        assert_eq!(tcp.keepalives_count, 4);
        assert_eq!(tcp.tcp_user_timeout, Some(Duration::from_millis(2500)));
        assert!(tcp.apply_parameter("tcp_user_timeout", "0").unwrap());
        assert_eq!(tcp.tcp_user_timeout, None);
        assert!(tcp.apply_parameter("keepalives", "0").unwrap());
        assert!(!tcp.keepalives);
        assert!(!tcp.apply_parameter("sslmode", "require").unwrap());
        let err = tcp.apply_parameter("keepalives", "yes").unwrap_err();
        assert!(format!("{err:#}").contains("keepalives"), "{err}");
        let err = tcp.apply_parameter("keepalives_count", "1000").unwrap_err();
        assert!(format!("{err:#}").contains("keepalives_count"), "{err}");
    }
}
