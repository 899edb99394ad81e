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
    fn missing_processes_are_dead() {
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        assert!(!pid_alive(0x3fff_ffff));
        assert_eq!(start_time(0x3fff_ffff), None);
    }
}
