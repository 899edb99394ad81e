//! OS process facts and signals: liveness, start times, boot id, group kills.
//!
//! A pid alone does not identify a process: pids are reused. We identify a
//! process by `(pid, start time in clock ticks since boot)` within one boot
//! (`/proc/sys/kernel/random/boot_id`), and count `EPERM` from `kill(pid, 0)`
//! as alive (the process exists but is not ours to signal).

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

/// The signals we send to process groups.
#[derive(Debug, Clone, Copy)]
pub enum Sig {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

/// Sends `sig` to the process group `pgid`; a group that is gone is not an error.
pub fn signal_group(pgid: u32, sig: Sig) {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let signal = match sig {
        Sig::Term => Signal::TERM,
        Sig::Kill => Signal::KILL,
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(Errno::SRCH) => {}
        Err(e) => tracing::warn!(pgid, "cannot signal process group: {e}"),
    }
}

/// True when a process with this pid exists (EPERM counts as alive).
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(Errno::SRCH))
}

/// True when the process `pid` exists and started at `start` (not a reused pid). A pid
/// that exists but whose start time cannot be read (e.g. `/proc` mounted with `hidepid`)
/// counts as alive: it cannot be proven to be another process.
pub fn same_process_alive(pid: u32, start: u64) -> bool {
    pid_alive(pid) && start_time(pid).is_none_or(|s| s == start)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The span of time a spawn happened in, for its child's start time without reading
/// `/proc`.
///
/// The kernel stamps a new process with `CLOCK_BOOTTIME` inside the `clone` call, and
/// `/proc/<pid>/stat` shows that stamp in whole clock ticks (10 ms at the usual 100 Hz).
/// A reading taken before the spawn and one after bracket the stamp, so when both fall
/// in the same tick that tick *is* the child's start time. Only a spawn that straddles
/// a tick boundary (a few in a hundred) reads `/proc`, which costs more than the spawn's
/// own bookkeeping on short jobs.
pub struct StartWindow {
    before_ns: Option<u64>,
}

impl StartWindow {
    /// Opens the window: call just before spawning.
    pub fn open() -> StartWindow {
        StartWindow {
            before_ns: boottime_ns(),
        }
    }

    /// The start time of `pid`, spawned inside this window, in clock ticks since boot
    /// (as [`start_time`] reads it).
    pub fn start_of(&self, pid: u32) -> Option<u64> {
        let ns_per_tick = ns_per_clock_tick();
        if let (Some(before), Some(after), Some(per)) = (self.before_ns, boottime_ns(), ns_per_tick)
            && before / per == after / per
        {
            return Some(before / per);
        }
        start_time(pid)
    }
}

/// `CLOCK_BOOTTIME` now, in nanoseconds.
fn boottime_ns() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(t.tv_nsec).ok()?)
}

/// Nanoseconds per clock tick of `/proc/<pid>/stat`, when a tick is a whole number of
/// them (the kernel then divides, as this does; otherwise [`start_time`] reads it).
fn ns_per_clock_tick() -> Option<u64> {
    let hz = rustix::param::clock_ticks_per_second();
    (hz > 0 && 1_000_000_000 % hz == 0).then(|| 1_000_000_000 / hz)
}

/// This process's identity scope for pid checks: the kernel boot id plus the pid
/// namespace. Two nodes compare pids only when both match (containers on one host with
/// the same host name see different pid namespaces, and fall back to heartbeat age).
pub fn pid_scope() -> String {
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{}/{ns}", boot_id())
}

/// Process group ids of live processes whose environment holds every `KEY=VALUE` of
/// `env` (used to find a job's processes when its pid was never recorded). Processes
/// whose environment cannot be read are skipped.
pub fn groups_with_env(env: &[(&str, &str)]) -> Vec<u32> {
    let wanted: Vec<Vec<u8>> = env
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    let mut groups = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !wanted.iter().all(|w| vars.contains(&w.as_slice())) {
            continue;
        }
        if let Some(pgid) = process_group(pid)
            && !groups.contains(&pgid)
        {
            groups.push(pgid);
        }
    }
    groups
}

/// The process group of `pid` (field 5 of `/proc/<pid>/stat`).
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}

/// This kernel boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = std::process::id();
        let start = start_time(me).expect("start time");
        assert!(same_process_alive(me, start));
        assert!(!same_process_alive(me, start + 1));
        assert!(pid_alive(1), "pid 1 exists (EPERM or not)");
        assert!(!boot_id().is_empty());
    }

    #[test]
    fn processes_are_found_by_environment() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("RUNYARD_TEST_MARK", format!("{}", std::process::id()))
            .process_group(0)
            .spawn()
            .unwrap();
        let mark = std::process::id().to_string();
        // The new image's environment shows in /proc a moment after spawn returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut groups = groups_with_env(&[("RUNYARD_TEST_MARK", &mark)]);
        while groups.is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            groups = groups_with_env(&[("RUNYARD_TEST_MARK", &mark)]);
        }
        assert_eq!(groups, vec![child.id()]);
        assert_eq!(process_group(child.id()), Some(child.id()));
        signal_group(child.id(), Sig::Kill);
        child.wait().unwrap();
        assert!(groups_with_env(&[("RUNYARD_TEST_MARK", &mark)]).is_empty());
    }

    #[test]
    fn a_spawn_window_gives_the_start_time_proc_shows() {
        // The window's tick must be the one `/proc` shows, every time; and most spawns
        // must not need `/proc` at all (else the window saves nothing).
        let mut without_proc = 0;
        for _ in 0..200 {
            let window = StartWindow::open();
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let fast = ns_per_clock_tick().and_then(|per| {
                let (before, after) = (window.before_ns?, boottime_ns()?);
                (before / per == after / per).then_some(before / per)
            });
            let from_window = window.start_of(child.id());
            let from_proc = start_time(child.id());
            child.kill().unwrap();
            child.wait().unwrap();
            assert_eq!(from_window, from_proc);
            if let Some(fast) = fast {
                assert_eq!(Some(fast), from_proc);
                without_proc += 1;
            }
        }
        assert!(
            without_proc >= 100,
            "{without_proc} of 200 spawns fit in one tick"
        );
    }

    #[test]
    fn missing_processes_are_dead() {
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        assert!(!pid_alive(0x3fff_ffff));
        assert_eq!(start_time(0x3fff_ffff), None);
    }
}
