//! What `/proc` says about a process and the machine: memory, CPU time, process groups,
//! children. CPU times are in seconds (`/proc` counts them in USER_HZ ticks, 100 a
//! second on Linux whatever the kernel's own tick).

/// Ticks per second of `/proc`'s CPU times.
const USER_HZ: f64 = 100.0;

/// A `kB` field of `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`, …); `None` once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory of `pid` now, KiB (panics when the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// The most resident memory `pid` has had, KiB (panics when the process is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:").unwrap_or_else(|| panic!("no VmHWM for pid {pid}"))
}

/// The fields of `/proc/{pid}/stat` after the command name (which is in parentheses and
/// may hold spaces): `[0]` is the state, `[2]` the process group, `[11]`/`[12]` utime/stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    Some(
        stat[close + 1..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// CPU seconds (user + system) `pid` has used, not counting its children; `None` once it
/// is gone.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / USER_HZ)
}

/// Busy CPU seconds of the whole machine, every core (`/proc/stat`: user, nice, system,
/// irq, softirq, steal; idle and iowait left out).
pub fn machine_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / USER_HZ
}

/// CPU seconds (user + system) used by every live process named `comm` (PostgreSQL's
/// backends are all `postgres`); a process that exits between two readings takes its
/// time with it, so compare readings taken while the same processes live.
pub fn comm_cpu_secs(comm: &str) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == comm);
        if named {
            total += cpu_secs(pid).unwrap_or(0.0);
        }
    }
    total
}

/// Pids of live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        if fields.first().map(String::as_str) != Some("Z")
            && fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}

/// Children of `pid` (of every thread of it), in the order `/proc` lists them.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let kids = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok()),
        );
    }
    out
}
