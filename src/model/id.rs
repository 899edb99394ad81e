//! Run and job identities.
//!
//! A run id is a UUIDv7 (sortable by creation time). A job id equals its run id
//! when the run has one shard, and is `{runId}:s{i}` otherwise.
//! The same job id names the queue entry, the abort-registry key and the log stream.

use std::fmt;

use thiserror::Error;
use uuid::Uuid;

/// A run's identity: a UUIDv7 in its hyphenated lowercase form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Uuid);

impl RunId {
    /// A fresh, time-ordered run id.
    pub fn new() -> Self {
        RunId(Uuid::now_v7())
    }

    /// Parses a run id, refusing anything that is not a UUID.
    pub fn parse(s: &str) -> Result<Self, JobIdError> {
        Uuid::try_parse(s)
            .map(RunId)
            .map_err(|_| JobIdError::Malformed(s.chars().take(80).collect()))
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Fewest characters of a short run id: what the dashboard and CLI show.
pub const MIN_SHORT_ID: usize = 8;

/// A short run id (at least [`MIN_SHORT_ID`] hex digits of a run id's start, with or
/// without its hyphens, any case) in the canonical lowercase hyphenated spelling, to be
/// matched as a prefix; `None` for anything else.
pub fn short_run_id(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() < MIN_SHORT_ID || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = String::with_capacity(36);
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    // Hyphens, where written, must sit where a run id has them.
    let written: String = s.to_ascii_lowercase();
    let canonical_prefix = out.get(..written.len().min(out.len()));
    if s.contains('-') && canonical_prefix.is_some_and(|p| !written.starts_with(p)) {
        return None;
    }
    Some(out)
}

/// Why a string is not a valid run or job id.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobIdError {
    /// Not `uuid`, `uuid:s<n>` or `uuid:finalize`.
    #[error("malformed id: {0}")]
    Malformed(String),
}

/// The job id of shard `shard_index` of a run with `shard_count` shards.
pub fn job_id_for(run: RunId, shard_index: u32, shard_count: u32) -> String {
    if shard_count == 1 {
        run.to_string()
    } else {
        format!("{run}:s{shard_index}")
    }
}

/// The job id of a run's finalizer.
pub fn finalize_job_id(run: &str) -> String {
    format!("{run}:finalize")
}

/// What a job id names within its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPart {
    /// The only shard of a single-shard run (the job id is the run id).
    Single,
    /// Shard `i` of a sharded run.
    Shard(u32),
    /// The run's finalizer.
    Finalize,
}

/// Splits a job id into its run id and what it names.
pub fn parse_job_id(s: &str) -> Result<(RunId, JobPart), JobIdError> {
    match s.split_once(':') {
        None => Ok((RunId::parse(s)?, JobPart::Single)),
        Some((run, "finalize")) => Ok((RunId::parse(run)?, JobPart::Finalize)),
        Some((run, shard)) => {
            let run = RunId::parse(run)?;
            let index = shard
                .strip_prefix('s')
                .filter(|d| !d.is_empty() && d.len() <= 6 && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u32>().ok())
                .ok_or_else(|| JobIdError::Malformed(s.chars().take(80).collect()))?;
            Ok((run, JobPart::Shard(index)))
        }
    }
}

/// The canonical spelling of a job id (lowercase UUID, no leading zeros in the shard).
pub fn canonical_job_id(run: RunId, part: JobPart) -> String {
    match part {
        JobPart::Single => run.to_string(),
        JobPart::Shard(i) => format!("{run}:s{i}"),
        JobPart::Finalize => finalize_job_id(&run.to_string()),
    }
}

/// The two kinds of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobKind {
    /// One shard of the pipeline's command.
    #[default]
    Shard,
    /// The run's finalizer.
    Finalize,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Shard => "shard",
            JobKind::Finalize => "finalize",
        }
    }

    /// From the stored name (anything unknown is a shard).
    pub fn from_name(s: &str) -> JobKind {
        if s == "finalize" {
            JobKind::Finalize
        } else {
            JobKind::Shard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_shard_job_id_is_the_run_id() {
        let run = RunId::new();
        assert_eq!(job_id_for(run, 0, 1), run.to_string());
        assert_eq!(
            parse_job_id(&run.to_string()).unwrap(),
            (run, JobPart::Single)
        );
    }

    #[test]
    fn sharded_job_ids_round_trip() {
        let run = RunId::new();
        let id = job_id_for(run, 3, 4);
        assert_eq!(id, format!("{run}:s3"));
        assert_eq!(parse_job_id(&id).unwrap(), (run, JobPart::Shard(3)));
        let fin = finalize_job_id(&run.to_string());
        assert_eq!(parse_job_id(&fin).unwrap(), (run, JobPart::Finalize));
        assert_eq!(canonical_job_id(run, JobPart::Finalize), fin);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "../etc/passwd",
            "abc",
            "0190c0de-0000-7000-8000-000000000000:x1",
            "0190c0de-0000-7000-8000-000000000000:s",
        ] {
            assert!(parse_job_id(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn short_run_ids_are_canonical_prefixes() {
        let run = RunId::new().to_string();
        assert_eq!(short_run_id(&run[..8]).as_deref(), Some(&run[..8]));
        assert_eq!(short_run_id(&run[..13]).as_deref(), Some(&run[..13]));
        assert_eq!(
            short_run_id(&run.to_uppercase()[..13]).as_deref(),
            Some(&run[..13])
        );
        let bare: String = run.chars().filter(|c| *c != '-').collect();
        assert_eq!(short_run_id(&bare[..12]).as_deref(), Some(&run[..13]));
        for bad in [
            "",
            "0190abc",
            "0190abcz",
            "0190-abcd",
            "../../etc",
            "0190abcd:",
        ] {
            assert_eq!(short_run_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn run_ids_sort_by_creation() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(a.to_string() < b.to_string());
    }
}
