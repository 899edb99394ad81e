//! Durations (`"1h30m"`, `"500ms"`) and sizes (`"16MiB"`) as the config writes them.

use std::time::Duration;

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`, compounds such as `"1h30m"` or
/// `"1m 30s"` (largest unit first), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let example = "(e.g. \"30s\", \"5m\", \"1h30m\")";
    if s.is_empty() {
        return Err(format!("empty duration {example}"));
    }
    let mut secs = 0.0f64;
    let mut rest = s;
    let mut last_unit = f64::INFINITY;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?} {example}"))?;
        let tail = tail.trim_start();
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "" if num.len() == s.len() => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(format!("missing unit after {num} in {s:?} {example}")),
            u => {
                return Err(format!(
                    "invalid duration unit {u:?} in {s:?} (use ms, s, m, h or d, e.g. \"1h30m\")"
                ));
            }
        };
        if scale >= last_unit {
            return Err(format!(
                "invalid duration {s:?}: write the largest unit first, each once {example}"
            ));
        }
        last_unit = scale;
        secs += n * scale;
        rest = tail.trim_start();
    }
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `"16MiB"`, `"512KiB"`, `"1GiB"`, `"100kB"` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. \"16MiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "invalid size unit {u:?} in {s:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} out of range"))
}
