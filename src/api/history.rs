//! A job's attempt history, derived from the run's stored events (no table of its own).
//!
//! Each execution of a job is one `job:started` followed by its end: `job:completed`,
//! `job:aborted`, or `job:failed` — with `status: "queued"` when the job goes back to
//! the queue (a retry spends an attempt, a requeue after an orphaning, shutdown or
//! failed setup does not). An end without a start before it (a queued job aborted,
//! a setup that failed before the spawn, a node that died before recording the start)
//! is an entry of its own without `startedAt`. Events carry `claimSeq` (the execution's
//! fence) since schema v3; where both sides have it, an end closes only its own start.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::StoredEvent;

/// One execution (or a queued job's end) of a job, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttemptView {
    /// The attempt number it ran as (a requeue keeps the number, a retry adds one).
    pub attempt: u32,
    /// The execution's fence (`claim_seq`); lines of its log carry the same `claimSeq`.
    /// Absent for events stored before schema v3.
    pub claim_seq: Option<i64>,
    /// `running`, `completed`, `failed` (for good), `aborted`, `retried` (failed; the job
    /// was queued for its next attempt) or `requeued` (back in the queue without spending an
    /// attempt: orphaned, shutdown or setup_failed).
    #[schema(pattern = "^(running|completed|failed|aborted|retried|requeued)$")]
    pub outcome: &'static str,
    /// Why it ended (`exit_code`, `timeout`, `orphaned`, `shutdown`, `setup_failed`, `aborted`).
    #[schema(value_type = Option<crate::model::Reason>)]
    pub reason: Option<String>,
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Error detail (spawn error, signal, setup output).
    pub error: Option<String>,
    /// Leader pid.
    pub pid: Option<u32>,
    /// RFC 3339, when its process started.
    pub started_at: Option<String>,
    /// RFC 3339, when it ended.
    pub finished_at: Option<String>,
    /// Started → ended, in milliseconds.
    pub duration_ms: Option<i64>,
    /// RFC 3339: when the retry is due (`retried` only).
    pub retry_at: Option<String>,
}

/// Every job's attempts (job id → oldest first) from a run's events in id order.
pub(super) fn attempts(events: &[StoredEvent]) -> BTreeMap<String, Vec<AttemptView>> {
    let mut out: BTreeMap<String, Vec<AttemptView>> = BTreeMap::new();
    for ev in events {
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        let Some(job) = data["jobId"].as_str() else {
            continue;
        };
        let list = out.entry(job.to_string()).or_default();
        let attempt = data["attempt"].as_u64().unwrap_or(1) as u32;
        let claim_seq = data["claimSeq"].as_i64();
        let at = data["timestamp"].as_str().map(str::to_string);
        let text = |k: &str| data[k].as_str().map(str::to_string);
        let outcome = match (ev.name.as_str(), data["status"].as_str()) {
            ("job:started", _) => {
                list.push(AttemptView {
                    attempt,
                    claim_seq,
                    outcome: "running",
                    reason: None,
                    exit_code: None,
                    error: None,
                    pid: data["pid"].as_u64().map(|p| p as u32),
                    started_at: at,
                    finished_at: None,
                    duration_ms: None,
                    retry_at: None,
                });
                continue;
            }
            ("job:completed", _) => "completed",
            ("job:aborted", _) => "aborted",
            // Every `queued` end carries `nextAttempt`; only a retry raises it.
            ("job:failed", Some("queued"))
                if data["nextAttempt"]
                    .as_u64()
                    .is_some_and(|n| n > u64::from(attempt)) =>
            {
                "retried"
            }
            ("job:failed", Some("queued")) => "requeued",
            ("job:failed", _) => "failed",
            _ => continue, // job:created, job:progress, run:completed
        };
        // The open execution this end closes: the last one, unless fences say otherwise.
        let open = list.last_mut().filter(|a| {
            a.outcome == "running"
                && a.attempt == attempt
                && match (a.claim_seq, claim_seq) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        });
        let entry = match open {
            Some(a) => a,
            None => {
                list.push(AttemptView {
                    attempt,
                    claim_seq,
                    outcome,
                    reason: None,
                    exit_code: None,
                    error: None,
                    pid: None,
                    started_at: None,
                    finished_at: None,
                    duration_ms: None,
                    retry_at: None,
                });
                list.last_mut().expect("just pushed")
            }
        };
        entry.outcome = outcome;
        entry.reason = text("reason");
        entry.exit_code = data["exitCode"].as_i64().map(|c| c as i32);
        entry.error = text("error");
        entry.retry_at = if outcome == "retried" {
            text("retryAt")
        } else {
            None
        };
        entry.duration_ms = match (&entry.started_at, &at) {
            (Some(s), Some(f)) => millis(f).zip(millis(s)).map(|(f, s)| (f - s).max(0)),
            _ => None,
        };
        entry.finished_at = at;
    }
    out
}

