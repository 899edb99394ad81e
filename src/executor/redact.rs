//! Masking declared secrets in everything a job writes that runyard keeps or sends.
//!
//! Captured output is masked line by line before it is buffered, so stored
//! output, log streams, progress events (parsed from masked lines) and webhook
//! payloads (built from stored results) never hold a secret. A line longer than
//! the line cap is cut into pieces; the reader then holds back the last
//! `longest secret − 1` bytes of each piece and masks them with the next one
//! ([`Redactor::holdback`]), so a secret split across a cut (or a flush) is
//! still masked. Multi-line secrets (a PEM key) are masked line by line, and a
//! secret's JSON-escaped form (as a job writes it into its result file) too.
//!
//! The test that would catch a leak:
//! `a_secret_split_across_a_long_line_cut_is_masked` (here) and the server
//! test `run_completion::secrets_are_masked_in_stored_output_sse_results_and_webhooks`.

/// What replaces a secret.
pub const MASK: &str = "[redacted]";

/// Replaces every occurrence of the declared secret values.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Patterns, longest first so a longer secret wins over its own prefix.
    needles: Vec<Vec<u8>>,
}

impl Redactor {
    /// A redactor for `values`; multi-line values also contribute each of their lines.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for v in values {
            let mut push = |s: &str| {
                if s.len() >= crate::config::MIN_SECRET_BYTES
                    && !needles.iter().any(|n| n == s.as_bytes())
                {
                    needles.push(s.as_bytes().to_vec());
                }
            };
            push(v);
            // As it appears inside a JSON string (a result file), when that differs.
            let escaped = serde_json::to_string(v).unwrap_or_default();
            push(escaped.trim_matches('"'));
            if v.contains('\n') {
                for line in v.lines() {
                    push(line.trim_end_matches('\r'));
                }
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Redactor { needles }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Bytes a reader must hold back at a cut so a secret spanning it is seen whole.
    pub fn holdback(&self) -> usize {
        self.needles.first().map_or(0, |n| n.len() - 1)
    }

    /// `raw` with every secret replaced by [`MASK`] (borrowed when nothing matched).
    pub fn mask<'a>(&self, raw: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.needles.is_empty() || !self.needles.iter().any(|n| find(raw, n).is_some()) {
            return std::borrow::Cow::Borrowed(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        'scan: while i < raw.len() {
            for n in &self.needles {
                if raw[i..].starts_with(n) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += n.len();
                    continue 'scan;
                }
            }
            out.push(raw[i]);
            i += 1;
        }
        std::borrow::Cow::Owned(out)
    }

    /// `text` with every secret masked.
    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut start = 0;
    while let Some(pos) = hay[start..].iter().position(|&b| b == first) {
        let at = start + pos;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_prefers_the_longest() {
        let r = Redactor::new(["hunter2pass", "hunter2passWORD"]);
        assert_eq!(
            r.mask_str("a hunter2passWORD b hunter2pass c"),
            "a [redacted] b [redacted] c"
        );
        assert_eq!(r.mask_str("nothing here"), "nothing here");
    }

    #[test]
    fn multi_line_secrets_are_masked_per_line() {
        let key = "-----BEGIN KEY-----\nAAAAsecretline1\nBBBBsecretline2\n-----END KEY-----";
        let r = Redactor::new([key]);
        assert_eq!(r.mask_str("x BBBBsecretline2 y"), "x [redacted] y");
    }

    #[test]
    fn json_escaped_forms_are_masked_too() {
        let r = Redactor::new(["pa\"ss\\word"]);
        assert_eq!(
            r.mask_str(r#"{"t": "pa\"ss\\word"}"#),
            r#"{"t": "[redacted]"}"#
        );
    }

    #[test]
    fn too_short_values_are_ignored() {
        assert!(Redactor::new(["abc"]).is_empty());
    }
}
