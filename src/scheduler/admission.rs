//! Resource admission: a node with `admit_max_load` or `admit_min_free_memory`
//! set does not claim jobs while the machine is past either threshold. The
//! jobs wait in the queue (another node, or this one later, takes them); they
//! never fail for it. Checked before every claim; the latest verdict is kept
//! for `GET /api/workers`.
//!
//! The test that would catch a violation: `run_completion::admission_holds_jobs_queued_until_resources_allow`.

use std::sync::Mutex;

use crate::config::ServerSettings;

/// The latest admission verdict of this node (`None` = admitting).
#[derive(Default)]
pub(crate) struct Admission {
    /// The threshold that holds claims (`admit_max_load`, `admit_min_free_memory`) and why.
    held: Mutex<Option<(&'static str, String)>>,
}

impl Admission {
    /// Checks the thresholds now; returns whether jobs may start.
    pub(crate) fn check(&self, server: &ServerSettings) -> bool {
        let verdict = held_because(server);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        // Logged when the holding threshold changes, not when its reading does: the
        // free memory in the message moves on every check.
        let threshold = |v: &Option<(&'static str, String)>| v.as_ref().map(|(t, _)| *t);
        if threshold(&verdict) != threshold(&held) {
            match &verdict {
                Some((_, why)) => tracing::warn!("not starting jobs: {why}"),
                None => tracing::info!("resources back within limits: starting jobs again"),
            }
        }
        *held = verdict;
        held.is_none()
    }

    /// Why jobs are held, if they are.
    pub(crate) fn held(&self) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, why)| why.clone())
    }
}

fn held_because(server: &ServerSettings) -> Option<(&'static str, String)> {
    if let Some(max) = server.admit_max_load
        && let Some(load) = load_average()
        && load > max
    {
        return Some((
            "admit_max_load",
            format!("load average {load:.2} is above admit_max_load {max}"),
        ));
    }
    if let Some(min) = server.admit_min_free_memory
        && let Some(free) = available_memory()
        && free < min
    {
        return Some((
            "admit_min_free_memory",
            format!(
                "available memory {} MiB is below admit_min_free_memory {} MiB",
                free >> 20,
                min >> 20
            ),
        ));
    }
    None
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `MemAvailable` in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
