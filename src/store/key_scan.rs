//! The round-robin walk over a keyed pipeline's concurrency keys (`concurrency_key`),
//! decided above the backend: where a claim's scan starts (after the last key a claim
//! of this process took from), how it wraps round the key space once, and when it
//! stops. Each backend runs the key queries; `claim_plan::pick` ranks what they read.

use std::collections::HashMap;

use super::ClaimedJob;

/// Keys of one pipeline a claim looks at at most (the rest on later claims: the scan goes
/// on after the last key taken, round the key space).
pub const KEY_SCAN: usize = 256;

/// Where a claim's scan of one pipeline's keys starts: after the last key a claim of
/// this process took a job from (round-robin), at the start when none did yet. Scans go
/// on round the key space, so each key's turn comes.
pub static KEY_CURSOR: std::sync::LazyLock<std::sync::Mutex<HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// The key after which a claim's scan of `pipeline` starts (`None`: the first key).
pub fn scan_start(pipeline: &str) -> Option<String> {
    KEY_CURSOR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(pipeline)
        .cloned()
}

/// A walk over one pipeline's keys, round-robin from [`scan_start`]: the backend asks
/// the store for the first key after [`KeyScan::after`] (`None`: the first key) and
/// hands the answer to [`KeyScan::next`], until it says [`ScanStep::Done`]. Past the
/// last key it wraps round once, up to the key it started after.
#[derive(Debug)]
pub struct KeyScan {
    start: Option<String>,
    cursor: Option<String>,
    wrapped: bool,
}

/// What a backend does with one answer of its key query.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanStep {
    /// Read this key's heads.
    Key(String),
    /// The scan wrapped round: ask again (from the first key).
    Again,
    /// Every key was seen.
    Done,
}

impl KeyScan {
    /// A scan of `pipeline`'s keys starting after the last key a claim took.
    pub fn new(pipeline: &str) -> KeyScan {
        let start = scan_start(pipeline);
        KeyScan {
            cursor: start.clone(),
            wrapped: start.is_none(),
            start,
        }
    }

    /// The key the next query starts after (`None`: from the first key).
    pub fn after(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The next step, given the key the query found (`None`: no key after the bound).
    pub fn next(&mut self, found: Option<String>) -> ScanStep {
        match found {
            Some(k) if self.wrapped && self.start.as_ref().is_some_and(|s| &k > s) => {
                ScanStep::Done
            }
            Some(k) => {
                self.cursor = Some(k.clone());
                ScanStep::Key(k)
            }
            None if !self.wrapped => {
                self.wrapped = true;
                self.cursor = None;
                ScanStep::Again
            }
            None => ScanStep::Done,
        }
    }
}

/// Moves the cursor past the last key (in scan order) a claim took a job from.
pub fn scanned(
    pipeline: &str,
    scan_order: &[String],
    picked: &[(i64, ClaimedJob)],
    keys: &HashMap<i64, String>,
) {
    let taken: std::collections::HashSet<&str> = picked
        .iter()
        .filter_map(|(seq, _)| keys.get(seq).map(String::as_str))
        .collect();
    if let Some(last) = scan_order.iter().rev().find(|k| taken.contains(k.as_str())) {
        KEY_CURSOR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pipeline.to_string(), last.clone());
    }
}

/// Whether a scan that has read `keys` keys, `contributing` of which had room, stops:
/// every key with room gives at least its head, so `room` of them fill the claim (the
/// keys after wait for the next claims, which start after the last key taken).
pub fn scan_done(keys: usize, contributing: usize, room: usize) -> bool {
    contributing >= room || keys >= KEY_SCAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_scan_starts_after_the_cursor_and_wraps_round_once() {
        let keys = ["a", "b", "c", "d"];
        let first_after = |after: Option<&str>| {
            keys.iter()
                .find(|k| after.is_none_or(|a| **k > a))
                .map(|k| k.to_string())
        };
        let walk = |pipeline: &str| {
            let mut scan = KeyScan::new(pipeline);
            let mut seen = Vec::new();
            loop {
                match scan.next(first_after(scan.after())) {
                    ScanStep::Key(k) => seen.push(k),
                    ScanStep::Again => continue,
                    ScanStep::Done => break seen,
                }
            }
        };
        assert_eq!(walk("scan-test-fresh"), ["a", "b", "c", "d"]);
        KEY_CURSOR
            .lock()
            .unwrap()
            .insert("scan-test-b".into(), "b".into());
        assert_eq!(walk("scan-test-b"), ["c", "d", "a", "b"]);
    }
}