/// Epoch ms of an RFC 3339 stamp as `clock::rfc3339` writes it (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn millis(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 24 || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from civil (Howard Hinnant's algorithm), the inverse of `clock::rfc3339`.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;
    use serde_json::json;

    fn ev(id: i64, name: &str, data: Value) -> StoredEvent {
        StoredEvent {
            id,
            name: name.into(),
            data: data.to_string(),
        }
    }

    #[test]
    fn timestamps_round_trip() {
        for ms in [0, 951_782_400_000, 1_795_398_853_123, 1_733_043_000_999] {
            assert_eq!(millis(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(millis("yesterday"), None);
    }

    #[test]
    fn retries_requeues_and_ends_become_one_entry_per_execution() {
        let t = |ms: i64| rfc3339(1_733_000_000_000 + ms);
        let events = [
            ev(
                1,
                "job:created",
                json!({"jobId": "r:s0", "status": "queued"}),
            ),
            ev(
                2,
                "job:created",
                json!({"jobId": "r:s1", "status": "queued"}),
            ),
            // s0: fails, is retried, is orphaned (requeued), then completes.
            ev(
                3,
                "job:started",
                json!({"jobId": "r:s0", "attempt": 1, "pid": 10, "claimSeq": 1, "timestamp": t(0)}),
            ),
            ev(
                4,
                "job:failed",
                json!({"jobId": "r:s0", "status": "queued", "attempt": 1, "exitCode": 3,
                "reason": "exit_code", "nextAttempt": 2, "retryAt": t(2000), "claimSeq": 1, "timestamp": t(1500)}),
            ),
            ev(
                5,
                "job:started",
                json!({"jobId": "r:s0", "attempt": 2, "pid": 11, "claimSeq": 2, "timestamp": t(2100)}),
            ),
            ev(
                6,
                "job:failed",
                json!({"jobId": "r:s0", "status": "queued", "attempt": 2, "exitCode": null,
                "reason": "orphaned", "nextAttempt": 2, "retryAt": t(9000), "claimSeq": 2, "timestamp": t(9000)}),
            ),
            ev(7, "job:progress", json!({"jobId": "r:s0", "progress": 50})),
            ev(
                8,
                "job:started",
                json!({"jobId": "r:s0", "attempt": 2, "pid": 12, "claimSeq": 3, "timestamp": t(9100)}),
            ),
            ev(
                9,
                "job:completed",
                json!({"jobId": "r:s0", "status": "completed", "attempt": 2, "exitCode": 0,
                "reason": "exit_code", "claimSeq": 3, "timestamp": t(9600)}),
            ),
            // s1: setup failed before any spawn (released), then aborted while queued.
            ev(
                10,
                "job:failed",
                json!({"jobId": "r:s1", "status": "queued", "attempt": 1, "reason": "setup_failed",
                "nextAttempt": 1, "error": "setup exited 1", "claimSeq": 1, "timestamp": t(100)}),
            ),
            ev(
                11,
                "job:aborted",
                json!({"jobId": "r:s1", "status": "aborted", "attempt": 1, "reason": "aborted",
                "claimSeq": 1, "timestamp": t(200)}),
            ),
            ev(12, "run:completed", json!({"status": "aborted"})),
        ];
        let all = attempts(&events);
        let s0 = &all["r:s0"];
        let got: Vec<_> = s0
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.claim_seq,
                    a.outcome,
                    a.reason.as_deref(),
                    a.exit_code,
                    a.pid,
                    a.duration_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    Some(1),
                    "retried",
                    Some("exit_code"),
                    Some(3),
                    Some(10),
                    Some(1500)
                ),
                (
                    2,
                    Some(2),
                    "requeued",
                    Some("orphaned"),
                    None,
                    Some(11),
                    Some(6900)
                ),
                (
                    2,
                    Some(3),
                    "completed",
                    Some("exit_code"),
                    Some(0),
                    Some(12),
                    Some(500)
                ),
            ]
        );
        assert_eq!(s0[0].retry_at.as_deref(), Some(t(2000).as_str()));
        assert_eq!(s0[1].retry_at, None, "a requeue is due at once");
        let s1 = &all["r:s1"];
        assert_eq!(s1.len(), 2, "{s1:?}");
        assert_eq!(
            (s1[0].outcome, s1[0].reason.as_deref()),
            ("requeued", Some("setup_failed"))
        );
        assert_eq!(s1[0].error.as_deref(), Some("setup exited 1"));
        assert_eq!(s1[0].started_at, None);
        assert_eq!(s1[1].outcome, "aborted");
    }

    #[test]
    fn a_running_execution_stays_open_and_old_events_without_fences_still_pair() {
        let events = [
            ev(
                1,
                "job:started",
                json!({"jobId": "r", "attempt": 1, "pid": 5, "timestamp": rfc3339(0)}),
            ),
            ev(
                2,
                "job:failed",
                json!({"jobId": "r", "status": "failed", "attempt": 1, "exitCode": 1,
                "reason": "exit_code", "timestamp": rfc3339(40)}),
            ),
            ev(
                3,
                "job:started",
                json!({"jobId": "r:finalize", "attempt": 1, "claimSeq": 1, "timestamp": rfc3339(50)}),
            ),
        ];
        let all = attempts(&events);
        assert_eq!(all["r"].len(), 1);
        assert_eq!(
            (all["r"][0].outcome, all["r"][0].duration_ms),
            ("failed", Some(40))
        );
        assert_eq!(all["r:finalize"][0].outcome, "running");
        assert_eq!(all["r:finalize"][0].finished_at, None);
    }
}
