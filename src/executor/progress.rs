//! `::progress <0-100> <message>` lines.

/// Parses a progress line; `None` for anything else (including numbers over 100).
pub fn parse(line: &str) -> Option<(u8, String)> {
    let rest = line.strip_prefix("::progress")?;
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim_start();
    let (num, msg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let pct: u8 = num.parse().ok().filter(|p| *p <= 100)?;
    Some((pct, msg.trim().chars().take(1024).collect()))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_progress_lines() {
        assert_eq!(
            parse("::progress 40 compiling"),
            Some((40, "compiling".into()))
        );
        assert_eq!(parse("::progress 100"), Some((100, String::new())));
        assert_eq!(
            parse("::progress  7   spaced  out "),
            Some((7, "spaced  out".into()))
        );
    }

    #[test]
    fn ignores_other_lines() {
        for l in [
            "progress 40",
            "::progress 101 x",
            "::progress -1",
            "::progressive 4",
            "::progress x y",
            " ::progress 4",
        ] {
            assert_eq!(parse(l), None, "{l}");
        }
    }
}
