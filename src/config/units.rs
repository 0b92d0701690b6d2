//! Durations ("250ms", "5s", "1h") and byte sizes ("64MB", 1024) as written in the config
//! files: parsing them with errors a DBA can act on, and formatting them back.

use std::time::Duration;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// Milliseconds per duration unit, largest first (format_duration relies on the order).
const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parse a duration: a non-negative integer followed by `ms`, `s`, `m`, `h` or `d`
/// ("250ms", "5s", "1h"). "0" needs no unit; any other bare number is refused as ambiguous.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(s, "a duration such as \"5s\" or \"250ms\"")?;
    if unit.is_empty() {
        if n == 0 {
            return Ok(Duration::ZERO);
        }
        return Err(format!(
            "{s:?} has no unit and is ambiguous: write e.g. \"{n}s\" or \"{n}ms\""
        ));
    }
    let Some(&(_, ms)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(format!(
            "unknown unit {unit:?} in {s:?} (use ms, s, m, h or d)"
        ));
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parse a byte size: an integer optionally followed by `B`, `kB`/`KB`/`KiB`, `MB`/`MiB` or
/// `GB`/`GiB` (units are powers of 1024 and matched case-insensitively): "512kB", "64MB".
pub fn parse_size(s: &str) -> Result<usize, String> {
    let (n, unit) = split_number(s, "a size such as \"64MB\" or a number of bytes")?;
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" => KIB,
        "mb" | "mib" => MIB,
        "gb" | "gib" => GIB,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use B, kB, MB or GB)"
            ))
        }
    };
    usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Format a duration in the largest unit that represents it exactly: "5s", "250ms", "1h",
/// "0s". The result parses back with [`parse_duration`], except for durations with a
/// sub-millisecond part (never produced by parsing), which are shown in nanoseconds ("1500ns").
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ns", d.as_nanos());
    }
    let ms = d.as_millis();
    let (unit, per) = DURATION_UNITS
        .iter()
        .find(|(_, per)| ms.is_multiple_of(u128::from(*per)))
        .expect("every whole number of milliseconds is a multiple of 1ms");
    format!("{}{unit}", ms / u128::from(*per))
}

/// Format a byte size in the largest unit that represents it exactly: "64MB", "512kB",
/// "1000B". The result parses back with [`parse_size`].
pub fn format_size(bytes: usize) -> String {
    match bytes {
        0 => "0B".to_string(),
        b if b.is_multiple_of(GIB) => format!("{}GB", b / GIB),
        b if b.is_multiple_of(MIB) => format!("{}MB", b / MIB),
        b if b.is_multiple_of(KIB) => format!("{}kB", b / KIB),
        b => format!("{b}B"),
    }
}

/// Split "  64 MB " into (64, "MB"): leading decimal digits, then the rest (whitespace
/// between them allowed). `what` describes the expected form for error messages.
fn split_number<'a>(s: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let t = s.trim();
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(end);
    if digits.is_empty() {
        if t.starts_with('-') {
            return Err(format!("{s:?} is negative; expected {what}"));
        }
        return Err(format!("expected {what}, got {s:?}"));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{s:?} has a fraction; use a whole number of a smaller unit"
        ));
    }
    let n = digits
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is too large"))?;
    Ok((n, unit.trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let ms = |n| Ok(Duration::from_millis(n));
        assert_eq!(parse_duration("250ms"), ms(250));
        assert_eq!(parse_duration("5s"), ms(5_000));
        assert_eq!(parse_duration("1m"), ms(60_000));
        assert_eq!(parse_duration("1h"), ms(3_600_000));
        assert_eq!(parse_duration("1d"), ms(86_400_000));
        assert_eq!(parse_duration("0"), ms(0));
        assert_eq!(parse_duration("0s"), ms(0));
        assert_eq!(parse_duration(" 10 m "), ms(600_000));
    }

    #[test]
    fn bad_durations_are_refused_with_reasons() {
        let err = |s| parse_duration(s).unwrap_err();
        assert!(err("5").contains("no unit"), "{}", err("5"));
        assert!(err("5").contains("\"5s\""));
        assert!(err("5sec").contains("unknown unit \"sec\""));
        assert!(err("5S").contains("unknown unit"));
        assert!(err("1.5s").contains("fraction"));
        assert!(err("-5s").contains("negative"));
        assert!(err("").contains("expected a duration"));
        assert!(err("s").contains("expected a duration"));
        assert!(err("99999999999999999999s").contains("too large"));
        assert!(err("999999999999999999d").contains("too large"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("512kB"), Ok(512 * 1024));
        assert_eq!(parse_size("512KB"), Ok(512 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
    }

    #[test]
    fn bad_sizes_are_refused_with_reasons() {
        let err = |s| parse_size(s).unwrap_err();
        assert!(err("64XB").contains("unknown unit \"XB\""));
        assert!(err("1.5MB").contains("fraction"));
        assert!(err("-1MB").contains("negative"));
        assert!(err("lots").contains("expected a size"));
        assert!(err("99999999999999999999").contains("too large"));
        assert!(err("99999999999999GB").contains("too large"));
    }

    #[test]
    fn durations_format_in_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(172_800)), "2d");
        assert_eq!(format_duration(Duration::from_nanos(1500)), "1500ns");
        for s in ["250ms", "5s", "10m", "1h", "2d", "1500ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn sizes_format_in_largest_exact_unit() {
        assert_eq!(format_size(64 << 20), "64MB");
        assert_eq!(format_size(1 << 30), "1GB");
        assert_eq!(format_size(512 * 1024), "512kB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
        for s in ["64MB", "1GB", "512kB", "1000B"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
