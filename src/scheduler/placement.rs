//! When and in which order a new run's shards may start: a trigger's `delay` / `runAt`
//! (a not-before time) and `priority`, checked before anything is written.
//!
//! Invariants: a not-before time lies within `retention` of now (a delayed run is
//! unfinished, so it is never pruned; an unbounded delay would keep rows forever) and no
//! more than [`PAST_TOLERANCE_MS`] in the past (an older one is a mistake, not "now");
//! a priority lies in [`PRIORITY_RANGE`]. Tests: the unit tests below, and
//! `scheduling::delayed_runs_wait_for_their_time_and_bad_delays_are_400`.

use crate::clock::rfc3339;
use crate::config::parse_duration;
use crate::store::claim_plan::PRIORITY_RANGE;

/// How far in the past a `runAt` may lie and still mean "now" (clock skew, slow clients).
pub const PAST_TOLERANCE_MS: i64 = 60_000;

/// The not-before time of a trigger with `delay` or `runAt` (at most one), or `None` when
/// it has neither. `now` and the result are epoch ms.
pub fn not_before(
    delay: Option<&str>,
    run_at: Option<&str>,
    now: i64,
    retention_ms: i64,
) -> Result<Option<i64>, String> {
    let at = match (delay, run_at) {
        (Some(_), Some(_)) => return Err("give delay or runAt, not both".into()),
        (None, None) => return Ok(None),
        (Some(d), None) => {
            let d = parse_duration(d).map_err(|e| format!("delay: {e}"))?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms > retention_ms {
                return Err(format!(
                    "delay must be at most the server's retention ({} ms): a delayed run is kept until it ends",
                    retention_ms
                ));
            }
            now + ms
        }
        (None, Some(t)) => {
            let ts: jiff::Timestamp = t.parse().map_err(|e| {
                format!(
                    "runAt must be an RFC 3339 time with an offset (e.g. 2030-01-02T03:04:05Z): {e}"
                )
            })?;
            let at = ts.as_millisecond();
            if at < now - PAST_TOLERANCE_MS {
                return Err(format!(
                    "runAt {t} is in the past (now is {})",
                    rfc3339(now)
                ));
            }
            if at > now + retention_ms {
                return Err(format!(
                    "runAt must be within the server's retention of now (until {})",
                    rfc3339(now + retention_ms)
                ));
            }
            at
        }
    };
    Ok((at > now).then_some(at))
}

/// A trigger's priority, or the pipeline's when it gives none.
pub fn priority(given: Option<i64>, pipeline_default: i32) -> Result<i32, String> {
    match given {
        None => Ok(pipeline_default),
        Some(p) => i32::try_from(p)
            .ok()
            .filter(|p| PRIORITY_RANGE.contains(p))
            .ok_or_else(|| {
                format!(
                    "priority must be an integer from {} to {}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn delays_and_times_become_a_bounded_not_before() {
        let now = 1_800_000_000_000;
        assert_eq!(not_before(None, None, now, DAY), Ok(None));
        assert_eq!(
            not_before(Some("10m"), None, now, DAY),
            Ok(Some(now + 600_000))
        );
        assert_eq!(not_before(Some("0s"), None, now, DAY), Ok(None));
        assert!(
            not_before(Some("2d"), None, now, DAY)
                .unwrap_err()
                .contains("retention")
        );
        assert!(
            not_before(Some("soon"), None, now, DAY)
                .unwrap_err()
                .starts_with("delay")
        );
        let at = rfc3339(now + 5_000);
        assert_eq!(not_before(None, Some(&at), now, DAY), Ok(Some(now + 5_000)));
        // An offset is honoured: 08:00+01:00 is 07:00Z.
        let year = 365 * DAY;
        assert_eq!(
            not_before(None, Some("2027-06-15T08:00:00+01:00"), now, year),
            not_before(None, Some("2027-06-15T07:00:00Z"), now, year)
        );
        assert!(
            not_before(None, Some("2027-06-15T07:00:00Z"), now, year)
                .unwrap()
                .is_some()
        );
        assert!(
            not_before(None, Some(&rfc3339(now - 120_000)), now, DAY)
                .unwrap_err()
                .contains("past")
        );
        assert_eq!(
            not_before(None, Some(&rfc3339(now - 1_000)), now, DAY),
            Ok(None)
        );
        assert!(
            not_before(None, Some(&rfc3339(now + 2 * DAY)), now, DAY)
                .unwrap_err()
                .contains("retention")
        );
        assert!(
            not_before(None, Some("tomorrow"), now, DAY)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(
            not_before(Some("1m"), Some(&at), now, DAY)
                .unwrap_err()
                .contains("not both")
        );
    }

    #[test]
    fn priorities_are_bounded_and_default_to_the_pipelines() {
        assert_eq!(priority(None, 5), Ok(5));
        assert_eq!(priority(Some(-100), 0), Ok(-100));
        assert_eq!(priority(Some(100), 0), Ok(100));
        assert!(priority(Some(101), 0).is_err());
        assert!(priority(Some(i64::MAX), 0).is_err());
    }
}
