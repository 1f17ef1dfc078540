//! What the three command lines share about what people type: addresses with the default port,
//! and durations as people write them. Plain functions, so that every binary reads a flag the
//! same way.

use std::time::Duration;

/// The port a coordinator listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5677;

/// An address as `host:port`, with [`DEFAULT_PORT`] when `addr` names only a host: `localhost`,
/// `127.0.0.1`, `node7.example`, `::1` or `[::1]` all work, as do their forms with a port.
pub fn with_default_port(addr: &str) -> String {
    with_port(addr, DEFAULT_PORT)
}

/// `addr` with `port` added when it names none (as [`with_default_port`], for other services
/// such as the coordinator's HTTP).
pub fn with_port(addr: &str, port: u16) -> String {
    let a = addr.trim();
    if a.starts_with('[') {
        // `[v6]` or `[v6]:port`.
        return match a.rsplit_once("]:") {
            Some(_) => a.to_string(),
            None => format!("{a}:{port}"),
        };
    }
    match a.matches(':').count() {
        0 => format!("{a}:{port}"),
        1 => a.to_string(),
        // A bare IPv6 address: bracket it.
        _ => format!("[{a}]:{port}"),
    }
}

/// Parses a duration as people write it: `10ms`, `2s`, `1h30m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!(
            "invalid duration {s:?}: must be a non-negative number"
        ));
    }
    if let Some(secs) = t.strip_suffix('s').and_then(|n| n.parse::<f64>().ok())
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 10ms, 2s, 1h30m)"))
}

/// A duration for people: `2s`, `150ms`, `1h 30m`, never `2000ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    // Whole seconds beyond a second; tenths below a minute when they matter.
    if ms < 60_000 && !ms.is_multiple_of(1000) {
        return format!("{:.1}s", d.as_secs_f64());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_get_the_default_port_and_ports_are_kept() {
        assert_eq!(with_default_port("127.0.0.1"), "127.0.0.1:5677");
        assert_eq!(with_default_port("localhost"), "localhost:5677");
        assert_eq!(with_default_port("node7:9000"), "node7:9000");
        assert_eq!(with_default_port("::1"), "[::1]:5677");
        assert_eq!(with_default_port("[::1]"), "[::1]:5677");
        assert_eq!(with_default_port("[::1]:80"), "[::1]:80");
        assert_eq!(with_default_port(" 10.0.0.2 "), "10.0.0.2:5677");
    }

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn durations_print_as_people_read_them() {
        assert_eq!(format_duration(Duration::from_millis(150)), "150ms");
        assert_eq!(format_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(format_duration(Duration::from_millis(3200)), "3.2s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
    }
}
