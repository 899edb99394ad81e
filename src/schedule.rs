//! Pipeline schedules: a cron expression (5 fields, or 6 with a leading seconds field)
//! evaluated in an IANA time zone, and the rule for which tick fires when.
//!
//! The rule (decided here, recorded by the store): a pipeline's durable next-fire time
//! (`pipeline_state.next_fire_at`) is advanced by one conditional write that also queues
//! the run, so of the nodes racing for a tick exactly one fires it ([`plan`] says what to
//! write; `Store::schedule_fire` writes it only if the row still holds the tick it read).
//! Ticks missed while no node ran fire **once**: the run is for the latest missed tick
//! (`scheduledFor`), and the next fire time is the first tick after now — never a flood.
//!
//! Tests: the unit tests below (5 and 6 fields, time zones with DST, missed ticks),
//! `store_contract::*::a_schedule_tick_fires_once_however_many_nodes_race_for_it`,
//! `scheduling::two_nodes_fire_each_tick_of_a_schedule_exactly_once`.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The cron expression as written.
    pub expr: String,
    /// The IANA zone name as written (`UTC` by default).
    pub tz_name: String,
    cron: Cron,
    tz: TimeZone,
}

/// Why a schedule was refused (the config names the key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "invalid cron expression {expr:?}: {message} (5 fields, or 6 with leading seconds, e.g. \"0 2 * * *\")"
    )]
    Cron {
        /// As written.
        expr: String,
        /// The parser's reason.
        message: String,
    },
    /// No such IANA time zone.
    #[error("unknown time zone {0:?} (an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    Zone(String),
}

/// What firing a due schedule writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The tick the run is for (`scheduledFor`): the latest tick at or before now.
    pub scheduled_for: i64,
    /// The next fire time to store: the first tick after now.
    pub next: i64,
}

impl Schedule {
    /// Parses `expr` in the zone `tz` (an IANA name).
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let fields = expr.split_whitespace().count();
        let cron_err = |message: String| ScheduleError::Cron {
            expr: expr.to_string(),
            message,
        };
        if !(5..=6).contains(&fields) {
            return Err(cron_err(format!("{fields} fields")));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| cron_err(e.to_string()))?;
        let zone = TimeZone::get(tz).map_err(|_| ScheduleError::Zone(tz.to_string()))?;
        // A pattern that never matches (e.g. 30 February) is refused too.
        let probe = Schedule {
            expr: expr.to_string(),
            tz_name: tz.to_string(),
            cron,
            tz: zone,
        };
        if probe.next_after(crate::clock::now_ms()).is_none() {
            return Err(cron_err("it never fires".into()));
        }
        Ok(probe)
    }

    /// What the stored next-fire row is computed for: a changed expression or zone
    /// recomputes it instead of firing a tick of the old schedule.
    pub fn key(&self) -> String {
        format!("{} @ {}", self.expr, self.tz_name)
    }

    /// The first tick strictly after `ms` (epoch ms), if any.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let at = Timestamp::from_millisecond(ms)
            .ok()?
            .to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .map(|z| z.timestamp().as_millisecond())
    }

    /// The latest tick at or before `ms`, if any.
    pub fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        // Ticks fall on whole seconds: look back from the end of `ms`'s second.
        let at = Timestamp::from_millisecond(ms)
            .ok()?
            .to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&at, true)
            .ok()
            .map(|z| z.timestamp().as_millisecond())
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    /// A schedule in UTC.
    fn from_str(expr: &str) -> Result<Schedule, ScheduleError> {
        Schedule::parse(expr, "UTC")
    }
}

/// What to write when the stored next fire time is `due` and the clock says `now`: `None`
/// while it is not due; else one fire for the latest tick at or before now (however many
/// were missed) and the first tick after now as the next.
pub fn plan(schedule: &Schedule, due: i64, now: i64) -> Option<Fire> {
    if due > now {
        return None;
    }
    let scheduled_for = schedule
        .latest_at_or_before(now)
        .filter(|t| *t >= due)
        .unwrap_or(due);
    let next = schedule.next_after(now)?;
    Some(Fire {
        scheduled_for,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn five_and_six_fields_in_a_zone() {
        let nightly = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC, in summer 00:00 UTC.
        assert_eq!(
            nightly.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T01:00:00Z"))
        );
        assert_eq!(
            nightly.next_after(ms("2026-07-10T12:00:00Z")),
            Some(ms("2026-07-11T00:00:00Z"))
        );
        let every_5s = Schedule::parse("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(
            every_5s.next_after(ms("2026-01-10T12:00:03Z")),
            Some(ms("2026-01-10T12:00:05Z"))
        );
        assert_eq!(
            every_5s.next_after(ms("2026-01-10T12:00:05Z")),
            Some(ms("2026-01-10T12:00:10Z")),
            "strictly after"
        );
        assert_eq!(nightly.key(), "0 2 * * * @ Europe/Berlin");
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        for expr in [
            "",
            "* * * *",
            "0 0 0 * * * *",
            "61 * * * *",
            "nonsense here x y z",
            "0 0 30 2 *",
        ] {
            assert!(
                matches!(
                    Schedule::parse(expr, "UTC"),
                    Err(ScheduleError::Cron { .. })
                ),
                "{expr:?}"
            );
        }
        assert_eq!(
            Schedule::parse("0 2 * * *", "Mars/Olympus").unwrap_err(),
            ScheduleError::Zone("Mars/Olympus".into())
        );
    }

    #[test]
    fn missed_ticks_fire_once_for_the_latest_and_the_next_is_after_now() {
        let hourly = Schedule::parse("0 * * * *", "UTC").unwrap();
        let due = ms("2026-01-10T03:00:00Z");
        assert_eq!(plan(&hourly, due, due - 1), None, "not due yet");
        assert_eq!(
            plan(&hourly, due, due),
            Some(Fire {
                scheduled_for: due,
                next: ms("2026-01-10T04:00:00Z")
            })
        );
        // Down from 03:00 to 07:30: one fire, for 07:00; next at 08:00.
        assert_eq!(
            plan(&hourly, due, ms("2026-01-10T07:30:00Z")),
            Some(Fire {
                scheduled_for: ms("2026-01-10T07:00:00Z"),
                next: ms("2026-01-10T08:00:00Z")
            })
        );
    }
}
